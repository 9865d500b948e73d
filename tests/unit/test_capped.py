"""The capacity-bound forward: hand cases per policy, and exactness against the plain pass and ablation."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest
import torch

from moe_core.capacity.forward import (
    CappedUnsupported,
    LayerDecision,
    LayerInput,
    counterfactual,
    decide,
    lm_forward,
    run_capped,
    top_k_what_if,
    unsupported_reason,
)
from moe_core.capacity.simulate import simulate_capacity
from moe_core.capture.record import tokenize_texts
from moe_core.capture.routers import find_moe_blocks
from moe_core.proof.tiny_models import build_tiny_model
from moe_core.proof.verification import expert_zeroed
from moe_core.traces.types import DROPPED

T, F = True, False
TEXTS = ("The quick brown fox jumps over the lazy dog, then 12 + 30 = 42.", "def add(a, b):\n    return a + b")

# One group, T=4, E=4, k=2, CF=1 → C = ceil(1·2·4/4) = 2 (the static simulation's hand case).
HAND = LayerInput(
    experts=np.array([[0, 1], [1, 0], [0, 1], [0, 2]]),
    weights=np.array([[0.5, 0.5], [0.6, 0.4], [0.9, 0.1], [0.7, 0.3]]),
    probs=np.array([[0.4, 0.4, 0.1, 0.1], [0.3, 0.45, 0.15, 0.1], [0.8, 0.1, 0.05, 0.05], [0.6, 0.1, 0.25, 0.05]]),
    group_index=np.zeros(4, dtype=np.int64),
    group_sizes=np.array([4]),
)


def test_position_policy_hand_case_zeroes_dropped_weights_without_renormalising():
    """Rank 1 in token order: t0→e0, t1→e1, t2→e0 fill e0 (C = 2), t3→e0 dropped; rank 2: t0→e1 (e1 full
    after), t1→e0 dropped, t2→e1 dropped, t3→e2 kept. Kept weights keep their values (t3 keeps 0.3, not 1.0)."""
    decision = decide(HAND, 1.0, "position")
    assert decision.capacity.tolist() == [2]
    assert decision.kept.tolist() == [[T, T], [T, F], [T, F], [F, T]]
    np.testing.assert_array_equal(decision.weights, [[0.5, 0.5], [0.6, 0.0], [0.9, 0.0], [0.0, 0.3]])


def test_score_policy_hand_case_serves_by_raw_top1_probability():
    """Raw top-1 probabilities 0.4, 0.45, 0.8, 0.6: served t2, t3, t1, t0. Rank 1: t2→e0, t3→e0 (full),
    t1→e1, t0→e0 dropped. Rank 2: t2→e1 (e1 full), t3→e2, t1→e0 dropped, t0→e1 dropped: t0 loses both."""
    decision = decide(HAND, 1.0, "score")
    assert decision.kept.tolist() == [[F, F], [T, F], [T, T], [T, T]]
    assert decision.weights[0].tolist() == [0.0, 0.0]


def test_expert_choice_hand_case_weights_are_router_probabilities():
    """C = 2 per expert: e0 takes t2 (0.8), t3 (0.6); e1 takes t1 (0.45), t0 (0.4, tie with nobody); e2 takes
    t3 (0.25), t1 (0.15); e3 takes t0, t1 (0.1, 0.1 tie → position) over t2, t3 (0.05). Weights are the probs."""
    decision = decide(HAND, 1.0, "expert-choice")
    rows = [[int(e) for e, k in zip(experts, kept, strict=True) if k] for experts, kept in
            zip(decision.experts, decision.kept, strict=True)]  # fmt: skip
    assert rows == [[1, 3], [1, 2, 3], [0], [0, 2]]
    assert decision.experts.shape == (4, 3) and decision.experts[2, 1] == DROPPED
    np.testing.assert_allclose(decision.weights[1], [0.45, 0.15, 0.1])
    np.testing.assert_allclose(decision.weights[2], [0.8, 0.0, 0.0])


@pytest.fixture(scope="module")
def mixtral() -> torch.nn.Module:
    return build_tiny_model("mixtral")


def _logits(model: torch.nn.Module, tokenized: Any) -> torch.Tensor:
    with torch.inference_mode():
        return lm_forward(model, tokenized.batch)


@pytest.mark.parametrize("policy", ["position", "score"])
def test_capacity_to_spare_gives_the_plain_logits(mixtral: torch.nn.Module, demo_tokenizer: Any, policy: str) -> None:
    """With C larger than any expert's demand, nothing drops and the pass is bit-identical to the plain one."""
    tokenized = tokenize_texts(mixtral, demo_tokenizer, TEXTS)
    with torch.inference_mode():
        capped, layers = run_capped(mixtral, tokenized, functools.partial(decide, capacity_factor=64.0, policy=policy))
    assert all(layer.kept.all() for layer in layers)
    real = tokenized.batch["attention_mask"].bool()
    torch.testing.assert_close(capped[real], _logits(mixtral, tokenized)[real], rtol=0, atol=0)


def test_dropping_every_slot_of_one_expert_equals_zeroing_it(mixtral: torch.nn.Module, demo_tokenizer: Any) -> None:
    """A rule that drops every slot of expert 3 at every layer gives the logits of the model with expert 3's
    weights zeroed: a dropped slot contributes nothing, and nothing else changes."""
    tokenized = tokenize_texts(mixtral, demo_tokenizer, TEXTS)
    expert = 3

    def drop_expert(routed: LayerInput) -> LayerDecision:
        kept = routed.experts != expert
        return LayerDecision(routed.experts, np.where(kept, routed.weights, 0.0), kept, np.array([0]))

    with torch.inference_mode():
        dropped, layers = run_capped(mixtral, tokenized, drop_expert)
    assert any((layer.experts == expert).any() for layer in layers)  # the expert was really chosen somewhere
    blocks, _ = find_moe_blocks(mixtral, "mixtral")
    with contextlib_all(expert_zeroed(b.experts, expert, 8) for b in blocks):
        zeroed = _logits(mixtral, tokenized)
    real = tokenized.batch["attention_mask"].bool()
    torch.testing.assert_close(dropped[real], zeroed[real], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(dropped[real], _logits(mixtral, tokenized)[real])


def contextlib_all(managers: Any) -> Any:
    import contextlib

    stack = contextlib.ExitStack()
    for manager in managers:
        stack.enter_context(manager)
    return stack


@pytest.mark.parametrize("policy", ["position", "score"])
def test_capped_routing_matches_the_static_simulation_until_drops_change_the_input(
    mixtral: torch.nn.Module, demo_tokenizer: Any, policy: str
) -> None:
    """Layer 0 sees the same input as the plain pass, so its kept mask is the static simulation's. At the next
    layer, a token's router input differs only if some token at or before it in its sequence lost a slot."""
    result = counterfactual(mixtral, demo_tokenizer, TEXTS, 0.75, policy)
    static = simulate_capacity(result.plain, 0.75, policy=policy)
    first, second = result.layers
    np.testing.assert_array_equal(first.experts, result.plain.experts[0])
    np.testing.assert_array_equal(first.kept, static.kept[0])
    lost = ~first.kept.all(axis=1)
    sequence = result.tokens.sequence
    touched = np.zeros(len(lost), dtype=bool)  # some token at or before this one (same sequence) lost a slot
    for s in np.unique(sequence):
        rows = sequence == s
        touched[rows] = np.cumsum(lost[rows]) > 0
    same = np.isclose(second.logits, result.plain.logits[1], rtol=1e-5, atol=1e-5).all(axis=1)
    assert same[~touched].all()
    assert not same[touched].all()  # and the drops did change the routing after them
    assert lost.any()


def test_costs_are_zero_without_drops_and_positive_on_average_with_them(
    mixtral: torch.nn.Module, demo_tokenizer: Any
) -> None:
    """Δloss, KL and top-1 changes are exactly 0 when nothing drops; the loss columns are the model's own
    cross-entropy (checked against torch's), undefined at each sequence's last token."""
    roomy = counterfactual(mixtral, demo_tokenizer, TEXTS, 64.0)
    last = np.r_[roomy.tokens.sequence[1:] != roomy.tokens.sequence[:-1], True]
    assert np.isnan(roomy.plain_loss[last]).all() and (roomy.top1_changed[last] == -1).all()
    np.testing.assert_array_equal(roomy.delta_loss[~last], 0.0)
    np.testing.assert_array_equal(roomy.kl[~last], 0.0)
    assert (roomy.top1_changed[~last] == 0).all()
    tokenized = tokenize_texts(mixtral, demo_tokenizer, TEXTS[0])
    logits = _logits(mixtral, tokenized)[0]
    expected = torch.nn.functional.cross_entropy(logits[:-1], tokenized.batch["input_ids"][0, 1:], reduction="none")
    alone = counterfactual(mixtral, demo_tokenizer, TEXTS[0], 64.0)
    np.testing.assert_allclose(alone.plain_loss[:-1], expected.numpy(), rtol=1e-5, atol=1e-6)
    tight = counterfactual(mixtral, demo_tokenizer, TEXTS, 0.25)
    assert tight.dropped_slot_rate > 0.3
    assert (tight.kl[~last] >= 0).all() and tight.kl[~last].max() > 0


def test_top_k_what_if_matches_plain_top_k(mixtral: torch.nn.Module, demo_tokenizer: Any) -> None:
    """k' = k reproduces the model's own routing; k' = 1 routes every token to its most probable expert with
    weight 1 (Mixtral renormalises), and with capacity to spare changes the logits."""
    plain = counterfactual(mixtral, demo_tokenizer, TEXTS, 64.0).plain
    route = top_k_what_if(plain)
    assert route is not None
    index, weights = route(plain.probs[0].astype(np.float64), 2)
    np.testing.assert_array_equal(np.sort(index, axis=1), np.sort(plain.experts[0], axis=1))
    np.testing.assert_allclose(np.sort(weights, axis=1), np.sort(plain.weights[0], axis=1), rtol=1e-5)
    top1 = counterfactual(mixtral, demo_tokenizer, TEXTS, 64.0, top_k=1)
    np.testing.assert_array_equal(top1.layers[0].experts[:, 0], plain.probs[0].argmax(axis=1))
    assert top1.top_k == 1 and top1.mean_delta_loss != 0


def test_top_k_what_if_is_refused_where_routing_is_not_plain_top_k(demo_tokenizer: Any) -> None:
    """DeepSeek-V3 selects with a bias and group limit: k' would not be what it does, so it says so."""
    with pytest.raises(ValueError, match="does not pick plain top-k"):
        counterfactual(build_tiny_model("deepseek_v3"), demo_tokenizer, TEXTS, 1.0, top_k=1)


def test_families_it_cannot_run_on_say_why(demo_tokenizer: Any) -> None:
    """Llama 4's dense scores scale the experts' input: one sentence, not a traceback."""
    with pytest.raises(CappedUnsupported, match="llama4_text: the capacity-bound forward cannot run"):
        counterfactual(build_tiny_model("llama4_text"), demo_tokenizer, TEXTS, 1.0)


def _as_remote_code(model: torch.nn.Module) -> torch.nn.Module:
    """The same object, its class now from outside transformers, as trust_remote_code loads one whose config
    names a built-in model_type ("mixtral")."""
    from moe_core.capture import routers

    model.__class__ = type("FromTheHub", (type(model),), {"__module__": "transformers_modules.org.model.modeling"})
    routers._BLOCKS_CACHE.pop(model, None)  # found while it was transformers' class; a loaded one never was
    return model


def test_remote_code_naming_a_built_in_type_is_judged_by_its_own_experts(demo_tokenizer: Any) -> None:
    """Remote code whose config says "mixtral" is not given Mixtral's adapter row (routers.adapter_of): with fused
    experts called as experts(hidden, index, weights) it runs capacity-bound (with capacity to spare, the
    plain pass's losses); with one module per expert it is refused in a sentence before any pass."""
    fused = _as_remote_code(build_tiny_model("mixtral"))
    assert unsupported_reason(fused) == ""
    roomy = counterfactual(fused, demo_tokenizer, TEXTS, 64.0)
    np.testing.assert_allclose(roomy.capped_loss, roomy.plain_loss, atol=1e-5, equal_nan=True)
    per_module = _as_remote_code(build_tiny_model("mixtral"))
    experts = per_module.config.num_local_experts
    for block in find_moe_blocks(per_module, "mixtral")[0]:
        block.block.experts = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(experts))
    _as_remote_code(per_module)  # found again, with the new experts
    with pytest.raises(CappedUnsupported, match=r"mixtral: .* not called as experts"):
        counterfactual(per_module, demo_tokenizer, TEXTS, 1.0)


def test_switch_drops_on_top_of_its_own_capacity(demo_tokenizer: Any) -> None:
    """Switch (one-hot call): the model's own drops stay DROPPED and never run; a tight capacity drops more and
    moves the logits; capacity to spare leaves them unchanged."""
    switch = build_tiny_model("switch_transformers")
    roomy = counterfactual(switch, demo_tokenizer, TEXTS, 64.0)
    np.testing.assert_array_equal(np.nan_to_num(roomy.delta_loss), 0.0)
    tight = counterfactual(switch, demo_tokenizer, TEXTS, 0.1)
    assert tight.dropped_slot_rate > 0 and np.nanmax(np.abs(tight.delta_loss)) > 0
    own = roomy.plain.experts[0] == DROPPED  # layer 0 sees the plain input, so the model drops the same slots
    assert own.any()
    np.testing.assert_array_equal(tight.layers[0].experts == DROPPED, own)
    assert not any((layer.kept & (layer.experts == DROPPED)).any() for layer in tight.layers)


@pytest.mark.parametrize("group", ["sequence", "batch"])
def test_group_capacity_counts_real_tokens_only(mixtral: torch.nn.Module, demo_tokenizer: Any, group: str) -> None:
    """C = ceil(CF · k · T_g / E) with padding excluded: per text for "sequence", all real tokens for "batch"."""
    result = counterfactual(mixtral, demo_tokenizer, TEXTS, 1.0, group=group)
    lengths = np.bincount(result.tokens.sequence)
    sizes = lengths if group == "sequence" else [lengths.sum()]
    expected = [int(np.ceil(1.0 * 2 * size / 8)) for size in sizes]
    assert all(layer.capacity.tolist() == expected for layer in result.layers)
