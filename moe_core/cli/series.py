"""`trace-checkpoints` and `training-series`: routing over a training run (moe_core.series, analyses.series)."""

from __future__ import annotations

import argparse
from pathlib import Path

from moe_core.cli.arguments import positive_int
from moe_core.defaults import DEVICE_CHOICES


def trace_checkpoints_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--checkpoints", type=Path, help="a folder of saved checkpoints (checkpoint-100/, …)")
    where.add_argument("--revisions", help="comma-separated hub revisions of --model (step5000-tokens20B,…)")
    parser.add_argument("--model", help="the hub model whose --revisions to trace")
    parser.add_argument("--out", type=Path, required=True, help="folder for the series (resumes there)")
    parser.add_argument("--text", action="append", help="the fixed text set (default: the bundled held-out texts)")
    parser.add_argument("--max-tokens", type=positive_int, default=None, help="tokens per text (256)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model repo's own code (off)")


def run_trace_checkpoints(args: argparse.Namespace) -> None:
    from moe_core.cli.main import print_json
    from moe_core.models import weight_bars_on_a_terminal_only
    from moe_core.series.runner import SERIES_TOKENS, Checkpoint, trace_checkpoints
    from moe_core.series.store import checkpoint_folders, revision_steps

    weight_bars_on_a_terminal_only()

    if args.revisions is not None:
        if not args.model:
            raise ValueError("--revisions needs --model: the hub model they are revisions of")
        revisions = [r.strip() for r in args.revisions.split(",") if r.strip()]
        if not revisions:
            raise ValueError("--revisions is empty")
        checkpoints = [Checkpoint(step, args.model, r) for step, r in revision_steps(revisions)]
    else:
        checkpoints = [Checkpoint(step, str(folder)) for step, folder in checkpoint_folders(args.checkpoints)]
    if args.text is not None and any(not t.strip() for t in args.text):
        raise ValueError("empty text: every --text needs some non-blank text")
    manifest = trace_checkpoints(checkpoints, args.out, args.text, args.max_tokens or SERIES_TOKENS, args.device,
                                 args.trust_remote_code)  # fmt: skip
    print_json({"out": str(args.out), "steps": [record["step"] for record in manifest["steps"]]})


def training_series_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "series",
        help="a folder written by trace-checkpoints, a model folder with a series/ "
        "inside, or demo-mixtral (the bundled model's own training)",
    )
    parser.add_argument("--min-count", type=positive_int, default=None, help="token ids seen this often (5)")
    parser.add_argument("--step", type=int, help="with --out: export this step's trace")
    parser.add_argument("--out", type=Path, help="write the --step snapshot to FILE.json or FILE.parquet")
    parser.add_argument("--format", choices=("json",), default="json")


def run_training_series(args: argparse.Namespace) -> None:
    """Numpy only: reading a series imports neither torch nor transformers."""
    from moe_core.analyses.series import MIN_ID_COUNT, series_json
    from moe_core.cli.main import print_json
    from moe_core.series.store import load_series, series_folder
    from moe_core.traces.io import save_trace

    series = load_series(series_folder(args.series))
    if (args.step is None) != (args.out is None):
        raise ValueError("--step and --out go together: the step to export and where")
    if args.step is not None:
        if args.step not in series.steps:
            raise ValueError(f"step {args.step} is not in the series (steps {list(series.steps)[:8]})")
        save_trace(series.traces[series.steps.index(args.step)], args.out)
        print_json({"out": str(args.out), "step": args.step})
        return
    print_json(series_json(series, args.min_count or MIN_ID_COUNT))
