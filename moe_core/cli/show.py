"""`python -m moe_core show FILE…`: print or convert a saved trace or an engine's routing dump.

Prints the same JSON as `trace` (trace_io.to_json_dict; absent scores are null) or writes it with save_trace.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from moe_core.cli.arguments import positive_int
from moe_core.engines import AUTO, FORMATS, model_hints, read_files
from moe_core.traces.io import save_trace, to_json_dict


def show_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="a trace or dump (several: ranks)")
    parser.add_argument("--from", dest="source", choices=(AUTO, *FORMATS), default=AUTO, help="the file's format")
    names = parser.add_mutually_exclusive_group()
    names.add_argument("--model", help="its config gives E, k and the MoE layers, its tokenizer the token text")
    names.add_argument("--tokenizer", help="only the token text (bundled name, folder or hub id)")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model repo's own code (off)")
    parser.add_argument("--pipeline-stages", type=positive_int, default=1, metavar="P",
                        help="Megatron-Core: the run's pipeline stages (each numbers its layers from 0)")  # fmt: skip
    parser.add_argument("--format", choices=("json",), default="json")
    parser.add_argument("--out", type=Path, help="write the trace to FILE.json or FILE.parquet instead")


def run_show(args: argparse.Namespace) -> None:
    """Bad files raise TraceFormatError (a ValueError): cli.main prints it in one line and exits with 2."""
    if args.out is not None and args.out.suffix not in {".json", ".parquet"}:
        raise ValueError(f"cannot save a trace as {args.out.suffix!r}: use .json or .parquet")
    hints = model_hints(args.model, args.tokenizer, args.trust_remote_code)
    hints = replace(hints, pipeline_stages=args.pipeline_stages)
    routing = read_files(args.files, args.source, hints)
    if args.out is None:
        json.dump(to_json_dict(routing), sys.stdout)
        print()
        return
    save_trace(routing, args.out)
    print(f"wrote {args.out}", file=sys.stderr)
