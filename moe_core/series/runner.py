"""Trace one fixed text set at every checkpoint (`python -m moe_core trace-checkpoints`), resumably."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from moe_core.batches import held_out_texts
from moe_core.corpus.summary import write_atomically
from moe_core.series.store import SERIES_FORMAT, read_manifest, step_file, write_manifest
from moe_core.traces.io import to_parquet_bytes

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


def trace_checkpoints(
    checkpoints: Sequence[Checkpoint], out: Path, texts: Sequence[str] | None = None,
    max_tokens: int = SERIES_TOKENS, device: str = "auto", trust_remote_code: bool = False,
    report: Callable[[str], None] | None = None,
) -> dict:  # fmt: skip
    """Trace `texts` at each checkpoint into `out`, skipping the steps already there; returns the manifest.
    A folder begun with other texts or another token limit is refused, not mixed."""
    from moe_core.capture.record import trace
    from moe_core.models import load_model

    texts = tuple(texts or default_texts())
    report = report or (lambda line: print(line, file=sys.stderr, flush=True))
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out) or {"format": SERIES_FORMAT, "model": checkpoints[0].model, "texts": list(texts),
                                       "max_tokens": max_tokens, "steps": []}  # fmt: skip
    if manifest.get("texts") != list(texts) or manifest.get("max_tokens") != max_tokens:
        raise ValueError(f"{out.name} holds a series of other texts or another token limit: use a new folder")
    done = {record["step"] for record in manifest["steps"] if (out / record["file"]).is_file()}
    for number, checkpoint in enumerate(checkpoints, start=1):
        if checkpoint.step in done:
            report(f"[{number}/{len(checkpoints)}] step {checkpoint.step}: already traced")
            continue
        loaded = load_model(checkpoint.model, device=device, trust_remote_code=trust_remote_code,
                            revision=checkpoint.revision)  # fmt: skip
        routing = trace(loaded.model, loaded.tokenizer, texts, name=checkpoint.source, max_tokens=max_tokens)
        compact = replace(routing, logits=None, probs=None)  # experts and weights: what the series reads
        write_atomically(out / step_file(checkpoint.step), to_parquet_bytes(compact))
        manifest["steps"] = [r for r in manifest["steps"] if r["step"] != checkpoint.step]
        manifest["steps"].append({"step": checkpoint.step, "source": checkpoint.source,
                                  "file": step_file(checkpoint.step)})  # fmt: skip
        write_manifest(out, manifest)
        report(f"[{number}/{len(checkpoints)}] step {checkpoint.step}: traced {len(routing.tokens)} tokens")
    return manifest
