"""Capacity simulation: hand-computed cases for each rule, and the vectorised code against the plain-loop oracle."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from moe_core.capacity.simulate import (
    CAPACITY_FACTOR_MAX,
    CapacityResult,
    expert_capacity,
    expert_choice,
    score_order,
    simulate_capacity,
    simulate_capacity_reference,
    top1_probability,
)
from moe_core.traces.synthetic import random_trace, trace_from_choices
from moe_core.traces.types import DROPPED

T, F = True, False
D = DROPPED

# One sequence, T=4, E=4, k=2, CF=1 → C = ceil(1·2·4/4) = 2. Top-1 weights 0.5, 0.6, 0.9, 0.7.
RANKED_CHOICES = [[0, 1], [1, 0], [0, 1], [0, 2]]
RANKED_WEIGHTS = [[0.5, 0.5], [0.6, 0.4], [0.9, 0.1], [0.7, 0.3]]


def ranked_trace():
    return trace_from_choices(RANKED_CHOICES, weights=RANKED_WEIGHTS, num_experts=4)


def assert_same_result(actual: CapacityResult, expected: CapacityResult) -> None:
    for name in CapacityResult.__dataclass_fields__:
        a, b = getattr(actual, name), getattr(expected, name)
        if isinstance(b, np.ndarray):
            assert (a.shape, a.dtype) == (b.shape, b.dtype), name
            np.testing.assert_array_equal(a, b, err_msg=name)  # NaN == NaN here
        else:
            assert a == b, name


def test_position_policy_serves_rank_one_in_token_order_then_rank_two():
    """Position policy: later tokens' rank-1 slots beat earlier tokens' rank-2 slots, each in token order."""
    # C = 2. Rank 1: t0→e0 (1), t1→e1 (1), t2→e0 (2), t3→e0 full: drop.
    # Rank 2: t0→e1 (2), t1→e0 full: drop, t2→e1 full: drop, t3→e2 (1).
    result = simulate_capacity(ranked_trace(), 1.0, policy="position")
    assert result.capacity.tolist() == [[2]]
    assert result.kept[0].tolist() == [[T, T], [T, F], [T, F], [F, T]]
    assert not result.fully_dropped.any()


def test_score_policy_serves_highest_top1_weight_first():
    """Score policy: same trace, tokens served by top-1 weight, so a different token loses (t0 entirely)."""
    # Serve order t2 (0.9), t3 (0.7), t1 (0.6), t0 (0.5); C = 2.
    # Rank 1: t2→e0 (1), t3→e0 (2), t1→e1 (1), t0→e0 full: drop.
    # Rank 2: t2→e1 (2), t3→e2 (1), t1→e0 full: drop, t0→e1 full: drop.
    result = simulate_capacity(ranked_trace(), 1.0, policy="score")
    assert result.kept[0].tolist() == [[F, F], [T, F], [T, T], [T, T]]
    assert result.fully_dropped[0].tolist() == [T, F, F, F]


def test_score_policy_breaks_ties_by_position():
    """Score policy: equal top-1 weights are served in token order."""
    # T=3, E=3, k=1, CF=1 → C = 1, all to e0. Serve order t1 (0.9), t2 (0.9, tie → after t1), t0 (0.5).
    trace = trace_from_choices([[0], [0], [0]], weights=[[0.5], [0.9], [0.9]], num_experts=3)
    result = simulate_capacity(trace, 1.0, policy="score")
    assert result.kept[0, :, 0].tolist() == [F, T, F]


def test_fill_demand_and_rates_follow_the_kept_mask():
    """Fill, demand, and the by-position rates of the position-policy hand case."""
    # Kept [[T, T], [T, F], [T, F], [F, T]] for choices [[0, 1], [1, 0], [0, 1], [0, 2]].
    result = simulate_capacity(ranked_trace(), 1.0, policy="position")
    assert result.demand.tolist() == [[4, 3, 1, 0]]
    assert result.fill.tolist() == [[2, 2, 1, 0]]
    assert result.drop_rate_by_position.tolist() == [[0.0, 0.5, 0.5, 0.5]]
    assert result.dropped_token_rate_by_position.tolist() == [[0.0, 0.0, 0.0, 0.0]]
    assert result.drop_rate.tolist() == [3 / 8]


def test_expert_capacity_formula():
    """C = ceil(CF · k · T / E)."""
    assert expert_capacity(1.0, 2, 6, 2) == 6
    assert expert_capacity(0.5, 2, 7, 4) == 2  # ceil(1.75)
    assert expert_capacity(2.0, 1, 3, 4) == 2  # ceil(1.5)


def test_expert_capacity_respects_min_capacity():
    """C never goes below min_capacity."""
    assert expert_capacity(0.01, 1, 4, 8) == 1  # ceil(0.005) = 1
    assert expert_capacity(0.01, 1, 4, 8, min_capacity=4) == 4
    assert expert_capacity(1.0, 1, 0, 8) == 1  # an empty group still gets min_capacity
    assert expert_capacity(2.0, 2, 8, 4, min_capacity=3) == 8  # min_capacity below the formula: no effect


def test_expert_capacity_is_exact_despite_float_error():
    """Products that land on an integer are not rounded up by float error."""
    assert expert_capacity(1.25, 2, 8, 4) == 5
    assert 1.1 * 1 * 50 / 5 > 11  # float gives 11.000000000000002 here ...
    assert expert_capacity(1.1, 1, 50, 5) == 11  # ... but C is 11, not 12
    assert expert_capacity(1.1, 2, 25, 5) == 11


def test_min_capacity_keeps_slots_the_formula_would_drop():
    """Raising min_capacity above the formula's C keeps more slots."""
    # T=4, E=2, k=1, CF=0.25 → ceil(0.5) = 1: only t0 kept on e0. min_capacity=3 → C = 3.
    trace = trace_from_choices([[0], [0], [0], [0]], num_experts=2)
    assert simulate_capacity(trace, 0.25).kept[0, :, 0].tolist() == [T, F, F, F]
    assert simulate_capacity(trace, 0.25, min_capacity=3).kept[0, :, 0].tolist() == [T, T, T, F]


def test_batch_group_shares_one_capacity_across_sequences():
    """group="batch" pools the budget over the batch; "sequence" gives each sequence its own."""
    # Two sequences of 2 tokens, E=2, k=1, CF=1. Choices: seq0 = e0, e0; seq1 = e0, e1.
    # sequence: C = ceil(1·1·2/2) = 1 each → seq0: t0 kept, t1 dropped; seq1: t2, t3 kept (fresh budget).
    # batch:    C = ceil(1·1·4/2) = 2      → t0, t1 fill e0, t2 dropped, t3 kept.
    trace = trace_from_choices([[0], [0], [0], [1]], sequence_lengths=[2, 2], num_experts=2)
    by_sequence = simulate_capacity(trace, 1.0, group="sequence")
    by_batch = simulate_capacity(trace, 1.0, group="batch")
    assert by_sequence.capacity.tolist() == [[1, 1]]
    assert by_sequence.kept[0, :, 0].tolist() == [T, F, T, T]
    assert by_batch.capacity.tolist() == [[2]]
    assert by_batch.kept[0, :, 0].tolist() == [T, T, F, T]


def test_uneven_sequences_get_their_own_capacity():
    """Each sequence's C comes from its own length; capacity_per_layer reports the largest."""
    # E=2, k=1, CF=1: lengths 4 and 2 → C = 2 and 1.
    trace = trace_from_choices([[0]] * 6, sequence_lengths=[4, 2], num_experts=2)
    result = simulate_capacity(trace, 1.0)
    assert result.group_sizes.tolist() == [4, 2]
    assert result.capacity.tolist() == [[2, 1]]
    assert result.capacity_per_layer.tolist() == [2]
    assert result.kept[0, :, 0].tolist() == [T, T, F, F, T, F]


def test_model_dropped_slots_consume_no_capacity_and_count_in_no_rate():
    """DROPPED slots are not assignments: never kept, not in demand or fill, and outside both rates."""
    # T=3, E=2, k=2, CF=0.5 → C = ceil(0.5·2·3/2) = 2. Choices: t0 (e0, D), t1 (e0, D), t2 (e0, e1).
    # Rank 1: t0→e0 (1), t1→e0 (2), t2→e0 full: drop. Rank 2: t0, t1 nothing, t2→e1 (1).
    trace = trace_from_choices([[0, D], [0, D], [0, 1]], num_experts=2)
    result = simulate_capacity(trace, 0.5)
    assert result.kept[0].tolist() == [[T, F], [T, F], [F, T]]
    assert result.demand.tolist() == [[3, 1]]
    assert result.fill.tolist() == [[2, 1]]
    assert result.drop_rate_by_position.tolist() == [[0.0, 0.0, 0.5]]


def test_token_the_model_dropped_entirely_is_not_fully_dropped_by_capacity():
    """A token with no assignments is not "fully dropped", and its position's rates are NaN, not 0."""
    trace = trace_from_choices([[D], [0], [0]], num_experts=2)  # C = ceil(1·1·3/2) = 2
    result = simulate_capacity(trace, 1.0)
    assert result.kept[0, :, 0].tolist() == [F, T, T]
    assert result.fully_dropped[0].tolist() == [F, F, F]
    assert math.isnan(result.drop_rate_by_position[0, 0])
    assert math.isnan(result.dropped_token_rate_by_position[0, 0])


def random_case(seed: int):
    """A random trace and settings: uneven sequences, model drops, tied weights, a range of E, k, CF."""
    rng = np.random.default_rng(seed)
    num_experts = int(rng.choice([2, 3, 4, 8, 16]))
    top_k = int(rng.integers(1, min(num_experts, 4) + 1))
    lengths = rng.integers(1, 40, size=int(rng.integers(1, 5))).tolist()
    trace = random_trace(lengths, num_experts, top_k, num_layers=int(rng.integers(1, 4)), seed=seed)
    experts = trace.experts.copy()
    experts[rng.random(experts.shape) < 0.1] = DROPPED
    weights = np.round(trace.weights * 4) / 4  # coarse weights, so the score policy meets many ties
    trace = trace_from_choices(experts, weights=weights, sequence_lengths=lengths, num_experts=num_experts)
    settings = {
        "capacity_factor": float(rng.choice([0.1, 0.25, 0.5, 0.75, 1.0, 1.1, 1.25, 2.0])),
        "policy": str(rng.choice(["position", "score"])),
        "group": str(rng.choice(["sequence", "batch"])),
        "min_capacity": int(rng.choice([1, 1, 2])),
    }
    return trace, settings


@pytest.mark.parametrize("seed", range(60))
def test_vectorised_matches_reference_on_random_traces(seed):
    """simulate_capacity gives exactly the reference result on random traces and settings."""
    trace, settings = random_case(seed)
    assert_same_result(simulate_capacity(trace, **settings), simulate_capacity_reference(trace, **settings))


@pytest.mark.parametrize("policy", ["position", "score"])
@pytest.mark.parametrize("group", ["sequence", "batch"])
def test_vectorised_matches_reference_for_every_setting(policy, group):
    """Every policy × group combination agrees with the reference on one multi-layer trace."""
    trace = random_trace([50, 17, 33], num_experts=8, top_k=2, num_layers=3, seed=7)
    settings = {"capacity_factor": 0.75, "policy": policy, "group": group}
    assert_same_result(simulate_capacity(trace, **settings), simulate_capacity_reference(trace, **settings))


@pytest.mark.parametrize("policy", ["position", "score"])
def test_vectorised_matches_reference_with_more_keys_than_16_bits(policy):
    """Many (layer, group, expert) keys (76,800: 17 bits of the packed integer) still match the reference."""
    trace = random_trace([3, 5, 2] * 100, num_experts=255, top_k=2, seed=1)  # 1 · 300 · 256 = 76,800 keys
    settings = {"capacity_factor": 0.5, "policy": policy}
    result = simulate_capacity(trace, **settings)
    assert not result.kept.all()
    assert_same_result(result, simulate_capacity_reference(trace, **settings))


def test_vectorised_matches_reference_on_nan_top1_weights():
    """NaN top-1 weights are served last under the score policy, in both implementations."""
    trace = trace_from_choices([[0], [0], [0]], weights=[[np.nan], [0.2], [0.1]], num_experts=3)
    result = simulate_capacity(trace, 1.0, policy="score")  # C = 1: only the highest weight, t1, is kept
    assert result.kept[0, :, 0].tolist() == [F, T, F]
    assert_same_result(result, simulate_capacity_reference(trace, 1.0, policy="score"))


def test_empty_trace_gives_empty_result():
    """A trace with no tokens yields empty arrays rather than an error."""
    trace = random_trace([0], num_experts=4, top_k=2)
    for simulate in (simulate_capacity, simulate_capacity_reference):
        result = simulate(trace, 1.0, policy="score")
        assert result.kept.shape == (1, 0, 2)
        assert result.drop_rate_by_position.shape == (1, 0)
        assert result.capacity_per_layer.tolist() == [1]


def test_position_policy_drops_towards_the_end_of_each_sequence():
    """With CF < 1 the position policy drops late tokens far more than early ones (OpenMoE's effect)."""
    trace = random_trace([256] * 4, num_experts=8, top_k=2, num_layers=2, seed=3)
    rate = simulate_capacity(trace, 0.75, policy="position").drop_rate_by_position.mean(axis=0)
    first, last = rate[:64].mean(), rate[-64:].mean()
    assert last > 0.4
    assert last > 3 * first


def test_score_policy_spreads_drops_over_positions():
    """On the same trace the score policy does not concentrate drops at the end the way position does."""
    trace = random_trace([256] * 4, num_experts=8, top_k=2, num_layers=2, seed=3)
    rate = simulate_capacity(trace, 0.75, policy="score").drop_rate_by_position.mean(axis=0)
    assert abs(rate[-64:].mean() - rate[:64].mean()) < 0.1


@pytest.mark.parametrize("capacity_factor", [0, -1.0, math.nan, math.inf, CAPACITY_FACTOR_MAX * 2, "1.0", True])
def test_invalid_capacity_factor_is_rejected_with_the_valid_range(capacity_factor):
    """A capacity factor outside (0, 64] (or not a number) raises ValueError naming the valid range."""
    with pytest.raises(ValueError, match=r"capacity_factor must be a number in \(0, 64\]"):
        simulate_capacity(ranked_trace(), capacity_factor)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"policy": "topk"}, "policy must be one of position, score"),
        ({"group": "token"}, "group must be one of sequence, batch"),
        ({"min_capacity": 0}, "min_capacity must be an integer >= 1"),
        ({"min_capacity": 1.5}, "min_capacity must be an integer >= 1"),
    ],
)
def test_invalid_settings_are_rejected(settings, message):
    """Unknown policy or group, or min_capacity < 1, raise ValueError saying what is valid."""
    for simulate in (simulate_capacity, simulate_capacity_reference):
        with pytest.raises(ValueError, match=message):
            simulate(ranked_trace(), 1.0, **settings)


def test_out_of_range_expert_ids_are_rejected():
    """Expert ids outside [0, E) other than DROPPED raise ValueError instead of corrupting the counts."""
    trace = trace_from_choices([[0], [3]], num_experts=4)
    bad = trace.__class__(**{**trace.__dict__, "experts": np.array([[[0], [-2]]])})
    with pytest.raises(ValueError, match=r"trace.experts must be in \[0, 4\)"):
        simulate_capacity(bad, 1.0)


def test_vectorised_matches_reference_past_32_bit_packing():
    """Past 32 bits of (key, serving number) the slots pack into 64 bits; the answer is still the reference's."""
    trace = random_trace([1] * 20_000, num_experts=3, top_k=2, seed=2)  # 20,000 · 4 keys (17 bits) · 40,000 slots
    settings = {"capacity_factor": 0.75, "group": "sequence"}
    assert_same_result(simulate_capacity(trace, **settings), simulate_capacity_reference(trace, **settings))


def test_score_policy_on_float64_probs_ties_zero_signs_and_puts_nan_with_minus_inf():
    """Float64 priorities take the ranking path: 0.0 ties -0.0, NaN ties -inf, and both sort after every number."""
    probs = np.array([[-np.inf], [0.0], [np.nan], [-0.0], [0.3], [0.3]], dtype=np.float64)
    trace = trace_from_choices([[0]] * 6, num_experts=1)
    trace = dataclasses.replace(trace, probs=probs[None])
    # Served: t4, t5 (0.3, ties by position), t1, t3 (0.0 = -0.0), t0, t2 (-inf = NaN). C = 6 keeps all, so
    # check the order itself, then a C = 3 cut (CF = 0.5): t4, t5, t1 kept.
    assert score_order(top1_probability(trace.probs)).tolist() == [[4, 5, 1, 3, 0, 2]]
    result = simulate_capacity(trace, 0.5, policy="score")
    assert result.kept[0, :, 0].tolist() == [F, T, F, F, T, T]
    assert_same_result(result, simulate_capacity_reference(trace, 0.5, policy="score"))
    assert score_order(probs[None, :, 0].astype(np.float32)).tolist() == [[4, 5, 1, 3, 0, 2]]


def test_score_policy_ranks_by_raw_top1_probability_not_renormalised_weights():
    """Top-1 routing renormalises every weight to 1.0, so weights cannot rank tokens; the raw probability can.
    T=3, E=2, k=1, CF=1 → C = ceil(3/2) = 2, all to e0 with raw top-1 probabilities 0.55, 0.9, 0.7:
    served t1, t2, t0, so t0 (the least confident) is the one dropped, not t2 (the last)."""
    trace = trace_from_choices([[0], [0], [0]], num_experts=2)
    probs = np.array([[[0.55, 0.45], [0.9, 0.1], [0.7, 0.3]]], dtype=np.float32)
    trace = dataclasses.replace(trace, probs=probs)
    assert trace.weights[0, :, 0].tolist() == [1.0, 1.0, 1.0]
    for simulate in (simulate_capacity, simulate_capacity_reference):
        result = simulate(trace, 1.0, policy="score")
        assert result.order[0].tolist() == [1, 2, 0]
        assert result.kept[0, :, 0].tolist() == [F, T, T]
    assert simulate_capacity(trace, 1.0, policy="position").kept[0, :, 0].tolist() == [T, T, F]


def test_reversed_control_drops_the_first_tokens():
    """The reversed serving order (a control) moves the drops from the end to the start of the text."""
    trace = trace_from_choices([[0], [0], [0], [0]], num_experts=2)  # C = ceil(1·4/2) = 2
    for simulate in (simulate_capacity, simulate_capacity_reference):
        assert simulate(trace, 1.0, policy="reversed").kept[0, :, 0].tolist() == [F, F, T, T]


def test_expert_choice_takes_each_experts_top_c_tokens_per_group():
    """Hand case: 2 groups of 3 tokens, E=2, C=2 per group; each expert takes its two highest-probability tokens
    of each group (ties by position), so a token may get 0, 1 or 2 experts."""
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5], [0.7, 0.3]])
    group_index = np.array([0, 0, 0, 1, 1, 1])
    taken = expert_choice(probs, group_index, np.array([2, 2]))
    # Group 0: e0 takes t0 (0.9), t1 (0.6, tie with t2 → position); e1 takes t1, t2 (0.4 each) over t0 (0.1).
    # Group 1: e0 takes t5 (0.7), t4 (0.5); e1 takes t3 (0.8), t4 (0.5).
    assert taken.tolist() == [[T, F], [T, T], [F, T], [F, T], [T, T], [T, F]]


def test_interleaved_sequence_ids_are_grouped_like_the_reference():
    """Tokens need not come sequence by sequence: each sequence id is still its own capacity group."""
    trace = random_trace([6, 6], num_experts=2, top_k=1, seed=4)
    interleaved = dataclasses.replace(trace.tokens, sequence=np.array([1, 0] * 6))
    trace = dataclasses.replace(trace, tokens=interleaved)
    result = simulate_capacity(trace, 0.5, group="sequence")  # two groups of 6 tokens: C = ceil(0.5·6/2) = 2
    assert result.group_sizes.tolist() == [6, 6]
    assert result.group_index.tolist() == [1, 0] * 6
    assert_same_result(result, simulate_capacity_reference(trace, 0.5, group="sequence"))


def test_steps_group_gives_each_generated_token_its_own_decode_capacity() -> None:
    """Prompt tokens 0-3 and generated tokens 4-5, all routed to expert 0 of 2, k = 1, CF 0.5. As one group per
    text: C = ceil(0.5 * 1 * 6 / 2) = 2, so tokens 2-5 are dropped. With steps: the prompt's C = ceil(0.5 * 4 / 2) =
    1 keeps token 0 only, and each written token, a decode step alone, has C = max(1, ceil(0.25)) = 1: both kept.
    The capacity-bound forward refuses steps (it has no decode steps), in one sentence."""
    from dataclasses import replace

    from moe_core.capacity.forward import check_settings
    from moe_core.traces.synthetic import trace_from_choices

    routing = replace(trace_from_choices([[0]] * 6, num_experts=2), generated_from=(4,))
    together = simulate_capacity(routing, 0.5, group="sequence")
    steps = simulate_capacity(routing, 0.5, group="steps")
    assert together.kept[0, :, 0].tolist() == [True, True, False, False, False, False]
    assert steps.kept[0, :, 0].tolist() == [True, False, False, False, True, True]
    assert steps.group_sizes.tolist() == [4, 1, 1] and steps.capacity[0].tolist() == [1, 1, 1]
    plain = simulate_capacity(replace(routing, generated_from=()), 0.5, group="steps")  # no phases: one prompt
    assert plain.group_sizes.tolist() == [6]
    with pytest.raises(ValueError, match="no decode steps"):
        check_settings(0.5, "position", "steps", 1)


def test_one_policy_table_feeds_the_simulation_the_forward_links_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    """Visitors pick position or score (and, capacity-bound, expert-choice); "reversed" is a control the drop
    analysis draws but no link or flag accepts; expert-choice cannot be simulated; --help says what each means."""
    from app.state import from_query
    from moe_core.capacity.simulate import FORWARD_POLICIES, POLICIES, POLICY, SERVING_ORDERS
    from tests.cli_runner import run_cli

    assert POLICIES == ("position", "score") and FORWARD_POLICIES == ("position", "score", "expert-choice")
    assert "reversed" in SERVING_ORDERS and "expert-choice" not in SERVING_ORDERS
    priority = np.array([[0.2, 0.9, 0.5]])
    assert SERVING_ORDERS["score"](priority).tolist() == [[1, 2, 0]]  # most confident first
    assert SERVING_ORDERS["reversed"](priority).tolist() == [[2, 1, 0]]
    settings, notices = from_query({"policy": "reversed"})
    assert settings.policy == "position" and "policy=reversed" in notices[0]
    code, printed, _ = run_cli(capsys, "counterfactual", "--help")
    flat = " ".join(printed.split()).replace("- ", "-")  # argparse wraps after hyphens
    assert code == 0 and all(POLICY[name].meaning in flat for name in FORWARD_POLICIES)
