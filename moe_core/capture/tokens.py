"""Tokenising the input texts into a right-padded batch plus the Tokens table of a trace."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from moe_core.traces.types import Tokens


def _offsets_without_mapping(tokenizer: Any, text: str, ids: list[int]) -> list[tuple[int, int]]:
    """Character spans for slow tokenizers (no offset mapping): locate each decoded piece in order."""
    spans, cursor = [], 0
    for token_id in ids:
        piece = tokenizer.decode([token_id]).strip()
        found = text.find(piece, cursor) if piece else -1
        if found == -1:
            spans.append((cursor, cursor))
        else:
            spans.append((found, found + len(piece)))
            cursor = found + len(piece)
    return spans


def _display_text(tokenizer: Any, text: str, ids: list[int], spans: list[tuple[int, int]]) -> list[str]:
    """The characters each token covers; bytes of one character show it once (on the first token).

    Tokens with no span (special tokens such as <s>) show their own token string.
    """
    shown: list[str] = []
    previous: tuple[int, int] | None = None
    for token_id, span in zip(ids, spans, strict=True):
        start, end = span
        if start == end:
            shown.append(tokenizer.convert_ids_to_tokens(token_id))
        elif span == previous:
            shown.append("")
        else:
            shown.append(text[start:end])
        previous = span
    return shown


def tokenize(
    tokenizer: Any, texts: Sequence[str], max_tokens: int | None
) -> tuple[Tokens, dict[str, torch.Tensor], tuple[bool, ...]]:
    """(Tokens table, right-padded batch with attention_mask, which texts were truncated)."""
    fast = bool(getattr(tokenizer, "is_fast", False))
    ids_per_text: list[list[int]] = []
    spans_per_text: list[list[tuple[int, int]]] = []
    truncated: list[bool] = []
    for text in texts:
        encoded = tokenizer(text, return_offsets_mapping=fast, add_special_tokens=True)
        ids = list(encoded["input_ids"])
        spans = (
            [tuple(s) for s in encoded["offset_mapping"]] if fast else _offsets_without_mapping(tokenizer, text, ids)
        )
        cut = max_tokens is not None and len(ids) > max_tokens
        ids_per_text.append(ids[:max_tokens] if cut else ids)
        spans_per_text.append(spans[:max_tokens] if cut else spans)
        truncated.append(cut)
    width = max(len(ids) for ids in ids_per_text)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    input_ids = torch.full((len(texts), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(texts), width), dtype=torch.long)
    for row, ids in enumerate(ids_per_text):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    display = [
        piece
        for text, ids, spans in zip(texts, ids_per_text, spans_per_text, strict=True)
        for piece in _display_text(tokenizer, text, ids, spans)
    ]
    tokens = Tokens(
        ids=np.concatenate([np.asarray(ids, dtype=np.int64) for ids in ids_per_text]),
        text=tuple(display),
        offsets=np.asarray([s for spans in spans_per_text for s in spans], dtype=np.int64).reshape(-1, 2),
        sequence=np.concatenate([np.full(len(ids), row, dtype=np.int64) for row, ids in enumerate(ids_per_text)]),
        position=np.concatenate([np.arange(len(ids), dtype=np.int64) for ids in ids_per_text]),
    )
    return tokens, {"input_ids": input_ids, "attention_mask": attention_mask}, tuple(truncated)
