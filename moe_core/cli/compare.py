"""`python -m moe_core compare [A [B]]`: two traces of the same tokens, layer by layer (moe_core.analyses.compare).

    compare a.json b.parquet                          # two saved traces or engine dumps (anything show reads)
    compare vllm_response.json --model org/model      # an engine's routing against a transformers re-run
    compare --text "..." --model M --dtype bfloat16   # M in its default dtype against M in bf16
    compare --text "..." --model base --model-b tuned # a base model against its fine-tune, same tokens
    compare --text "..." --model org/olmoe --revision step5000-tokens20B

Side B is the second file, or A's very token ids re-run on `--model-b` (default `--model`) at `--revision` and
`--dtype`. Comparing saved files imports neither torch nor transformers.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from moe_core.analyses.compare import comparison_json
from moe_core.defaults import DEVICE_CHOICES
from moe_core.engines import AUTO, FORMATS
from moe_core.traces.types import RoutingTrace

DTYPE_CHOICES = ("float32", "bfloat16", "float16")  # moe_core.models.DTYPES, named here without importing torch
POSITION_ONLY = re.compile(r"\?\d+")  # an engine dump's token without an id (Megatron-Core's)


def compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", type=Path, metavar="FILE", help="A, then B (omit B to re-run A)")
    parser.add_argument("--from", dest="source", choices=(AUTO, *FORMATS), default=AUTO, help="the files' format")
    parser.add_argument("--text", action="append", help="make A on the spot: --model's routing of this text")
    parser.add_argument("--model", help="A's model (its config also reads A's dump), and B's unless --model-b")
    parser.add_argument("--model-b", help="B's model: A's token ids re-run on it")
    parser.add_argument("--revision", help="B's hub revision (a branch, tag or commit: a training checkpoint)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, help="B's weights in this dtype")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model repo's own code (off)")
    parser.add_argument("--format", choices=("json",), default="json")


def _read(path: Path, source: str, model: str | None, trust: bool) -> RoutingTrace:
    from moe_core.engines import model_hints, read_files

    return read_files([path], source, model_hints(model, None, trust) if model else None)


def _load(args: argparse.Namespace, model: str, side_b: bool) -> Any:
    from moe_core.cli.main import load_for_command

    extra = {"revision": args.revision, "dtype": args.dtype} if side_b else {}
    return load_for_command(model, args.device, args.trust_remote_code, **extra)


def _check(args: argparse.Namespace) -> None:
    """Every refusal that needs no file and no model, before anything is loaded."""
    if len(args.files) > 2:
        raise ValueError(f"compare takes two sides, got {len(args.files)} files")
    if not args.files and not args.text:
        raise ValueError("nothing to compare: give A (a trace or dump), or --text and --model to make it")
    if args.text and args.files:
        raise ValueError("A is either a file or --text, not both")
    if args.text and not args.model:
        raise ValueError("--text needs --model: the model whose routing of the text is side A")
    if len(args.files) == 2 and (args.model_b or args.revision or args.dtype):
        raise ValueError("B is a file: --model-b, --revision and --dtype make B on the spot instead")
    if len(args.files) < 2 and not (args.model_b or args.model):
        raise ValueError("give B (a second file), or --model / --model-b to re-run A's tokens")
    if args.text and not (args.model_b or args.revision or args.dtype):
        raise ValueError("B would be A again: change --model-b, --revision or --dtype")


def _side_a(args: argparse.Namespace) -> RoutingTrace:
    if args.files:
        return _read(args.files[0], args.source, args.model, args.trust_remote_code)
    from moe_core.capture.record import trace

    loaded = _load(args, args.model, side_b=False)
    return trace(loaded.model, loaded.tokenizer, args.text, name=args.model)


def _side_b(args: argparse.Namespace, a: RoutingTrace) -> RoutingTrace:
    if len(args.files) == 2:
        return _read(args.files[1], args.source, args.model, args.trust_remote_code)
    model = args.model_b or args.model
    if all(POSITION_ONLY.fullmatch(text) for text in a.tokens.text):
        raise ValueError("A has no token ids (a Megatron-Core trace has none), so its tokens cannot be re-run: "
                         "give B as a file")  # fmt: skip
    from moe_core.capture.record import retrace

    loaded = _load(args, model, side_b=True)
    label = model + (f"@{args.revision}" if args.revision else "") + (f" ({args.dtype})" if args.dtype else "")
    return retrace(loaded.model, loaded.tokenizer, a, name=label)


def run_compare(args: argparse.Namespace) -> None:
    """Bad input raises ValueError (NotComparable, TraceFormatError, ModelLoadError): one line, exit 2."""
    from moe_core.analyses.compare import compare
    from moe_core.cli.main import print_json

    _check(args)
    a = _side_a(args)
    print_json(comparison_json(compare(a, _side_b(args, a))))
