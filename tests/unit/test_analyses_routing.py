"""Token routing frames from a hand-built trace."""

from __future__ import annotations

import numpy as np

from moe_core.analyses.routing import route_labels, token_frame, token_layer_grid
from moe_core.synthetic import trace_from_choices


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
