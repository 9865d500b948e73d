"""The corpus subcommands of `python -m moe_core` (entries of moe_core.cli.main.COMMANDS): trace-corpus, summarize."""

from __future__ import annotations

import argparse
from pathlib import Path

from moe_core.cli.arguments import capacity_factor, positive_int
from moe_core.defaults import CORPUS_BATCH_TOKENS, CORPUS_SHARD_DOCUMENTS, DEMO_MODEL, DEVICE_CHOICES


def trace_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEMO_MODEL, help=f"bundled name, local folder or hub id ({DEMO_MODEL})")
    parser.add_argument("--input", required=True, help=".txt (a document a line), .jsonl, .parquet, a folder of "
                        "them, or a datasets name")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="folder for shards and manifest (resumes there)")
    parser.add_argument("--domain-field", default=None, help="JSON key or column naming each document's domain")
    parser.add_argument("--batch-tokens", type=positive_int, default=CORPUS_BATCH_TOKENS, help="padded tokens per pass")
    parser.add_argument(
        "--shard-documents", type=positive_int, default=CORPUS_SHARD_DOCUMENTS, help="documents per shard"
    )
    parser.add_argument("--max-documents", type=positive_int, default=None, help="stop after this many documents")
    parser.add_argument("--capacity-factor", type=capacity_factor, default=1.0, help="for the drop-by-position counts")
    parser.add_argument("--weights", action="store_true", help="also store the combine weights (fp16)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model repo's own code (off)")


def run_trace_corpus(args: argparse.Namespace) -> None:
    from moe_core.cli.main import print_json
    from moe_core.corpus.runner import CorpusSettings, trace_corpus
    from moe_core.corpus.summary import summary_json
    from moe_core.models import weight_bars_on_a_terminal_only

    weight_bars_on_a_terminal_only()
    settings = CorpusSettings(
        model=args.model, input=args.input, out=args.out, domain_field=args.domain_field,
        batch_tokens=args.batch_tokens, shard_documents=args.shard_documents, max_documents=args.max_documents,
        capacity_factor=args.capacity_factor, weights=args.weights, device=args.device,
        trust_remote_code=args.trust_remote_code,
    )  # fmt: skip
    total = trace_corpus(settings)
    if total is not None:
        summary = summary_json(total)
        print_json({"out": str(args.out), "documents": summary["documents"], "tokens": summary["tokens"]})


def summarize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="a folder written by trace-corpus")
    parser.add_argument("--format", choices=("json",), default="json")


def run_summarize(args: argparse.Namespace) -> None:
    """Sum the finished shards' summaries, save DIR/summary.npz, print the JSON."""
    from moe_core.cli.main import print_json
    from moe_core.corpus.shards import load_manifest, write_total
    from moe_core.corpus.summary import summary_json

    total = write_total(args.folder)
    print_json(summary_json(total, load_manifest(args.folder)["model"]))
