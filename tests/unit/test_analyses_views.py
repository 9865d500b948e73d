"""Gate, load, flow and capacity frames on hand-built traces whose answers are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moe_core.analyses.capacity import (
    LayerSlots,
    capacity_table,
    drop_curve,
    drop_flags,
    fill_after,
    fill_frame,
    first_drop,
    serving_order,
)
from moe_core.analyses.flow import flow_pair, transition_counts, transition_frame
from moe_core.analyses.gates import entropy_frame, gate_heatmap, routing_entropy, token_distribution
from moe_core.analyses.load import (
    coactivation_frame,
    domain_share_frame,
    load_frame,
)
from moe_core.capacity.simulate import simulate_capacity
from moe_core.traces.synthetic import trace_from_choices
from moe_core.traces.types import DROPPED

# ---- gates -------------------------------------------------------------------------------------------------


def test_entropy_of_known_distributions() -> None:
    """Uniform over 4 is 2 bits, one-hot is 0, (1/2, 1/4, 1/4) is 1.5 bits; sigmoid scores are normalised."""
    probs = np.array([[0.25] * 4, [1.0, 0, 0, 0], [0.5, 0.25, 0.25, 0.0], [0.9, 0.9, 0.9, 0.9]])
    np.testing.assert_allclose(routing_entropy(probs), [2.0, 0.0, 1.5, 2.0])


def test_heatmap_marks_chosen_ranks() -> None:
    """Each token's chosen experts carry rank 1 and 2, all others 0; probs are the trace's."""
    routing = trace_from_choices([[2, 0], [1, 3]], [[0.7, 0.3], [0.6, 0.4]], num_experts=4)
    frame = gate_heatmap(routing, 0)
    ranks = frame.pivot(index="token", columns="expert", values="rank").to_numpy()
    np.testing.assert_array_equal(ranks, [[2, 0, 1, 0], [0, 1, 0, 2]])
    np.testing.assert_allclose(frame["prob"].to_numpy().reshape(2, 4), routing.probs[0])


def test_token_distribution_has_combine_weights() -> None:
    """The chosen token's weight column holds its combine weights at its experts and 0 elsewhere."""
    routing = trace_from_choices([[2, 0], [1, 3]], [[0.7, 0.3], [0.6, 0.4]], num_experts=4)
    np.testing.assert_allclose(token_distribution(routing, 0, 1)["weight"], [0, 0.6, 0, 0.4])


def test_entropy_frame_per_token() -> None:
    """One entropy per token: a token sure of one expert reads 0 bits, an even split of two reads 1 bit."""
    routing = trace_from_choices([[0, 1], [2, 3]], [[1.0, 0.0], [0.5, 0.5]], num_experts=4)
    np.testing.assert_allclose(entropy_frame(routing, 0)["entropy"], [0.0, 1.0])


# ---- load --------------------------------------------------------------------------------------------------


def _load_trace():
    # 4 tokens, E=4, k=2. top-1: [0, 0, 1, 0] -> counts (3, 1, 0, 0); all slots: 0x3, 1x2, 2x1, 3x2.
    return trace_from_choices([[0, 1], [0, 3], [1, 2], [0, 3]], num_experts=4)


def test_load_counts_top1_and_topk() -> None:
    """Counts per expert by hand, against uniform lines T/E = 1 and k·T/E = 2."""
    frame = load_frame(_load_trace())
    assert frame["top1"].tolist() == [3, 1, 0, 0] and frame["topk"].tolist() == [3, 2, 1, 2]
    assert set(frame["top1_uniform"]) == {1.0} and set(frame["topk_uniform"]) == {2.0}


# ---- flow --------------------------------------------------------------------------------------------------


def test_transition_counts_by_hand() -> None:
    """Top-1 at layer 0: (0, 0, 1); at layer 1: (2, 2, 0) -> counts[0, 2] = 2, counts[1, 0] = 1."""
    routing = trace_from_choices([[[0], [0], [1]], [[2], [2], [0]]], num_experts=3)
    counts = transition_counts(routing, 0)
    expected = np.zeros((3, 3), dtype=int)
    expected[0, 2], expected[1, 0] = 2, 1
    np.testing.assert_array_equal(counts, expected)
    frame = transition_frame(routing, 0)
    assert frame.query("source == 0 and target == 2")["share"].item() == 1.0


def test_flow_pair_uses_previous_pair_at_the_end() -> None:
    """Last layer -> the pair before it; a single MoE layer -> None."""
    two = trace_from_choices([[[0]], [[1]]], num_experts=2)
    assert flow_pair(two, 1) == 0 and flow_pair(two, 0) == 0
    assert flow_pair(trace_from_choices([[0]], num_experts=2), 0) is None


# ---- capacity ----------------------------------------------------------------------------------------------


def _capacity_case():
    # 6 tokens, E=2, k=1, all to expert 0 except token 4. CF=1 -> C = ceil(1·1·6/2) = 3.
    # position order: tokens 0,1,2 take expert 0's three slots; token 3 and 5 are dropped; token 4 fits expert 1.
    routing = trace_from_choices([[0], [0], [0], [0], [1], [0]], num_experts=2)
    return routing, simulate_capacity(routing, 1.0)


def test_capacity_table_and_fill() -> None:
    """C = 3; expert 0 keeps 3 of 5, expert 1 keeps 1; 2 of 6 slots dropped."""
    routing, result = _capacity_case()
    slots = LayerSlots.simulated(routing, result, 0)
    table = capacity_table(routing.model.moe_layers, [slots], result.capacity_per_layer).iloc[0]
    assert (table["capacity"], table["busiest_demand"], table["dropped_slots"]) == (3, 5, 2)
    assert table["drop_rate"] == pytest.approx(2 / 6)
    fill = fill_frame(slots, int(result.capacity[0].sum()))
    assert fill["kept"].tolist() == [3, 1] and fill["dropped"].tolist() == [2, 0] and set(fill["capacity"]) == {3}
    assert fill["kept"].tolist() == result.fill[0].tolist()  # the same numbers the simulation counted


def _flags(routing, result) -> dict[str, list[bool]]:
    return {kind: flags.tolist() for kind, flags in drop_flags(LayerSlots.simulated(routing, result, 0)).items()}


def test_drop_flags() -> None:
    """Tokens 3 and 5 lose their only slot: fully dropped, and so their first choice; with k=2, a lost second
    choice is 'drop2' alone."""
    routing, result = _capacity_case()
    lost = [False, False, False, True, False, True]
    assert _flags(routing, result) == {"dropall": lost, "drop1": lost, "drop2": [False] * 6, "dropany": lost}
    # k=2, E=2, T=2, CF=0.5 -> C = 1: token 0 takes e0 and e1 (rank 1 first for both tokens: t0->e0, t1->e0
    # dropped), then rank 2: t0->e1 kept, t1->e1 dropped.
    pair = trace_from_choices([[0, 1], [0, 1]], num_experts=2)
    both = [False, True]
    assert _flags(pair, simulate_capacity(pair, 0.5)) == {"dropall": both, "drop1": both, "drop2": both,
                                                          "dropany": both}  # fmt: skip
    mixed = trace_from_choices([[0, 1], [1, 0]], num_experts=2)  # C = 1: both first choices fit, seconds dropped
    assert _flags(mixed, simulate_capacity(mixed, 0.5)) == {"dropall": [False] * 2, "drop1": [False] * 2,
                                                            "drop2": [True] * 2, "dropany": [True] * 2}  # fmt: skip


def test_drop_curve_bins() -> None:
    """With 3 bins of 2 positions: drops at positions 3 and 5 give rates 0, 1/2, 1/2."""
    routing, result = _capacity_case()
    curve = drop_curve(routing.tokens.position, LayerSlots.simulated(routing, result, 0), bins=3)
    assert curve["start"].tolist() == [0, 2, 4] and curve["tokens"].tolist() == [2, 2, 2]
    assert curve["slots"].tolist() == [2, 2, 2]
    np.testing.assert_allclose(curve["slot_drop_rate"], [0, 0.5, 0.5])
    np.testing.assert_allclose(curve["token_drop_rate"], [0, 0.5, 0.5])


def test_step_through_fills_then_refuses() -> None:
    """After 3 slots expert 0 is full; the first refusal is slot 4 (token 3); all slots give the final fill."""
    routing, result = _capacity_case()
    order = serving_order(routing, result, 0)
    assert order.token.tolist() == [0, 1, 2, 3, 4, 5] and order.capacity == 3
    assert fill_after(order, 3, 2)["kept"].tolist() == [3, 0]
    assert first_drop(order) == 3
    final = fill_after(order, len(order.token), 2)
    assert final["kept"].tolist() == result.fill[0].tolist() and final["dropped"].tolist() == [2, 0]


def test_step_through_score_order() -> None:
    """Score policy serves the most confident first: the least confident token is the one dropped."""
    routing = trace_from_choices([[0], [0]], [[0.6], [0.9]], num_experts=2)  # C = ceil(0.5·1·2/2) = 1
    result = simulate_capacity(routing, 0.5, policy="score")
    order = serving_order(routing, result, 0)
    assert order.token.tolist() == [1, 0] and order.kept.tolist() == [True, False]
    assert math.isclose(float(result.capacity[0, 0]), 1.0)


def test_coactivation_is_the_share_of_i_tokens_also_routed_to_j() -> None:
    """Hand case, E = 3, top-2: t0 [0,1], t1 [0,1], t2 [0,2], t3 [1,2], t4 [2,D] (one slot dropped).

    Routed to: e0 3 tokens, e1 3, e2 3. Both: (0,1) 2, (0,2) 1, (1,2) 1. So P(1|0) = 2/3, P(2|0) = 1/3,
    P(0|1) = 2/3, P(2|1) = 1/3, P(0|2) = 1/3, P(1|2) = 1/3. The diagonal is left out.
    """
    routing = trace_from_choices([[0, 1], [0, 1], [0, 2], [1, 2], [2, DROPPED]], num_experts=3)
    frame = coactivation_frame(routing, 0).set_index(["source", "target"])
    assert len(frame) == 6
    expected = {(0, 1): 2 / 3, (0, 2): 1 / 3, (1, 0): 2 / 3, (1, 2): 1 / 3, (2, 0): 1 / 3, (2, 1): 1 / 3}
    for pair, share in expected.items():
        assert frame.loc[pair, "share"] == pytest.approx(share)
    assert frame.loc[(0, 1), "count"] == 2 and frame.loc[(2, 1), "count"] == 1


def test_domain_share_is_each_experts_share_of_the_domains_slots() -> None:
    """Two texts, E = 4, top-2. 'code': t0 [0,1], t1 [0,2] -> expert 0 has 2 of 4 slots, 1 and 2 one each.
    'prose': t2 [3,D] -> one routed slot, all to expert 3 (the dropped slot is not counted)."""
    routing = trace_from_choices([[0, 1], [0, 2], [3, DROPPED]], sequence_lengths=[2, 1], num_experts=4)
    frame = domain_share_frame(routing, 0, ["code", "prose"]).set_index(["domain", "expert"])
    assert frame.loc["code", "share"].tolist() == [0.5, 0.25, 0.25, 0.0]
    assert frame.loc["prose", "share"].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert frame.loc[("code", 0), "slots"] == 4 and frame.loc[("prose", 3), "slots"] == 1
    assert set(frame["uniform"]) == {0.25}
    with pytest.raises(ValueError, match="2 texts"):
        domain_share_frame(routing, 0, ["code"])


def test_phase_load_splits_the_prompt_from_the_models_writing() -> None:
    """Tokens 0-2 are the prompt (experts 0/1, 0/1, 2/1), tokens 3-4 the model's (3/0, 3/2): per phase, slots per
    expert and their share of the phase's slots, counted by hand; a trace without phases gives an empty frame."""
    from dataclasses import replace

    from moe_core.analyses.load import phase_load_frame

    routing = trace_from_choices([[0, 1], [0, 1], [2, 1], [3, 0], [3, 2]], num_experts=4)
    assert phase_load_frame(routing, 0).empty
    frame = phase_load_frame(replace(routing, generated_from=(3,)), 0)
    prompt, written = (frame[frame["phase"] == p].set_index("expert") for p in ("prompt", "generated"))
    assert prompt["slots"].tolist() == [2, 3, 1, 0] and written["slots"].tolist() == [1, 0, 1, 2]
    assert prompt["share"].tolist() == pytest.approx([2 / 6, 3 / 6, 1 / 6, 0])
    assert written["share"].tolist() == pytest.approx([1 / 4, 0, 1 / 4, 2 / 4])
