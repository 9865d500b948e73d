"""trace(): one ordinary forward, hooks removed afterwards, routing consistent with the Mixtral formula."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from moe_core.capture import hooks
from moe_core.capture.record import trace
from moe_core.capture.routers import NoRoutersError, find_moe_blocks, layer_number
from moe_core.capture.tokens import tokenize
from moe_core.proof.tiny_models import build_tiny_model

TEXTS = ("Routing is where tokens meet experts.", "for i in range(3): print(i)")


@pytest.fixture(scope="module")
def mixtral() -> torch.nn.Module:
    return build_tiny_model("mixtral")


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_mixtral_weights_are_renormalised_top2_of_softmax(mixtral: torch.nn.Module, demo_tokenizer: Any) -> None:
    """Mixtral's combine weights are the two largest softmax probabilities, renormalised (paper §2.1)."""
    routing = trace(mixtral, demo_tokenizer, TEXTS)
    probs = torch.from_numpy(routing.logits).softmax(dim=-1).numpy()
    np.testing.assert_allclose(routing.probs, probs, atol=1e-6)
    top = np.sort(probs, axis=-1)[..., ::-1][..., :2]
    np.testing.assert_allclose(
        np.sort(routing.weights, axis=-1)[..., ::-1], top / top.sum(-1, keepdims=True), atol=1e-5
    )
    np.testing.assert_array_equal(np.sort(routing.experts, -1), np.sort(np.argsort(-probs, -1)[..., :2], -1))


def test_trace_shapes_and_model_info(mixtral: torch.nn.Module, demo_tokenizer: Any) -> None:
    """One row per real token (padding dropped); E, k and MoE layers read from the model."""
    routing = trace(mixtral, demo_tokenizer, TEXTS)
    tokens, batch, _ = tokenize(demo_tokenizer, TEXTS, None)
    assert len(routing.tokens) == int(batch["attention_mask"].sum()) == len(tokens)
    assert routing.logits.shape == (2, len(tokens), 8) and routing.experts.shape == (2, len(tokens), 2)
    assert routing.model.moe_layers == (0, 1) and routing.model.architecture == "mixtral"
    assert routing.model.num_experts == 8 and routing.model.top_k == 2 and routing.model.scoring == "softmax"


def test_padding_does_not_change_routing(mixtral: torch.nn.Module, demo_tokenizer: Any) -> None:
    """A text traced alone routes exactly as it does inside a padded batch."""
    batch = trace(mixtral, demo_tokenizer, TEXTS)
    alone = trace(mixtral, demo_tokenizer, TEXTS[1])
    rows = batch.tokens.sequence == 1
    np.testing.assert_array_equal(batch.experts[:, rows], alone.experts)
    np.testing.assert_allclose(batch.logits[:, rows], alone.logits, atol=1e-5)


def test_hooks_do_not_pile_up_and_outputs_unchanged(mixtral: torch.nn.Module, demo_tokenizer: Any) -> None:
    """Capture leaves one idle dispatcher per module (never more, however many traces), and the model's
    output is bit-identical to what it was without capture."""
    ids = demo_tokenizer(TEXTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        plain = mixtral(ids).logits
    trace(mixtral, demo_tokenizer, TEXTS[0])
    after_one = _hook_count(mixtral)
    trace(mixtral, demo_tokenizer, TEXTS)
    with torch.no_grad():
        again = mixtral(ids).logits
    assert _hook_count(mixtral) == after_one
    torch.testing.assert_close(plain, again, rtol=0, atol=0)


def test_hooks_are_inactive_after_a_failed_forward(mixtral: torch.nn.Module, demo_tokenizer: Any) -> None:
    """An error inside the forward leaves no active hooks behind: the next trace records exactly its own pass."""
    with pytest.raises(IndexError):
        trace(mixtral, _OutOfVocabTokenizer(demo_tokenizer), "boom")
    assert hooks._ACTIVE.get() is None
    again = trace(mixtral, demo_tokenizer, TEXTS[0])
    assert again.experts.shape[1] == len(demo_tokenizer(TEXTS[0])["input_ids"])


class _OutOfVocabTokenizer:
    """Wraps a tokenizer and returns an id beyond the vocabulary, to make the forward fail."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.is_fast, self.pad_token_id, self.eos_token_id = inner, True, 0, 0

    def __call__(self, text: str, **kwargs: Any) -> dict[str, Any]:
        return {"input_ids": [10**6], "offset_mapping": [(0, len(text))]}


def test_blank_text_is_refused(mixtral: torch.nn.Module, demo_tokenizer: Any) -> None:
    """Empty or whitespace-only text is a ValueError with a plain message."""
    with pytest.raises(ValueError, match="empty text"):
        trace(mixtral, demo_tokenizer, ["ok", "   \n"])


def test_dense_model_has_no_routers(dense_model_dir: Path) -> None:
    """find_moe_blocks names the dense model."""
    from transformers import AutoModelForCausalLM

    with pytest.raises(NoRoutersError, match="llama is a dense model: no routers found"):
        find_moe_blocks(AutoModelForCausalLM.from_pretrained(dense_model_dir), "llama")


def test_layer_number_parses_module_paths() -> None:
    """The layer index is the first number in a module path."""
    assert layer_number("model.layers.12.mlp.gate") == 12
    assert layer_number("encoder.block.3.layer.1.mlp") == 3
    with pytest.raises(ValueError):
        layer_number("model.norm")


def test_model_info_follows_dtype_changes(demo_tokenizer: Any) -> None:
    """The remembered model description is refreshed when the model's dtype changes."""
    model = build_tiny_model("mixtral", seed=1)
    assert trace(model, demo_tokenizer, "hi", name="a").model.dtype == "float32"
    described = trace(model.to(torch.bfloat16), demo_tokenizer, "hi", name="b").model
    assert (described.dtype, described.name) == ("bfloat16", "b")


def test_the_routing_pass_skips_the_language_model_head(mixtral: torch.nn.Module, demo_tokenizer: Any) -> None:
    """Capture's pass keeps one position's next-token logits (logits_to_keep=1), not [T, vocab]."""
    from moe_core.capture.record import forward_text

    _, batch, _ = tokenize(demo_tokenizer, TEXTS, None)
    with torch.inference_mode():
        output = forward_text(mixtral, batch)
    assert output.logits.shape == (2, 1, mixtral.config.vocab_size)
