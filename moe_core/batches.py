"""Built-in batches of held-out text, for analyses that need more than the visitor's prompt.

The held-out excerpts (one file per training domain, never seen by the demo model) ship with the demo model,
but they are plain text and serve any model. `equal_windows` cuts them into windows of one token length, several
per domain: a "drop towards the end" curve pooled over texts of different lengths mixes the texts that reach a
position with those that do not (its tail would come from the longest text alone), so every position bin must
hold the same texts.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from moe_core.defaults import BUNDLED_MODELS, DEMO_MODEL
from moe_core.traces.types import RoutingTrace

WINDOW_TOKENS = 384  # per window: 4 windows of the shortest domain fit, and C is large enough to fill gradually
WINDOWS_PER_DOMAIN = 4


def held_out_folder() -> Path:
    return BUNDLED_MODELS[DEMO_MODEL] / "held_out"


@lru_cache(maxsize=1)
def held_out_texts() -> dict[str, str]:
    """Domain ("arithmetic", "code", "german", "markup", "prose") -> its held-out excerpt, by file name."""
    return {path.stem: path.read_text(encoding="utf-8") for path in sorted(held_out_folder().glob("*.txt"))}


@dataclass(frozen=True)
class DomainBatch:
    """Texts and the domain of each, in the same order."""

    texts: tuple[str, ...]
    domains: tuple[str, ...]


def equal_windows(
    tokenizer: Any,
    texts: dict[str, str] | None = None,
    window: int = WINDOW_TOKENS,
    per_domain: int = WINDOWS_PER_DOMAIN,
) -> DomainBatch:
    """Consecutive, non-overlapping windows of each domain's text that tokenise to at least `window` tokens.

    Trace them with `max_tokens=window` so that every window is exactly `window` tokens long: a window's text
    runs a few tokens past its end, since a cut in the middle of a word may re-tokenise shorter. Domains too short
    for `per_domain` windows give as many as fit.
    """
    texts = held_out_texts() if texts is None else texts
    chosen: list[str] = []
    domains: list[str] = []
    for domain, text in texts.items():
        offsets = _token_starts(tokenizer, text)
        for number in range(per_domain):
            first, last = number * window, (number + 1) * window + 8  # 8 tokens of slack past the cut
            if last >= len(offsets):
                break
            piece = text[offsets[first] : offsets[last]].strip()
            if len(tokenizer(piece)["input_ids"]) >= window:
                chosen.append(piece)
                domains.append(domain)
    if not chosen:
        raise ValueError(f"no held-out text is {window} tokens long for this tokenizer")
    return interleaved(DomainBatch(tuple(chosen), tuple(domains)))


def interleaved(batch: DomainBatch) -> DomainBatch:
    """The windows taken round-robin by domain (a1 b1 c1 a2 b2 c2 …): with one capacity budget for the whole
    batch, slots are served in batch order, so windows grouped by domain made the per-domain lines measure where
    a domain sat in the batch (arithmetic, first: 0% dropped at the first MoE layer; prose, last: 19.5%), not the
    domain."""
    by_domain: dict[str, list[str]] = {}
    for text, domain in zip(batch.texts, batch.domains, strict=True):
        by_domain.setdefault(domain, []).append(text)
    rounds = max(len(texts) for texts in by_domain.values())
    order = [(texts[i], domain) for i in range(rounds) for domain, texts in by_domain.items() if i < len(texts)]
    return DomainBatch(tuple(t for t, _ in order), tuple(d for _, d in order))


def _token_starts(tokenizer: Any, text: str) -> list[int]:
    """Character offset where each token of `text` starts; estimated from the mean token length for slow
    tokenizers (no offset mapping): the windows are then checked by re-tokenising anyway."""
    if getattr(tokenizer, "is_fast", False):
        spans = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
        return [start for start, _ in spans]
    count = max(1, len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return [round(i * len(text) / count) for i in range(count)]


@dataclass(frozen=True)
class LabBatch:
    """The equal-length windows traced: every sequence exactly `window` tokens, and each one's domain."""

    trace: RoutingTrace
    windows: DomainBatch


def trace_equal_windows(model: Any, tokenizer: Any, name: str | None = None, window: int = WINDOW_TOKENS) -> LabBatch:
    """Trace `equal_windows` cut to exactly `window` tokens each (the capacity lab's fair batch)."""
    from moe_core.capture.record import trace

    windows = equal_windows(tokenizer, window=window)
    return LabBatch(trace(model, tokenizer, windows.texts, name=name, max_tokens=window), windows)
