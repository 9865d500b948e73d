"""One rule for which slots are counted (issue 19): not the model's own drop (-1), not a skip class (index E).
The per-trace frames and the corpus summaries used two rules (`e >= 0` against `0 <= e < E`)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from moe_core.analyses.flow import transition_counts
from moe_core.analyses.load import load_frame
from moe_core.corpus.summary import summarize_documents
from moe_core.metrics import expert_counts
from moe_core.traces.synthetic import trace_from_choices
from moe_core.traces.types import RoutingTrace

E = 4
# one layer, tokens: [0, 1], [1, DROPPED], [2, E (skip class)], [3, 0]
CHOICES = [[0, 1], [1, -1], [2, E], [3, 0]]


def test_expert_counts_leave_out_drops_and_skip_classes() -> None:
    assert expert_counts(np.array(CHOICES), E).tolist() == [2, 2, 1, 1]


def _two_layers(routing: RoutingTrace, second: np.ndarray) -> RoutingTrace:
    """`routing` (one layer) with `second` [T, k] as its layer 1: a compact trace of two MoE layers."""
    model = replace(routing.model, num_layers=2, moe_layers=(0, 1))
    return replace(routing, model=model, experts=np.stack([routing.experts[0], second]), weights=None, logits=None,
                   probs=None)  # fmt: skip


def test_trace_frames_and_corpus_summary_count_the_same_slots() -> None:
    """The per-trace load frame and a corpus summary of the same routing give the same counts per expert."""
    clean = trace_from_choices([[0, 1], [1, 2], [2, 3], [3, 0]], sequence_lengths=[4], num_experts=E)
    routing = _two_layers(clean, np.array(CHOICES))  # layer 1 has a drop and a skip class
    summary = summarize_documents([routing.experts], [routing.tokens.ids], ["all"], (0, 1), E, capacity_factor=1.0)
    frame = load_frame(routing)
    for row in (0, 1):
        layer = frame[frame["layer"] == row]
        assert layer["topk"].tolist() == summary.topk[row].tolist()
        assert layer["top1"].tolist() == summary.top1[row].tolist()
    assert summary.topk[1].tolist() == [2, 2, 1, 1] and summary.top1[1].tolist() == [1, 1, 1, 1]


def test_transitions_skip_drops_and_skip_classes() -> None:
    """Token 2 goes from expert 2 to the skip class: no transition; the three others are counted."""
    clean = trace_from_choices([[0, 1], [1, 2], [2, 3], [3, 0]], sequence_lengths=[4], num_experts=E)
    counts = transition_counts(_two_layers(clean, np.array([[1, 0], [2, 0], [E, 1], [0, 1]])), 0)
    assert counts.sum() == 3 and counts[0, 1] == counts[1, 2] == counts[3, 0] == 1
