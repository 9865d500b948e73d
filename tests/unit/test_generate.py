"""Continuing a text: greedy, reproducible, and within the model's context."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from moe_core.generate import MAX_NEW_TOKENS, continue_text
from moe_core.models import load_model
from moe_core.proof.tiny_models import build_tiny_model


def test_continuation_is_the_greedy_argmax_step_by_step(demo_tokenizer: Any) -> None:
    """Each new token is the argmax of the model's next-token logits on everything before it, computed here by
    plain forward passes without generate()."""
    model = build_tiny_model("mixtral")
    text = "def add(a, b):"
    ids = demo_tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        for _ in range(6):
            next_id = model(input_ids=ids, use_cache=False).logits[0, -1].argmax()
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    expected = text + demo_tokenizer.decode(ids[0, -6:].tolist())
    assert continue_text(model, demo_tokenizer, text, max_new_tokens=6) == expected


def test_demo_model_continues_python_with_python() -> None:
    """The bundled model, trained on Python among other domains, keeps writing code after a def line, and
    gives the same continuation every time."""
    loaded = load_model()
    text = "def fibonacci(n):\n"
    first = continue_text(loaded.model, loaded.tokenizer, text, max_new_tokens=30)
    assert first.startswith(text) and len(first) > len(text)
    assert any(word in first[len(text) :] for word in ("return", "if", "for", "=", "("))
    assert continue_text(loaded.model, loaded.tokenizer, text, max_new_tokens=30) == first


@pytest.mark.parametrize(("text", "tokens", "message"), [("", 5, "empty text"), ("hi", 0, "between 1"),
                                                         ("hi", MAX_NEW_TOKENS + 1, "between 1")])  # fmt: skip
def test_bad_requests_are_refused(demo_tokenizer: Any, text: str, tokens: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        continue_text(build_tiny_model("mixtral"), demo_tokenizer, text, max_new_tokens=tokens)


def test_no_continuation_past_the_context(demo_tokenizer: Any) -> None:
    """A text that already fills the context comes back unchanged."""
    model = build_tiny_model("mixtral")
    text = "word " * (model.config.max_position_embeddings + 10)
    assert continue_text(model, demo_tokenizer, text, max_new_tokens=5) == text


def test_encoder_decoder_models_do_not_continue_the_text(demo_tokenizer: Any) -> None:
    """Switch writes a separate output from its decoder: there is no continuation of the input to append."""
    with pytest.raises(ValueError, match="encoder-decoder"):
        continue_text(build_tiny_model("switch_transformers"), demo_tokenizer, "hello", max_new_tokens=3)
