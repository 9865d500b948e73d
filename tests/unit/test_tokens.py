"""Tokenising into the trace's Tokens table: offsets, display text, padding and truncation."""

from __future__ import annotations

from typing import Any

from moe_core.capture.tokens import tokenize

TEXTS = ("Grüße aus 東京 🚀!", "x = 1")


def test_display_text_joins_back_to_the_input(demo_tokenizer: Any) -> None:
    """Joining each sequence's display pieces gives the original text, multi-byte characters included."""
    tokens, _, _ = tokenize(demo_tokenizer, TEXTS, None)
    for number, text in enumerate(TEXTS):
        pieces = [p for p, s in zip(tokens.text, tokens.sequence, strict=True) if s == number]
        assert "".join(pieces) == text


def test_offsets_point_into_the_text(demo_tokenizer: Any) -> None:
    """Each token's offsets cover the characters it shows."""
    tokens, _, _ = tokenize(demo_tokenizer, TEXTS, None)
    for piece, (start, end), sequence in zip(tokens.text, tokens.offsets, tokens.sequence, strict=True):
        if piece:
            assert TEXTS[sequence][start:end] == piece


def test_batch_is_right_padded(demo_tokenizer: Any) -> None:
    """The batch has one row per text; the attention mask covers exactly each text's tokens."""
    tokens, batch, _ = tokenize(demo_tokenizer, TEXTS, None)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    assert lengths == [int((tokens.sequence == i).sum()) for i in range(len(TEXTS))]
    assert batch["attention_mask"][1, : lengths[1]].all() and not batch["attention_mask"][1, lengths[1] :].any()
    assert tokens.position.tolist() == [*range(lengths[0]), *range(lengths[1])]


def test_long_text_is_truncated_and_flagged(demo_tokenizer: Any) -> None:
    """Text beyond the limit is cut to the limit and flagged, the short one is not."""
    tokens, batch, truncated = tokenize(demo_tokenizer, ("word " * 50, "hi"), 10)
    assert truncated == (True, False)
    assert batch["input_ids"].shape[1] == 10
    assert int((tokens.sequence == 0).sum()) == 10
