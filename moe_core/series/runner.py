"""Trace one fixed text set at every checkpoint (`python -m moe_core trace-checkpoints`), resumably."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moe_core.batches import held_out_texts
from moe_core.series.store import open_series, record_step, recorded_steps

SERIES_TOKENS = 256  # tokens per text: the five held-out texts make a ~1,300-token set, small per checkpoint


@dataclass(frozen=True)
class Checkpoint:
    """One point of the run: its step, and how to load it (a folder, or a hub model at a revision)."""

    step: int
    model: str
    revision: str | None = None

    @property
    def source(self) -> str:
        return f"{self.model}@{self.revision}" if self.revision else self.model


def default_texts() -> tuple[str, ...]:
    """The bundled held-out texts, one per domain: the same text set for every series unless one is given."""
    return tuple(held_out_texts().values())


def text_names(texts: Sequence[str]) -> tuple[str, ...]:
    """What to call each text of a series: its domain where the texts are the bundled held-out set (in its
    order), else text 1, text 2, …"""
    bundled = held_out_texts()
    if tuple(texts) == tuple(bundled.values()):
        return tuple(bundled)
    return tuple(f"text {number}" for number in range(1, len(texts) + 1))


def trace_checkpoints(
    checkpoints: Sequence[Checkpoint], out: Path, texts: Sequence[str] | None = None,
    max_tokens: int = SERIES_TOKENS, device: str = "auto", trust_remote_code: bool = False,
    report: Callable[[str], None] | None = None,
) -> dict:  # fmt: skip
    """Trace `texts` at each checkpoint into `out`, skipping the steps already there; returns the manifest.
    A folder begun with other texts or another token limit is refused, not mixed."""
    from moe_core.models import load_model

    texts = tuple(texts or default_texts())
    report = report or (lambda line: print(line, file=sys.stderr, flush=True))
    manifest = open_series(out, checkpoints[0].model, texts, max_tokens)
    done = recorded_steps(out, manifest)
    for number, checkpoint in enumerate(checkpoints, start=1):
        if checkpoint.step in done:
            report(f"[{number}/{len(checkpoints)}] step {checkpoint.step}: already traced")
            continue
        loaded = load_model(checkpoint.model, device=device, trust_remote_code=trust_remote_code,
                            revision=checkpoint.revision)  # fmt: skip
        tokens = snapshot(loaded.model, loaded.tokenizer, out, manifest, checkpoint.step, checkpoint.source)
        report(f"[{number}/{len(checkpoints)}] step {checkpoint.step}: traced {tokens} tokens")
    return manifest


def snapshot(model: Any, tokenizer: Any, out: Path, manifest: dict, step: int, source: str) -> int:
    """Trace the series' texts with `model` as it is now and record them as `step`; the number of tokens.
    Shared by trace-checkpoints and the demo model's training loop (which calls it mid-run, in eval mode)."""
    from moe_core.capture.record import trace

    routing = trace(model, tokenizer, manifest["texts"], name=source, max_tokens=manifest["max_tokens"])
    record_step(out, manifest, step, source, routing)
    return len(routing.tokens)
