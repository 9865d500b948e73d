"""`python -m moe_core`: trace routing, simulate capacity, check architecture support, from the shell.

The JSON printed here is a stable contract for scripts. Bad input ends with one line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moe_core.capacity.simulate import (
    EXPERT_CHOICE,
    FORWARD_GROUPS,
    FORWARD_POLICIES,
    GROUPS,
    POLICIES,
    policy_help,
    simulate_capacity,
)
from moe_core.cli import corpus as corpus_cli
from moe_core.cli import series as series_cli
from moe_core.cli import verify as verify_command
from moe_core.cli.arguments import capacity_factor, positive_int
from moe_core.cli.compare import compare_arguments, run_compare
from moe_core.cli.show import run_show, show_arguments
from moe_core.defaults import DEMO_MODEL, DEVICE_CHOICES
from moe_core.traces.io import model_json, save_trace, to_json_dict
from moe_core.traces.types import DROPPED, RoutingTrace, Tokens

if TYPE_CHECKING:  # torch and transformers load only for the commands that run a model
    from moe_core.capacity.forward import Counterfactual

EXIT_BAD_INPUT = 2


class CliError(Exception):
    """A problem with what the user asked for; printed as one line."""


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEMO_MODEL, help=f"bundled name, local folder or hub id ({DEMO_MODEL})")
    parser.add_argument("--text", action="append", required=True, help="a text to trace; repeat for a batch")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model repo's own code (off)")
    parser.add_argument("--refuse-long", action="store_true", help="fail on text longer than the context")
    parser.add_argument("--format", choices=("json",), default="json")


class _OneLineParser(argparse.ArgumentParser):
    """Usage mistakes end in one line too (argparse's default prints the whole usage first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see --help)\n")


@dataclass(frozen=True)
class Command:
    """One subcommand: its arguments and what it prints. New commands are one entry in COMMANDS."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m moe_core", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    for name, command in COMMANDS.items():
        command.arguments(commands.add_parser(name, help=command.help))
    return parser


SCORES = {"float32": np.float32, "float16": np.float16, "none": None}  # --scores: how a saved trace keeps them


def _trace_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    parser.add_argument("--out", type=Path, help="write the trace to FILE.json or FILE.parquet instead")
    parser.add_argument(
        "--scores",
        choices=tuple(SCORES),
        default="float32",
        help="router scores kept: float32, float16 (Parquet) or none (a compact trace: experts and weights only)",
    )


def _capacity_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    parser.add_argument("--capacity-factor", type=capacity_factor, default=1.0)
    parser.add_argument("--policy", choices=POLICIES, default="position", help=policy_help(POLICIES))
    parser.add_argument("--group", choices=GROUPS, default="sequence")


def _counterfactual_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    parser.add_argument("--capacity-factor", type=capacity_factor, default=1.0)
    parser.add_argument("--policy", choices=FORWARD_POLICIES, default="position", help=policy_help(FORWARD_POLICIES))
    parser.add_argument("--group", choices=FORWARD_GROUPS, default="sequence")
    parser.add_argument("--top-k", type=positive_int, default=None, help="what-if: k experts per token")


def _texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.text)
    if any(not text.strip() for text in texts):
        raise CliError("empty text: every --text needs some non-blank text")
    for number, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # the shell passed bytes that are not UTF-8 (surrogate-escaped by Python)
            raise CliError(f"text {number + 1} is not valid UTF-8") from None
    return texts


def load_for_command(model: str, device: str, trust_remote_code: bool, **options: Any) -> Any:
    """load_model as every command loads: transformers' weight-loading bar only on a terminal (piped or
    captured, it wrote carriage-return lines into the log), our own stages on a terminal too."""
    from moe_core.models import load_model, weight_bars_on_a_terminal_only

    weight_bars_on_a_terminal_only()
    return load_model(model, device=device, trust_remote_code=trust_remote_code, progress=_progress, **options)


def _load(args: argparse.Namespace) -> Any:
    return load_for_command(args.model, args.device, args.trust_remote_code)


def _trace(args: argparse.Namespace) -> RoutingTrace:
    from moe_core.capture.record import trace

    texts = _texts(args)
    loaded = _load(args)
    routing = trace(loaded.model, loaded.tokenizer, texts, name=args.model)
    _warn_truncated(routing, args)
    return routing


def _warn_truncated(routing: RoutingTrace, args: argparse.Namespace) -> None:
    for number, cut in enumerate(routing.truncated):
        if cut and args.refuse_long:
            raise CliError(f"text {number + 1} is longer than the model's context ({routing.model.context_length})")
        if cut:
            print(f"warning: text {number + 1} truncated to {routing.model.context_length} tokens", file=sys.stderr)


def _progress(stage: str, fraction: float) -> None:
    if sys.stderr.isatty():
        print(f"[{fraction:4.0%}] {stage}", file=sys.stderr)


def _rates(values: Any) -> list[float | None]:
    """Numbers for JSON: rounded, and null where undefined (a position with no slots, a text's last token), never
    NaN."""
    return [None if math.isnan(v) else round(float(v), 6) for v in values]


def _token_rows(tokens: Tokens) -> list[dict[str, Any]]:
    """Each token as the capacity and counterfactual JSON list it: id, text, sequence, position."""
    return [
        {
            "id": int(tokens.ids[i]),
            "text": tokens.text[i],
            "sequence": int(tokens.sequence[i]),
            "position": int(tokens.position[i]),
        }
        for i in range(len(tokens))
    ]


def capacity_json(routing: RoutingTrace, factor: float, policy: str, group: str) -> dict[str, Any]:
    """The `capacity` contract: the model and tokens (so drops match tokens), then per layer C per group, each
    slot kept or not, and per expert its demand (slots routed to it) and kept slots; `fill` is `kept_slots`
    under its older name."""
    result = simulate_capacity(routing, factor, policy=policy, group=group)
    return {
        "model": model_json(routing.model),
        "slots_ranked": routing.slots_ranked,
        "tokens": _token_rows(routing.tokens),
        "capacity_factor": factor,
        "policy": policy,
        "group": group,
        "layers": [
            {
                "layer": layer,
                "capacity": result.capacity[row].tolist(),
                "kept": result.kept[row].tolist(),
                "demand": result.demand[row].tolist(),
                "kept_slots": result.fill[row].tolist(),
                "fill": result.fill[row].tolist(),
                "drop_rate_by_position": _rates(result.drop_rate_by_position[row]),
            }
            for row, layer in enumerate(routing.model.moe_layers)
        ],
        "drop_rate_by_position": _rates(result.drop_rate_by_position.mean(axis=0)),
    }


def counterfactual_json(result: Counterfactual) -> dict[str, Any]:
    """The stable `counterfactual` contract (README, "The command line")."""
    tokens = result.tokens
    trim = result.policy == EXPERT_CHOICE  # rows list only the experts that took the token

    def rows(experts: Any, kept: Any) -> tuple[list[list[int]], list[list[bool]]]:
        if not trim:
            return experts.tolist(), kept.tolist()
        return [row[row != DROPPED].tolist() for row in experts], [k[e != DROPPED].tolist() for e, k in
                                                                   zip(experts, kept, strict=True)]  # fmt: skip

    layers = []
    for layer in result.layers:
        experts, kept = rows(layer.experts, layer.kept)
        layers.append({"layer": layer.layer, "capacity": layer.capacity.tolist(), "experts": experts, "kept": kept})
    return {
        "model": model_json(result.model),
        "settings": {
            "capacity_factor": result.capacity_factor,
            "policy": result.policy,
            "group": result.group,
            "top_k": result.top_k,
            "min_capacity": result.min_capacity,
        },
        "tokens": _token_rows(tokens),
        "plain": {"loss": _rates(result.plain_loss)},
        "capped": {"loss": _rates(result.capped_loss), "layers": layers},
        "delta_loss": _rates(result.delta_loss),
        "kl": _rates(result.kl),
        "top1_changed": [None if c < 0 else bool(c) for c in result.top1_changed.tolist()],
        "summary": {
            "mean_delta_loss": _rates([result.mean_delta_loss])[0],
            # expert-choice turns no slot away (each expert picks its tokens): the rate is undefined, not 0
            "dropped_slot_rate": None if trim else _rates([result.dropped_slot_rate])[0],
            "fully_dropped_token_rate": _rates([result.fully_dropped_token_rate])[0],
            "mean_experts_per_token": _rates([result.mean_experts_per_token])[0],
        },
    }


def _counterfactual(args: argparse.Namespace) -> dict[str, Any]:
    from moe_core.capacity.forward import counterfactual

    texts = _texts(args)
    loaded = _load(args)
    result = counterfactual(
        loaded.model, loaded.tokenizer, texts, args.capacity_factor, args.policy, args.group, top_k=args.top_k,
        name=args.model,
    )  # fmt: skip
    _warn_truncated(result.plain, args)
    return counterfactual_json(result)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout)
    print()


def _run_trace(args: argparse.Namespace) -> None:
    routing = _trace(args)
    dtype = SCORES[args.scores]
    if dtype is None:
        routing = replace(routing, logits=None, probs=None)
    if args.out is None:
        print_json(to_json_dict(routing))
        return
    save_trace(routing, args.out, dtype or np.float32)
    print(f"wrote {args.out}", file=sys.stderr)


def _run_capacity(args: argparse.Namespace) -> None:
    print_json(capacity_json(_trace(args), args.capacity_factor, args.policy, args.group))


def _run_architectures(_args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    from moe_core.defaults import BUNDLED_MODELS
    from moe_core.proof.verification import support_table, verify_all

    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(unit="family", file=sys.stderr)

    def report(done: int, total: int, row: Any, seconds: float) -> None:
        """A line per family as it finishes (the whole table takes many minutes), above a bar on a terminal."""
        line = f"[{done}/{total}] {row.family}: {'pass' if row.passed else 'FAIL'} ({seconds:.1f} s)"
        if bar is None:
            print(line, file=sys.stderr, flush=True)
            return
        bar.total = total
        bar.write(line)
        bar.update(1)

    try:
        results = verify_all(AutoTokenizer.from_pretrained(BUNDLED_MODELS[DEMO_MODEL]), on_result=report)
    finally:
        if bar is not None:
            bar.close()
    print(support_table(results))


def _generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEMO_MODEL, help=f"bundled name, local folder or hub id ({DEMO_MODEL})")
    parser.add_argument("--text", required=True, help="the prompt the model continues")
    parser.add_argument("--max-new-tokens", type=positive_int, default=40, help="tokens the model writes (40)")
    parser.add_argument("--temperature", type=float, default=None, help="sample at this temperature (greedy if unset)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling")
    parser.add_argument("--seed", type=int, default=None, help="the sampling seed (reproducible runs)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model repo's own code (off)")
    parser.add_argument("--format", choices=("json",), default="json")
    parser.add_argument("--out", type=Path, help="write the trace to FILE.json or FILE.parquet instead")


def _run_generate(args: argparse.Namespace) -> None:
    """The trace JSON of `trace`, each token with its phase (prompt / generated)."""
    from moe_core.capture.generation import generate_trace

    (text,) = _texts(argparse.Namespace(text=[args.text]))
    if args.out is not None and args.out.suffix not in {".json", ".parquet"}:
        raise ValueError(f"cannot save a trace as {args.out.suffix!r}: use .json or .parquet")
    loaded = load_for_command(args.model, args.device, args.trust_remote_code)
    routing = generate_trace(loaded.model, loaded.tokenizer, text, args.max_new_tokens, temperature=args.temperature,
                             top_p=args.top_p, seed=args.seed, name=args.model)  # fmt: skip
    if args.out is None:
        print_json(to_json_dict(routing))
        return
    save_trace(routing, args.out)
    print(f"wrote {args.out}", file=sys.stderr)


def _no_arguments(_parser: argparse.ArgumentParser) -> None:
    pass


COMMANDS: dict[str, Command] = {
    "trace": Command("print or save the routing of every token", _trace_arguments, _run_trace),
    "capacity": Command("simulate expert capacity and drops", _capacity_arguments, _run_capacity),
    "counterfactual": Command(
        "run the model capacity-bound and print what the drops cost per token",
        _counterfactual_arguments,
        lambda args: print_json(_counterfactual(args)),
    ),
    "architectures": Command(
        "check capture on a tiny model of every MoE family (Markdown table)", _no_arguments, _run_architectures
    ),
    "verify": Command(
        "prove capture exact on this model by ablation, layer by layer (JSON; exit 1 on a failing layer)",
        verify_command.verify_arguments,
        verify_command.run_verify,
    ),
    "trace-corpus": Command(
        "trace a corpus into resumable Parquet shards with addable summaries (README: Tracing a corpus)",
        corpus_cli.trace_corpus_arguments,
        corpus_cli.run_trace_corpus,
    ),
    "summarize": Command(
        "sum a traced corpus's shard summaries and print them", corpus_cli.summarize_arguments, corpus_cli.run_summarize
    ),
    "show": Command(
        "print or convert a saved trace or a vLLM / SGLang / Megatron-Core routing dump", show_arguments, run_show
    ),
    "trace-checkpoints": Command(
        "trace one fixed text set at every checkpoint of a run (a folder, or hub revisions), resumably",
        series_cli.trace_checkpoints_arguments,
        series_cli.run_trace_checkpoints,
    ),
    "training-series": Command(
        "router saturation and early routing learning over a traced checkpoint series (JSON)",
        series_cli.training_series_arguments,
        series_cli.run_training_series,
    ),
    "generate": Command(
        "let the model write and record the routing of every step (prompt and generated tokens, with their phase)",
        _generate_arguments,
        _run_generate,
    ),
    "compare": Command(
        "two traces of the same tokens, layer by layer: first-choice and set agreement, load and weight differences",
        compare_arguments,
        run_compare,
    ),
}


def run(args: argparse.Namespace) -> None:
    COMMANDS[args.command].run(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (CliError, ValueError, OSError) as error:
        print(f"error: {str(error).splitlines()[0] if str(error) else type(error).__name__}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0
