"""Capture is exact: on a tiny random model of every family, captured experts equal ablation ground truth."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from moe_core.capture.record import trace
from moe_core.capture.routers import find_moe_blocks
from moe_core.proof.tiny_models import all_families, build_tiny_model
from moe_core.proof.verification import (
    VERIFY_TEXTS,
    ExpertClasses,
    FamilyResult,
    ablation_experts,
    captured_sets,
    kept_rows,
    recording_block_inputs,
    too_uniform,
    weights_follow_probs,
)


@pytest.mark.slow
@pytest.mark.parametrize("family", all_families())
def test_captured_experts_equal_ablation(family: str, family_result: Callable[[str], FamilyResult]) -> None:
    """Every MoE layer's captured experts are exactly the experts whose ablation changes the token's output."""
    result = family_result(family)
    assert result.passed, result.detail
    assert result.layers >= 1


def test_ablation_detects_a_wrong_expert(demo_tokenizer: Any) -> None:
    """Negative control: swapping one token's captured expert makes the comparison fail."""
    model = build_tiny_model("mixtral")
    blocks, _ = find_moe_blocks(model, "mixtral")
    with recording_block_inputs(blocks) as calls:
        routing = trace(model, demo_tokenizer, VERIFY_TEXTS[0])
    truth = ablation_experts(blocks[0], calls[0][0], ExpertClasses(routing.model.num_experts))
    captured = captured_sets(routing, 0)
    assert np.array_equal(truth, captured)
    routing.experts[0, 0, 0] = (routing.experts[0, 0, 0] + 1) % routing.model.num_experts
    if routing.experts[0, 0, 0] == routing.experts[0, 0, 1]:
        routing.experts[0, 0, 0] = (routing.experts[0, 0, 0] + 1) % routing.model.num_experts
    assert not np.array_equal(truth, captured_sets(routing, 0))


def test_bias_routed_experts_are_not_top_k_of_probs(demo_tokenizer: Any) -> None:
    """DeepSeek-V3 selects with a bias and group limit: for some tokens the consumed experts differ from
    top-k of the probabilities, which is why capture reads the experts' own input."""
    routing = trace(build_tiny_model("deepseek_v3"), demo_tokenizer, VERIFY_TEXTS)
    k = routing.model.top_k
    naive = np.sort(np.argsort(-routing.probs, axis=-1)[..., :k], axis=-1)
    assert (naive != np.sort(routing.experts, axis=-1)).any()


def test_switch_capacity_drops_are_captured(demo_tokenizer: Any) -> None:
    """Switch's real capacity (4 slots per expert here) drops tokens; capture marks them DROPPED, and the
    ablation test above confirms no expert served them."""
    from moe_core.traces.types import DROPPED

    routing = trace(build_tiny_model("switch_transformers"), demo_tokenizer, VERIFY_TEXTS)
    dropped = routing.experts == DROPPED
    assert dropped.any()
    per_sequence = [routing.tokens.sequence == s for s in range(2)]
    for layer in range(routing.experts.shape[0]):
        for rows in per_sequence:
            served = np.bincount(routing.experts[layer, rows, 0][~dropped[layer, rows, 0]], minlength=8)
            assert served.max() <= 4  # expert_capacity in the tiny config


def test_too_uniform_routing_proves_nothing() -> None:
    """The proof refuses layers where agreement would say little: few experts used, or one serving all."""
    served = np.zeros((4, 8), dtype=bool)
    served[:, [0, 1]] = True  # 2 of 8 experts, every token alike
    assert "2 of 8 experts" in too_uniform(served)
    varied = np.eye(4, 8, dtype=bool) | np.eye(4, 8, k=4, dtype=bool)  # 8 experts, each serves 1 token
    assert too_uniform(varied) == ""
    varied[:, 7] = True  # expert 7 now serves every token
    assert "one expert serves every token" in too_uniform(varied)


def test_softmax_probs_of_a_sigmoid_router_fail_the_probs_check(demo_tokenizer: Any) -> None:
    """Negative control for the scoring column: a sigmoid router's trace passes with sigmoid probs and fails
    with softmax probs, so a family missing from the adapter table's sigmoid list cannot slip through."""
    routing = trace(build_tiny_model("deepseek_v3"), demo_tokenizer, VERIFY_TEXTS)
    assert weights_follow_probs(routing) is True
    shifted = np.exp(routing.logits - routing.logits.max(axis=-1, keepdims=True))
    softmax = shifted / shifted.sum(axis=-1, keepdims=True)
    assert weights_follow_probs(dataclasses.replace(routing, probs=softmax)) is False


def test_zaya_skip_slots_are_reported_as_the_skip_class_and_run_no_expert(demo_tokenizer: Any) -> None:
    """Zaya's router has a 9th class, skip. The experts see (expert 0, weight 0) for it; capture reports
    class 8, and ablation confirms that no expert, expert 0 included, serves those tokens."""
    model = build_tiny_model("zaya")
    blocks, _ = find_moe_blocks(model, "zaya")
    with recording_block_inputs(blocks) as calls:
        routing = trace(model, demo_tokenizer, VERIFY_TEXTS)
    skip = routing.experts[:, :, 0] == 8
    assert routing.model.num_experts == 9 and skip.any() and (~skip).any()
    assert (routing.weights[:, :, 0][skip] == 0).all()
    rows = kept_rows(routing)
    for layer, block in enumerate(blocks):
        truth = ablation_experts(block, calls[layer][0], ExpertClasses(computed=8))[rows]
        assert not truth[skip[layer]].any()
        assert truth[~skip[layer]].sum(axis=1).tolist() == [1] * int((~skip[layer]).sum())


def test_longcat_zero_computation_experts_are_proven_as_one_column(demo_tokenizer: Any) -> None:
    """LongCat's experts 8-11 pass the token through. Ablating their shared identity module changes exactly
    the tokens captured with one of them, which the folded column of captured_sets says."""
    model = build_tiny_model("longcat_flash")
    blocks, _ = find_moe_blocks(model, "longcat_flash")
    with recording_block_inputs(blocks) as calls:
        routing = trace(model, demo_tokenizer, VERIFY_TEXTS)
    classes = ExpertClasses(computed=8, zero_module="identity_expert")
    zero_column = captured_sets(routing, 0, classes)[:, -1]
    assert zero_column.any() and not zero_column.all()
    truth = ablation_experts(blocks[0], calls[0][0], classes)[kept_rows(routing)]
    np.testing.assert_array_equal(truth[:, -1], zero_column)


def test_deepseek_v4_hash_layer_experts_are_the_token_id_table(demo_tokenizer: Any) -> None:
    """DeepSeek-V4's first MoE layer picks experts from a fixed token-id table, which capture reports as is:
    every token's experts are its row of tid2eid, whatever the context. The table's order is no ranking: the
    trace puts each token's slots in descending gate weight, so slot 0 is the expert weighted most."""
    model = build_tiny_model("deepseek_v4")
    routing = trace(model, demo_tokenizer, VERIFY_TEXTS)
    table = np.sort(model.model.layers[0].mlp.gate.tid2eid.numpy()[routing.tokens.ids], axis=-1)
    np.testing.assert_array_equal(np.sort(routing.experts[0], axis=-1), table)
    assert not np.array_equal(np.sort(routing.experts[1], axis=-1), table)  # learned layers do not
    assert (np.diff(routing.weights, axis=-1) <= 0).all()


def test_multimodal_wrappers_use_their_text_decoders_adapter() -> None:
    """A wrapper model (Gemma 4, Llama 4 loaded whole) reports its own model_type; it still gets the routing
    adapter of its text decoder, so its scoring and choice reader are right."""
    from moe_core.capture.routers import ADAPTERS, DEFAULT_ADAPTER, adapter_for

    assert adapter_for("gemma4") is ADAPTERS["gemma4_text"]
    assert adapter_for("llama4").choice == "dense_scores"
    assert adapter_for("dots3_note").scoring == "sigmoid"
    assert adapter_for("mixtral") is DEFAULT_ADAPTER


def test_gemma4_wrapper_traces_with_its_text_adapter(demo_tokenizer: Any) -> None:
    """A Gemma 4 MoE checkpoint loads as the multimodal Gemma4ForConditionalGeneration (model_type "gemma4").
    Its router reports probabilities, and the trace keeps them as they are instead of taking a softmax again."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from moe_core.proof.tiny_models import COMMON, family_spec

    text = {**COMMON, **family_spec("gemma4_text").config}
    config = AutoConfig.for_model("gemma4", text_config=text, vision_config=None, audio_config=None)
    model = AutoModelForCausalLM.from_config(config).eval()
    assert model.config.model_type == "gemma4"
    routing = trace(model, demo_tokenizer, VERIFY_TEXTS)
    np.testing.assert_array_equal(routing.probs, routing.logits)
    np.testing.assert_allclose(routing.probs.sum(axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3"])
def test_capture_is_the_same_under_every_experts_implementation(family: str, demo_tokenizer: Any) -> None:
    """transformers can run the experts as a loop (eager) or as batched/grouped matmuls (GPU users get a kernel).
    The hook reads the experts' arguments, so every implementation yields the same experts and weights."""
    model = build_tiny_model(family)
    traces = {}
    for implementation in ("eager", "batched_mm", "grouped_mm"):
        model.set_experts_implementation(implementation)
        traces[implementation] = trace(model, demo_tokenizer, VERIFY_TEXTS)
    for implementation in ("batched_mm", "grouped_mm"):
        np.testing.assert_array_equal(traces[implementation].experts, traces["eager"].experts)
        np.testing.assert_allclose(traces[implementation].weights, traces["eager"].weights, atol=1e-6)
