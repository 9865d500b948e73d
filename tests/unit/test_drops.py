"""Drop towards the end, honestly: equal-length windows, per-domain lines, controls, sweep, costs by position."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from moe_core.analyses.capacity import LayerSlots
from moe_core.analyses.drops import (
    POOLED,
    capacity_sweep,
    control_curves,
    curve_readiness,
    curves_by_domain,
    delta_loss_curve,
    sequence_drops,
    shuffled_within_sequences,
    tail_cost,
)
from moe_core.batches import equal_windows
from moe_core.capacity.simulate import simulate_capacity
from moe_core.traces.synthetic import random_trace, trace_from_choices


def test_equal_windows_trace_to_exactly_one_length(demo_tokenizer: Any) -> None:
    """Every window tokenises to at least W tokens (so max_tokens=W makes them all W), several per domain."""
    batch = equal_windows(demo_tokenizer, window=128, per_domain=3)
    assert set(batch.domains) == {"arithmetic", "code", "german", "markup", "prose"}
    assert all(batch.domains.count(d) == 3 for d in set(batch.domains))
    assert all(len(demo_tokenizer(t)["input_ids"]) >= 128 for t in batch.texts)
    assert len(set(batch.texts)) == len(batch.texts)  # non-overlapping windows, no repeats


def test_curves_by_domain_hand_case() -> None:
    """Two texts of 4 tokens, E=2, k=1, every token to e0, CF=1 → C = 2 per text: positions 2, 3 dropped.
    Domain "a" is text 0; both domains and the pooled line read 0, 0, 1, 1 in bins of one position."""
    trace = trace_from_choices([[0]] * 8, sequence_lengths=[4, 4], num_experts=2)
    result = simulate_capacity(trace, 1.0)
    frame = curves_by_domain(trace, LayerSlots.simulated(trace, result, 0), ["a", "b"], bins=4)
    for domain in (POOLED, "a", "b"):
        rows = frame[frame["domain"] == domain]
        assert rows["slot_drop_rate"].tolist() == [0, 0, 1, 1]
        assert rows["slots"].tolist() == ([2, 2, 2, 2] if domain == POOLED else [1, 1, 1, 1])


def test_reversed_order_mirrors_the_position_curve() -> None:
    """Serving a text last-to-first is position order on the text read backwards: the rate at position p under
    `reversed` equals the rate at position T-1-p of the reversed text under `position`."""
    trace = random_trace(60, num_experts=4, top_k=2, seed=3)
    backwards = dataclasses.replace(
        trace, experts=trace.experts[:, ::-1], weights=trace.weights[:, ::-1], probs=trace.probs[:, ::-1],
        logits=trace.logits[:, ::-1],
    )  # fmt: skip
    flipped = simulate_capacity(trace, 0.75, policy="reversed").drop_rate_by_position[0]
    mirror = simulate_capacity(backwards, 0.75, policy="position").drop_rate_by_position[0][::-1]
    np.testing.assert_array_equal(flipped, mirror)


def test_controls_on_a_text_whose_routing_is_the_same_everywhere() -> None:
    """Every token routed alike: shuffling rows changes nothing, so the shuffled curve is the position curve,
    and reversing the order moves every drop to the start."""
    trace = trace_from_choices([[0, 1]] * 8, num_experts=4)  # C = ceil(2·8/4) = 4 for e0 and e1
    frame = control_curves(trace, 1.0, "sequence", 0, bins=8)
    curve = {name: rows["slot_drop_rate"].tolist() for name, rows in frame.groupby("control")}
    assert curve["position order"] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert curve["position order, routing shuffled within each text"] == curve["position order"]
    assert curve["position order, served last-to-first"] == [1, 1, 1, 1, 0, 0, 0, 0]


def test_shuffle_keeps_tokens_and_permutes_rows_within_each_text() -> None:
    trace = random_trace([5, 7], num_experts=4, top_k=2, seed=1)
    shuffled = shuffled_within_sequences(trace, seed=2)
    assert shuffled.tokens is trace.tokens
    for s in (0, 1):
        rows = trace.tokens.sequence == s
        assert sorted(map(tuple, shuffled.experts[0, rows])) == sorted(map(tuple, trace.experts[0, rows]))
    assert not np.array_equal(shuffled.experts, trace.experts)


def test_capacity_sweep_drops_less_with_more_capacity() -> None:
    trace = random_trace([200] * 4, num_experts=8, top_k=2, seed=0)
    frame = capacity_sweep(trace, "position", "sequence", 0, factors=(0.5, 1.0, 2.0), bins=8)
    overall = [float(rows["slot_drop_rate"].mean()) for _, rows in frame.groupby("capacity_factor")]
    assert overall[0] > overall[1] > overall[2]


def test_batch_group_drops_the_later_texts() -> None:
    """group = batch, one expert, three texts of 2 tokens, CF=1, E=2 → C = 3: text 0 keeps both, text 1 keeps
    one of two, text 2 keeps none."""
    trace = trace_from_choices([[0]] * 6, sequence_lengths=[2, 2, 2], num_experts=2)
    result = simulate_capacity(trace, 1.0, group="batch")
    frame = sequence_drops(trace, LayerSlots.simulated(trace, result, 0))
    assert frame["slot_drop_rate"].tolist() == [0.0, 0.5, 1.0]


def test_delta_loss_by_position_and_the_tail_cost() -> None:
    """Positions 0-3 of one text with Δloss 0, 0.2, 0.4, NaN (last token): bins of 2 give 0.1 and 0.4; the
    first quarter (position 0) costs 0 and the last quarter (position 3) is undefined."""
    position, sequence = np.arange(4), np.zeros(4, dtype=np.int64)
    delta = np.array([0.0, 0.2, 0.4, np.nan])
    curve = delta_loss_curve(position, delta, bins=2)
    np.testing.assert_allclose(curve["mean_delta_loss"], [0.1, 0.4])
    assert curve["tokens"].tolist() == [2, 1]
    first, last = tail_cost(np.arange(8), np.zeros(8, dtype=np.int64), np.array([1, 1, 0, 0, 0, 0, 3, np.nan]))
    assert (first, last) == (1.0, 3.0)
    assert tail_cost(position, sequence, delta)[0] == 0.0


@pytest.mark.parametrize(("lengths", "says"), [([20], "too short"), ([100, 300], "differ in length"), ([200], "")])
def test_curve_readiness(lengths: list[int], says: str) -> None:
    note = curve_readiness(random_trace(lengths, num_experts=4, top_k=1))
    assert (says in note) if says else note == ""


def test_traced_windows_are_all_exactly_one_length(demo_tokenizer: Any) -> None:
    """The lab's batch: every traced window holds exactly `window` tokens, with its domain beside it."""
    from moe_core.batches import trace_equal_windows
    from moe_core.proof.tiny_models import build_tiny_model

    lab = trace_equal_windows(build_tiny_model("mixtral"), demo_tokenizer, window=64)
    lengths = np.bincount(lab.trace.tokens.sequence)
    assert set(lengths.tolist()) == {64} and len(lengths) == len(lab.windows.domains)
