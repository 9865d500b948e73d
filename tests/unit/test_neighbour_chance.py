"""Mixtral Table 5's second baseline: the chance that neighbours share an expert given the text's own load."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import moe_core.analyses.routing as routing_module
from moe_core.analyses.routing import consecutive_repeats, overlap_chance
from moe_core.traces.synthetic import random_trace, trace_from_choices
from moe_core.traces.types import DROPPED


def test_text_chance_hand_case() -> None:
    """E = 8, top-2. Text A: [0,1] [0,2] [3,1] [4,5]; text B: [4,5] [6,D]. Pairs are two different tokens.

    First choices: A (0, 0, 3, 4): of its 12 ordered pairs, tokens 0 and 1 share expert 0 both ways: 2/12 = 1/6;
    B (4, 6): 0/2. Weighted by their neighbour pairs (3 and 1): (3·1/6 + 0) / 4 = 1/8. Any choice: in A,
    {0,1}~{0,2} and {0,1}~{1,3} both ways: 4/12 = 1/3; B's two sets are disjoint: 0. Weighted: 1/4.
    """
    D = DROPPED
    routing = trace_from_choices(
        [[0, 1], [0, 2], [3, 1], [4, 5], [4, 5], [6, D]], sequence_lengths=[4, 2], num_experts=8
    )
    row = consecutive_repeats(routing).iloc[0]
    assert row["first_choice_text_chance"] == pytest.approx(1 / 8)
    assert row["any_choice_text_chance"] == pytest.approx(1 / 4)
    assert row["first_choice_chance"] == 0.125  # the uniform chance stays beside it


def test_dropped_slots_never_match_in_the_chance() -> None:
    """Tokens (0), (0), (dropped): only tokens 0 and 1 share, both ways, of 6 ordered pairs; all dropped: none."""
    assert overlap_chance(np.array([[0], [0], [DROPPED]]), 2) == pytest.approx(2 / 6)
    assert overlap_chance(np.array([[DROPPED], [DROPPED]]), 2) == 0.0


def test_every_set_once_shares_with_all_but_its_complement() -> None:
    """A text using each of the C(4, 2) = 6 pairs of experts once: every pair shares an expert with 4 of the
    other 5 (all but its complement), 4/5; each expert once: no two different tokens share, 0."""
    every_pair = np.array(list(itertools.combinations(range(4), 2)))
    assert overlap_chance(every_pair, 4) == pytest.approx(4 / 5)
    assert overlap_chance(np.arange(4)[:, None], 4) == 0.0
    assert np.isnan(overlap_chance(np.array([[0]]), 4))  # one token: no pair


def test_overlap_chance_equals_counting_every_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    """On random top-3 routing, the bitset formula equals a double loop over all ordered pairs of different
    tokens, also when the sets are compared a few at a time."""
    chosen = random_trace(40, num_experts=6, top_k=3, seed=7).experts[0].tolist()
    brute = np.mean([bool(set(a) & set(b)) for i, a in enumerate(chosen) for j, b in enumerate(chosen) if i != j])
    chosen = np.asarray(chosen)
    assert overlap_chance(chosen, 6) == pytest.approx(brute)
    monkeypatch.setattr(routing_module, "OVERLAP_CHUNK", 3)
    assert overlap_chance(chosen, 6) == pytest.approx(brute)


def test_text_chance_is_undefined_without_pairs() -> None:
    """One-token texts have no neighbours: no chance to compare against either."""
    row = consecutive_repeats(trace_from_choices([[0], [0]], sequence_lengths=[1, 1], num_experts=2)).iloc[0]
    assert np.isnan(row["first_choice_text_chance"]) and np.isnan(row["any_choice_text_chance"])
