"""The experts themselves (A Closer Look): weight similarity, each expert's output norm, and the router's preference."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import moe_core.experts as experts_module
from moe_core.analyses.experts import norm_preference, similarity_frame
from moe_core.capture.record import trace
from moe_core.experts import computed_experts, experts_input, moe_block, output_norms, weight_similarity
from moe_core.proof.tiny_models import build_tiny_model
from moe_core.traces.synthetic import trace_from_choices

TEXT = "Experts differ: 12 + 30 = 42, and def f(x): return x."


class FusedExperts(nn.Module):
    """Two fused tensors with a leading expert axis, like most families' experts."""

    def __init__(self, first: torch.Tensor, second: torch.Tensor) -> None:
        super().__init__()
        self.first, self.second = nn.Parameter(first), nn.Parameter(second)


def test_weight_similarity_hand_case(monkeypatch: pytest.MonkeyPatch) -> None:
    """Expert 1 = 2 × expert 0 (cosine 1); expert 2 is orthogonal to both (cosine 0). Chunked sums agree."""
    first = torch.tensor([[1.0, 0.0, 2.0], [2.0, 0.0, 4.0], [0.0, 5.0, 0.0]])
    second = torch.tensor([[[1.0, 1.0]], [[2.0, 2.0]], [[0.0, 0.0]]])
    expected = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(weight_similarity(FusedExperts(first, second), 3), expected, atol=1e-12)
    monkeypatch.setattr(experts_module, "SIMILARITY_CHUNK", 2)  # 3 and 2 weights per tensor: several chunks
    np.testing.assert_allclose(weight_similarity(FusedExperts(first, second), 3), expected, atol=1e-12)


def test_experts_input_is_the_post_attention_norm_of_the_layer(demo_tokenizer: Any) -> None:
    """In Mixtral, the experts read the output of the layer's post-attention RMSNorm: capture it independently."""
    model = build_tiny_model("mixtral")
    layer = model.model.layers[1]
    seen: list[torch.Tensor] = []
    handle = layer.post_attention_layernorm.register_forward_hook(lambda _m, _i, out: seen.append(out))
    hidden = experts_input(model, demo_tokenizer, [TEXT], moe_block(model, 1))
    handle.remove()
    torch.testing.assert_close(hidden, seen[0].reshape(-1, seen[0].shape[-1]))


def test_output_norms_equal_each_expert_computed_by_hand(demo_tokenizer: Any) -> None:
    """Mixtral's expert e is down_e(silu(gate_e h) * up_e h), with gate and up stacked in gate_up_proj[e]."""
    model = build_tiny_model("mixtral")
    block = moe_block(model, 0)
    hidden = experts_input(model, demo_tokenizer, [TEXT], block)
    norms = output_norms(model, block, hidden, 8, 2)
    with torch.no_grad():
        for expert in range(8):
            gate, up = (hidden @ block.experts.gate_up_proj[expert].T).chunk(2, dim=-1)
            out = (nn.functional.silu(gate) * up) @ block.experts.down_proj[expert].T
            np.testing.assert_allclose(norms[:, expert], out.norm(dim=-1).numpy(), rtol=1e-5)


def test_output_norms_refuse_families_with_other_experts_calls(demo_tokenizer: Any) -> None:
    """Switch hands its experts a one-hot mask, not (index, weights): a clear error, not a wrong answer."""
    model = build_tiny_model("switch_transformers")
    block = moe_block(model, 0)
    with pytest.raises(experts_module.ExpertsCallUnsupported, match="switch_transformers"):
        output_norms(model, block, torch.zeros(3, model.config.d_model), 8, 1)


def test_norm_preference_hand_case() -> None:
    """Token 0: scores 0.6 0.3 0.1 and norms 3 2 1 (first choice is the largest, rho = 1). Token 1: scores
    0.1 0.3 0.6, same norms (first choice 2 is the smallest, rho = -1). Half agree; mean rho 0."""
    routing = trace_from_choices([[0], [2]], num_experts=3)
    routing.probs[0] = [[0.6, 0.3, 0.1], [0.1, 0.3, 0.6]]
    row = norm_preference(routing, 0, np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])).iloc[0]
    assert row["first_is_largest"] == 0.5
    assert row["rank_correlation"] == pytest.approx(0.0)
    assert row["chance"] == pytest.approx(1 / 3)


def test_similarity_frame_leaves_out_the_diagonal() -> None:
    frame = similarity_frame(np.array([[1.0, 0.2], [0.2, 1.0]]))
    pd.testing.assert_frame_equal(frame, pd.DataFrame({"source": [0, 1], "target": [1, 0], "similarity": [0.2, 0.2]}))


def test_demo_models_first_layer_prefers_experts_with_larger_outputs() -> None:
    """The Closer Look finding, on the bundled model's first MoE layer: the first choice is the largest-output
    expert far more often than the 1/8 of chance."""
    from moe_core.models import load_model

    loaded = load_model()
    text = "The router prefers some experts. " * 20
    routing = trace(loaded.model, loaded.tokenizer, text)
    block = moe_block(loaded.model, 0)
    norms = output_norms(loaded.model, block, experts_input(loaded.model, loaded.tokenizer, [text], block), 8, 2)
    assert norm_preference(routing, 0, norms)["first_is_largest"].iloc[0] > 0.3


@pytest.mark.parametrize("family", ["dbrx", "longcat_flash", "zaya", "gpt_oss", "deepseek_v3", "qwen2_moe"])
def test_output_norms_on_families_with_unusual_experts(family: str, demo_tokenizer: Any) -> None:
    """DBRX returns [T, 1, H], LongCat's experts break on a single slot, Zaya has a skip class, GPT-OSS has
    biases: every expert's norm still comes out, finite, one per token and expert."""
    model = build_tiny_model(family)
    routing = trace(model, demo_tokenizer, TEXT)
    block = moe_block(model, 0)
    hidden = experts_input(model, demo_tokenizer, [TEXT], block)
    num_real = computed_experts(model, routing.model.num_experts)
    norms = output_norms(model, block, hidden, num_real, routing.model.top_k)
    assert norms.shape == (len(routing.tokens), 8) and np.isfinite(norms).all()  # 8 real experts in each


@pytest.mark.parametrize("family", ["llama4_text", "jetmoe", "switch_transformers"])
def test_experts_input_refuses_families_with_other_experts_calls(family: str, demo_tokenizer: Any) -> None:
    """Llama 4 feeds its experts every token scaled per expert, JetMoE sorted slots, Switch a one-hot mask: the
    per-token hidden states do not exist there, so the study says so before running anything."""
    model = build_tiny_model(family)
    with pytest.raises(experts_module.ExpertsCallUnsupported, match=family.removesuffix("_text")):
        experts_input(model, demo_tokenizer, [TEXT], moe_block(model, 0))


def test_norm_preference_leaves_out_zero_computation_classes() -> None:
    """E = 3 classes, the last a skip with no output: norms cover experts 0 and 1 only. Token 0 picks expert 1,
    the larger output; token 1 picks the skip, so it counts for no one: 1 of 1 agrees, chance 1/2."""
    routing = trace_from_choices([[1], [2]], num_experts=3)
    routing.probs[0] = [[0.2, 0.7, 0.1], [0.1, 0.2, 0.7]]
    row = norm_preference(routing, 0, np.array([[1.0, 2.0], [1.0, 2.0]])).iloc[0]
    assert row["first_is_largest"] == 1.0 and row["chance"] == 0.5
    assert row["rank_correlation"] == pytest.approx(1.0)  # both tokens rank experts 0 < 1 by score and by norm


def test_experts_input_stops_the_pass_at_its_layer(demo_tokenizer: Any) -> None:
    """Reading layer 0's experts input runs no later layer: a hook on layer 1 never fires."""
    model = build_tiny_model("mixtral")
    fired: list[int] = []
    handle = model.model.layers[1].register_forward_pre_hook(lambda _m, _a: fired.append(1))
    try:
        experts_input(model, demo_tokenizer, [TEXT], moe_block(model, 0))
    finally:
        handle.remove()
    assert fired == []


def test_experts_input_is_cut_to_the_context_like_the_trace(demo_tokenizer: Any) -> None:
    """A text past the context gives as many input rows as the trace has tokens (it was one more: a crash)."""
    from moe_core.capture.record import trace

    model = build_tiny_model("mixtral")
    long = "word " * (model.config.max_position_embeddings + 5)
    routing = trace(model, demo_tokenizer, long)
    hidden = experts_input(model, demo_tokenizer, [long], moe_block(model, 0))
    assert hidden.shape[0] == len(routing.tokens) == model.config.max_position_embeddings


def test_expert_study_reads_the_expert_weights_under_the_models_lock(
    demo_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ablation proof zeroes expert weights in place under forward_lock; every step of the Closer Look that
    reads those weights (the expert outputs, both similarities) runs while this thread holds that lock."""
    from moe_core.capture.hooks import forward_lock

    model = build_tiny_model("mixtral")
    routing = trace(model, demo_tokenizer, "The lock keeps readers out.")
    lock = forward_lock(model)
    held: dict[str, bool] = {}
    for name in ("output_norms", "weight_similarity", "matrix_similarities"):
        original = getattr(experts_module, name)

        def checked(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            held[_name] = lock._is_owned()  # RLock: whether the calling thread holds it
            return _original(*args, **kwargs)

        monkeypatch.setattr(experts_module, name, checked)
    experts_module.expert_study(model, demo_tokenizer, routing, 0)
    assert held == {"output_norms": True, "weight_similarity": True, "matrix_similarities": True}


def test_expert_study_of_a_trace_made_with_max_tokens(demo_tokenizer: Any) -> None:
    """A trace cut with max_tokens: the study reads the same 12 tokens (it re-tokenised the whole text and
    raised a broadcast error). In a causal model the first 12 tokens' expert inputs do not depend on what follows,
    so its norms are those of the whole text's first 12 rows."""
    model = build_tiny_model("mixtral")
    text = "Tokens past the cut must not reach the Closer Look at all. " * 3
    routing = trace(model, demo_tokenizer, text, max_tokens=12)
    assert len(routing.tokens) == 12 and routing.truncated == (True,)
    study = experts_module.expert_study(model, demo_tokenizer, routing, 0)
    block = moe_block(model, 0)
    whole = experts_input(model, demo_tokenizer, [text], block)
    assert len(whole) > 12
    expected = norm_preference(routing, 0, output_norms(model, block, whole[:12], 8, 2))
    pd.testing.assert_frame_equal(study.preference, expected)
