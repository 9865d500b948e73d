"""Balance figures against hand-computed cases and against transformers' own loss functions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func as mixtral_balance_loss
from transformers.models.switch_transformers.modeling_switch_transformers import (
    load_balancing_loss_func as switch_balance_loss_func,
)
from transformers.models.switch_transformers.modeling_switch_transformers import router_z_loss_func

from moe_core.analyses.load import balance_frame, pooled_transformers_aux_loss
from moe_core.metrics import max_violation, router_first_choice, router_z_loss, transformers_balance_loss
from moe_core.traces.synthetic import random_trace, trace_from_choices
from moe_core.traces.types import DROPPED


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def test_balance_figures_by_hand() -> None:
    """4 tokens, E = 4, top-2, top-k counts (3, 2, 1, 2): CV = std/2, max/mean = 1.5, MaxVio = 0.5; Switch loss
    from f = (3, 1, 0, 0)/4 and P = the mean of the probs (0.5 on each of a token's two experts)."""
    routing = trace_from_choices([[0, 1], [0, 3], [1, 2], [0, 3]], num_experts=4)
    row = balance_frame(routing).iloc[0]
    assert row["cv"] == pytest.approx(np.std([3, 2, 1, 2]) / 2.0)
    assert row["max_over_mean"] == pytest.approx(1.5) and row["max_vio"] == pytest.approx(0.5)
    mean_prob = np.array([1.5, 1.0, 0.5, 1.0]) / 4
    assert row["switch_aux_loss"] == pytest.approx(4 * float((np.array([0.75, 0.25, 0, 0]) * mean_prob).sum()))


def test_balanced_router_scores_one_for_switch_and_k_for_transformers() -> None:
    """Every expert first choice once, uniform probs: Switch's loss is 1, MaxVio 0; transformers' is k = 1."""
    routing = trace_from_choices([[0], [1], [2], [3]], num_experts=4)
    routing = replace(routing, probs=np.full_like(routing.probs, 0.25))
    row = balance_frame(routing).iloc[0]
    assert row["switch_aux_loss"] == pytest.approx(1.0) and row["max_vio"] == 0.0 and row["cv"] == 0.0
    # equal logits: softmax is uniform and its top-k ties; whatever it picks, f sums to k and P is 1/E
    assert transformers_balance_loss([np.zeros((4, 4))], top_k=2) == pytest.approx(2.0)


def test_max_violation_is_deepseeks_formula() -> None:
    """Loads (6, 2, 2, 2): mean 3, (6 - 3) / 3 = 1; nothing routed is undefined, not 0."""
    assert max_violation(np.array([6, 2, 2, 2])) == pytest.approx(1.0)
    assert np.isnan(max_violation(np.zeros(4)))


def test_dropped_first_slot_counts_for_the_routers_argmax() -> None:
    """A token the model dropped still chose an expert: the argmax of its probs, before the capacity mask."""
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    np.testing.assert_array_equal(router_first_choice(np.array([0, DROPPED, DROPPED]), probs), [0, 1, 0])


def test_switch_loss_with_dropped_tokens_equals_transformers_switch_loss() -> None:
    """Switch-style trace (top-1, capacity 2 per expert, so two tokens are dropped): our loss equals transformers'
    Switch load_balancing_loss_func given the argmax of the logits, as SwitchTransformers passes it (pre-mask).
    Skipping the dropped tokens, as before, gives a smaller loss."""
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((6, 3)) + np.array([2.0, 0.0, 0.0])  # expert 0 is popular: over capacity
    probs = _softmax(logits)
    choice = probs.argmax(axis=-1)
    experts = choice.copy()
    for expert in range(3):
        experts[np.flatnonzero(choice == expert)[2:]] = DROPPED  # Switch keeps the first `capacity` tokens
    assert (experts == DROPPED).sum() >= 1
    routing = trace_from_choices(experts[:, None], num_experts=3)
    routing = replace(routing, logits=logits[None].astype(np.float32), probs=probs[None].astype(np.float32))
    expected = switch_balance_loss_func(torch.tensor(probs)[None], torch.tensor(choice)[None]).item()
    row = balance_frame(routing).iloc[0]
    assert row["switch_aux_loss"] == pytest.approx(expected, rel=1e-6)
    kept = experts != DROPPED
    understated = 3 * (np.bincount(experts[kept], minlength=3) / kept.sum() * probs.mean(axis=0)).sum()
    assert understated < expected


def test_transformers_loss_per_layer_equals_their_function_on_the_trace_logits() -> None:
    """Each layer's transformers_aux_loss is transformers' load_balancing_loss_func on that layer's logits; the
    pooled figure is the function on every layer's logits at once (what Mixtral training adds to the loss)."""
    routing = random_trace([30, 20], num_experts=8, top_k=2, num_layers=3, seed=4)
    layers = tuple(torch.tensor(layer) for layer in routing.logits)
    frame = balance_frame(routing)
    for row, logits in enumerate(layers):
        expected = mixtral_balance_loss((logits,), num_experts=8, top_k=2).item()
        assert frame["transformers_aux_loss"].iloc[row] == pytest.approx(expected, rel=1e-5)
    pooled = mixtral_balance_loss(layers, num_experts=8, top_k=2).item()
    assert pooled_transformers_aux_loss(routing) == pytest.approx(pooled, rel=1e-5)
    assert pooled != pytest.approx(frame["transformers_aux_loss"].mean(), rel=1e-6)  # pooled, not averaged


def test_z_loss_equals_st_moes_as_transformers_computes_it() -> None:
    """Mean over tokens of logsumexp(logits)²: transformers' router_z_loss_func on the same logits; a hand
    case: logits (0, 0) give log(2)² per token."""
    logits = np.random.default_rng(2).standard_normal((7, 4)) * 3
    expected = router_z_loss_func(torch.tensor(logits)[None]).item()
    assert router_z_loss(logits) == pytest.approx(expected, rel=1e-9)
    assert router_z_loss(np.zeros((3, 2))) == pytest.approx(np.log(2) ** 2)
    routing = random_trace(12, num_experts=4, top_k=1, seed=5)
    assert balance_frame(routing)["z_loss"].iloc[0] == pytest.approx(router_z_loss(routing.logits[0]))


def test_switch_loss_on_a_tiny_switch_model_that_drops_tokens(demo_tokenizer) -> None:
    """A random-init switch_transformers with capacity 4 drops most tokens itself (DROPPED in the trace); per
    layer, our Switch loss equals transformers' own, given the router's logits and their pre-mask argmax as
    SwitchTransformers' _unpack_router_logits passes them."""
    from moe_core.capture.record import trace
    from moe_core.proof.tiny_models import build_tiny_model

    routing = trace(build_tiny_model("switch_transformers"), demo_tokenizer, "The quick brown fox jumps. " * 8)
    assert (routing.experts == DROPPED).any()
    frame = balance_frame(routing)
    for row, logits in enumerate(routing.logits):
        logits = torch.tensor(logits, dtype=torch.float64)[None]
        expected = switch_balance_loss_func(logits.softmax(dim=-1), logits.argmax(dim=-1)).item()
        assert frame["switch_aux_loss"].iloc[row] == pytest.approx(expected, rel=1e-5)
