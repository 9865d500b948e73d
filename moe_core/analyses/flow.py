"""Layer flow: how tokens move from their top-1 expert at one MoE layer to their top-1 at the next."""

from __future__ import annotations

import numpy as np
import pandas as pd

from moe_core.analyses.matrix import matrix_frame
from moe_core.trace import RoutingTrace


def transition_counts(trace: RoutingTrace, from_row: int) -> np.ndarray:
    """[E, E] counts: tokens with top-1 a at layer row `from_row` and top-1 b at the next MoE layer."""
    num_experts = trace.model.num_experts
    source, target = trace.experts[from_row, :, 0], trace.experts[from_row + 1, :, 0]
    valid = (source >= 0) & (target >= 0)
    counts = np.zeros((num_experts, num_experts), dtype=np.int64)
    np.add.at(counts, (source[valid], target[valid]), 1)
    return counts


def transition_frame(trace: RoutingTrace, from_row: int) -> pd.DataFrame:
    """Long table of transition_counts. Columns: source, target, count, share (of the source row)."""
    counts = transition_counts(trace, from_row)
    return matrix_frame(counts, counts.sum(axis=1))


def flow_pair(trace: RoutingTrace, layer_row: int) -> int | None:
    """The layer row the flow starts from: the chosen layer, or the one before it if it is the last; None
    when the model has a single MoE layer."""
    num_layers = len(trace.model.moe_layers)
    if num_layers < 2:
        return None
    return min(layer_row, num_layers - 2)
