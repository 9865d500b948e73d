"""Token routing frames from a hand-built trace."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from moe_core.analyses.routing import (
    consecutive_repeats,
    route_labels,
    token_frame,
    token_id_consistency,
    token_layer_grid,
)
from moe_core.traces.synthetic import trace_from_choices
from moe_core.traces.types import DROPPED


def _trace():
    experts = [[[1, 0], [2, 3], [1, 2]], [[0, 1], [0, 2], [3, 1]]]  # [L=2, T=3, k=2]
    weights = [[[0.7, 0.3], [0.6, 0.4], [0.9, 0.1]], [[0.5, 0.5], [0.8, 0.2], [0.55, 0.45]]]
    return trace_from_choices(experts, weights, num_experts=4)


def test_token_frame_reads_the_chosen_layer() -> None:
    """top-1 expert and weight of each token at layer row 1, with all top-k in the route label."""
    frame = token_frame(_trace(), 1)
    assert frame["top1"].tolist() == [0, 0, 3]
    np.testing.assert_allclose(frame["top1_weight"], [0.5, 0.8, 0.55])
    assert frame["route"].tolist()[2] == "E3 0.55 · E1 0.45"


def test_grid_window_has_one_row_per_token_and_layer() -> None:
    """A window of 2 tokens over 2 layers gives 4 rows with the right top-1 experts."""
    grid = token_layer_grid(_trace(), start=1, stop=3)
    assert len(grid) == 4
    assert grid[["token", "layer", "top1"]].values.tolist() == [[1, 0, 2], [2, 0, 1], [1, 1, 0], [2, 1, 3]]


def test_dropped_slots_are_labelled() -> None:
    """A slot the model dropped (-1) reads 'dropped' in tooltips."""
    assert route_labels(np.array([[2, -1]]), np.array([[1.0, 0.0]])) == ["E2 1.00 · dropped"]


def test_consecutive_repeats_counts_neighbours_within_each_text() -> None:
    """Hand case, E = 8, top-2. Text A: t0 [0,1] t1 [0,2] t2 [3,1] t3 [4,5]; text B: t4 [4,5] t5 [6,D].

    Pairs in A: (t0,t1) same first and shares 0; (t1,t2) nothing; (t2,t3) nothing. (t3,t4) crosses texts: not
    a pair, though identical. In B: (t4,t5) nothing. First choice 1/4, any choice 1/4. Chance: 1/8 and
    1 - C(6,2)/C(8,2) = 13/28 (Mixtral's 12.5% and 46%).
    """
    D = DROPPED
    routing = trace_from_choices(
        [[0, 1], [0, 2], [3, 1], [4, 5], [4, 5], [6, D]], sequence_lengths=[4, 2], num_experts=8
    )
    row = consecutive_repeats(routing).iloc[0]
    assert row["pairs"] == 4
    assert row["first_choice"] == 0.25 and row["any_choice"] == 0.25
    assert row["first_choice_chance"] == 0.125
    assert row["any_choice_chance"] == pytest.approx(13 / 28)


def test_consecutive_repeats_ignore_dropped_slots() -> None:
    """Two dropped slots in a row are not 'the same expert'."""
    D = DROPPED
    routing = trace_from_choices([[D, 1], [D, 2]], num_experts=4)
    row = consecutive_repeats(routing).iloc[0]
    assert row["first_choice"] == 0.0 and row["any_choice"] == 0.0


def test_consecutive_repeats_of_one_token_texts_are_undefined() -> None:
    """Texts of one token each have no neighbours: the rates are NaN, not 0."""
    routing = trace_from_choices([[0], [0]], sequence_lengths=[1, 1], num_experts=2)
    row = consecutive_repeats(routing).iloc[0]
    assert row["pairs"] == 0 and np.isnan(row["first_choice"])


def _with_ids(routing, ids):
    return dataclasses.replace(routing, tokens=dataclasses.replace(routing.tokens, ids=np.asarray(ids)))


def test_token_id_consistency_hand_case() -> None:
    """ids 5 5 5 7 7 9 with first choices 1 1 2 3 3 0: id 5 keeps 2 of 3 on expert 1, id 7 keeps 2 of 2, and id 9
    (seen once) does not count: (2/3 + 1) / 2 = 5/6 over 2 ids."""
    routing = _with_ids(trace_from_choices([[1], [1], [2], [3], [3], [0]], num_experts=4), [5, 5, 5, 7, 7, 9])
    row = token_id_consistency(routing, shuffles=0).iloc[0]
    assert row["consistency"] == pytest.approx(5 / 6)
    assert row["ids"] == 2 and np.isnan(row["shuffled"])


def test_vocabulary_specialization_counts_each_row_alone() -> None:
    """Rows are counted apart, dropped slots leave an id's total, and an id rare in one row still counts in
    another. ids 5 5 5 7 7 9:
    row 0, choices 1 1 2 3 3 0: (2/3 + 2/2) / 2 = 5/6;
    row 1, choices 1 -1 -1 3 0 0: id 5 keeps one routed token (too few), id 7 1 of 2: 1/2;
    row 2, every slot dropped: NaN (no id seen twice)."""
    from moe_core.metrics import vocabulary_specialization, vocabulary_specialization_rows

    ids = np.array([5, 5, 5, 7, 7, 9])
    rows = np.array([[1, 1, 2, 3, 3, 0], [1, DROPPED, DROPPED, 3, 0, 0], [DROPPED] * 6])
    got = vocabulary_specialization_rows(ids, rows, min_count=2)
    assert got[:2] == pytest.approx([5 / 6, 1 / 2]) and np.isnan(got[2])
    assert vocabulary_specialization(ids, rows[1], min_count=2) == pytest.approx(1 / 2)


def test_routing_by_token_id_stands_out_from_the_shuffled_baseline() -> None:
    """When the first choice is a function of the id (OpenMoE's extreme), consistency is 1 and shuffling the
    same assignments across tokens brings it far down."""
    rng = np.random.default_rng(0)
    ids = rng.permutation(np.repeat(np.arange(50), 6))
    routing = _with_ids(trace_from_choices((ids % 8)[:, None], num_experts=8), ids)
    row = token_id_consistency(routing).iloc[0]
    assert row["consistency"] == 1.0
    assert row["shuffled"] < 0.6


def test_continuation_marks_the_tokens_from_the_given_character() -> None:
    """Synthetic texts are "t0t1t2…": tokens from character 4 on (t2, t3) are the model's; the second text never."""
    from moe_core.analyses.routing import continuation_marks
    from moe_core.traces.synthetic import trace_from_choices

    routing = trace_from_choices([[0]] * 6, sequence_lengths=[4, 2], num_experts=2)
    assert continuation_marks(routing, 4) == ["", "", "own", "own", "", ""]
    assert continuation_marks(routing, None) == [""] * 6
