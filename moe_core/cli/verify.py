"""`python -m moe_core verify`: the ablation proof of capture on the loaded model itself, layer by layer.

Exactness should not rest on a table someone wrote: this runs the architecture tests' proof
(moe_core.proof.verification) on any model the explorer can load, remote code included, on a short text and the
first few MoE layers.
Prints one JSON line; exits 1 when a layer fails, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from moe_core.defaults import DEMO_MODEL, DEVICE_CHOICES, VERIFY_LAYERS

if TYPE_CHECKING:
    from moe_core.proof.verification import ModelVerdict

EXIT_FAILED = 1


def verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEMO_MODEL, help=f"bundled name, local folder or hub id ({DEMO_MODEL})")
    parser.add_argument("--text", action="append", help="a short text to trace; repeat for more (two built in)")
    parser.add_argument("--layers", type=int, default=VERIFY_LAYERS, help=f"first N MoE layers ({VERIFY_LAYERS})")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model repo's own code (off)")


def verdict_json(model: str, verdict: ModelVerdict) -> dict[str, Any]:
    """The stable `verify` contract: overall verdict, one entry per proven layer, the model-wide checks."""
    return {
        "model": model,
        "passed": verdict.passed,
        "num_experts": verdict.num_experts,
        "top_k": verdict.top_k,
        "layers": [{"layer": v.layer, "passed": v.passed, "detail": v.detail} for v in verdict.layers],
        "logits_match": verdict.logits_match,
        "probs_match": verdict.probs_match,
        "notes": list(verdict.notes),
    }


def run_verify(args: argparse.Namespace) -> None:
    from moe_core.cli.main import load_for_command
    from moe_core.proof.verification import VERIFY_TEXTS, verify_model

    if args.layers < 1:
        raise ValueError(f"--layers must be at least 1, got {args.layers}")
    texts = tuple(args.text or VERIFY_TEXTS)
    if any(not text.strip() for text in texts):
        raise ValueError("empty text: every --text needs some non-blank text")
    loaded = load_for_command(args.model, args.device, args.trust_remote_code)
    verdict = verify_model(loaded.model, loaded.tokenizer, texts, max_layers=args.layers, name=args.model)
    json.dump(verdict_json(args.model, verdict), sys.stdout)
    print()
    if not verdict.passed:
        raise SystemExit(EXIT_FAILED)
