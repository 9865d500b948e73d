"""Capture is exact: on a tiny random model of every family, captured experts equal ablation ground truth."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from moe_core.capture import trace
from moe_core.routers import find_moe_blocks
from moe_core.tiny_models import all_families, build_tiny_model
from moe_core.verification import (
    VERIFY_TEXTS,
    ablation_experts,
    captured_sets,
    recording_block_inputs,
    verify_family,
)


@pytest.mark.slow
@pytest.mark.parametrize("family", all_families())
def test_captured_experts_equal_ablation(family: str, demo_tokenizer: Any) -> None:
    """Every MoE layer's captured experts are exactly the experts whose ablation changes the token's output."""
    result = verify_family(family, demo_tokenizer)
    assert result.passed, result.detail
    assert result.layers >= 1


def test_ablation_detects_a_wrong_expert(demo_tokenizer: Any) -> None:
    """Negative control: swapping one token's captured expert makes the comparison fail."""
    model = build_tiny_model("mixtral")
    blocks, _ = find_moe_blocks(model, "mixtral")
    with recording_block_inputs(blocks) as calls:
        routing = trace(model, demo_tokenizer, VERIFY_TEXTS[0])
    truth = ablation_experts(blocks[0], calls[0][0], routing.model.num_experts)
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
    from moe_core.trace import DROPPED

    routing = trace(build_tiny_model("switch_transformers"), demo_tokenizer, VERIFY_TEXTS)
    dropped = routing.experts == DROPPED
    assert dropped.any()
    per_sequence = [routing.tokens.sequence == s for s in range(2)]
    for layer in range(routing.experts.shape[0]):
        for rows in per_sequence:
            served = np.bincount(routing.experts[layer, rows, 0][~dropped[layer, rows, 0]], minlength=8)
            assert served.max() <= 4  # expert_capacity in the tiny config
