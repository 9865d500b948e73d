"""Capacity views: C per layer, fill against C, drop marks per token, the drop curve and a step-through.

All read a CapacityResult from moe_core.capacity.simulate_capacity on the same trace.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from moe_core.capacity import CapacityResult
from moe_core.trace import DROPPED, RoutingTrace


def capacity_table(trace: RoutingTrace, result: CapacityResult) -> pd.DataFrame:
    """Per MoE layer: C (largest group's), the busiest expert's demand, slots dropped and the drop rate."""
    demand = result.demand.sum(axis=1)
    dropped = demand - result.fill.sum(axis=1)
    return pd.DataFrame(
        {
            "layer": list(trace.model.moe_layers),
            "capacity": result.capacity_per_layer,
            "busiest_demand": result.demand.max(axis=1),
            "dropped_slots": dropped,
            "drop_rate": result.drop_rate,  # NaN where a layer has no slots (nothing to rate), as the result says
        }
    )


def fill_frame(result: CapacityResult, layer_row: int) -> pd.DataFrame:
    """Per expert at one layer: kept slots, overflow (routed but dropped), and the slots it can accept in all.

    With several groups (one per sequence), an expert can accept C_g slots in each group g, so `capacity`
    is the sum of the groups' C; with one sequence it is plain C.
    """
    fill, demand = result.fill[layer_row], result.demand[layer_row]
    return pd.DataFrame(
        {
            "expert": np.arange(len(fill)),
            "kept": fill,
            "overflow": demand - fill,
            "capacity": int(result.capacity[layer_row].sum()),
        }
    )


def drop_marks(trace: RoutingTrace, result: CapacityResult, layer_row: int) -> list[str]:
    """A CSS class per token: 'dropall' (every slot dropped), 'drop1' (its rank-1 slot dropped), 'drop2' (a
    lower-rank slot dropped), or '' (kept everywhere)."""
    assigned = trace.experts[layer_row] != DROPPED
    dropped = assigned & ~result.kept[layer_row]
    marks = np.where(dropped[:, 1:].any(axis=1), "drop2", "") if dropped.shape[1] > 1 else np.full(len(dropped), "")
    marks = np.where(dropped[:, 0], "drop1", marks)
    return list(np.where(result.fully_dropped[layer_row], "dropall", marks))


def drop_curve(trace: RoutingTrace, result: CapacityResult, layer_row: int, bins: int = 32) -> pd.DataFrame:
    """Drop rates by position in the sequence, pooled into equal-width position bins (aggregated for the browser).

    Columns: start, end (positions covered), slot_drop_rate, token_drop_rate (fully dropped), tokens.
    """
    position = trace.tokens.position
    assigned = trace.experts[layer_row] != DROPPED
    dropped = (assigned & ~result.kept[layer_row]).sum(axis=1)
    has_slots = assigned.any(axis=1)
    width = max(1, int(np.ceil((position.max() + 1) / bins)))
    bin_index = position // width
    count = np.bincount(bin_index, minlength=bins)
    slots = np.bincount(bin_index, weights=assigned.sum(axis=1), minlength=bins)
    lost = np.bincount(bin_index, weights=dropped, minlength=bins)
    full = np.bincount(bin_index, weights=result.fully_dropped[layer_row] & has_slots, minlength=bins)
    with_slots = np.bincount(bin_index, weights=has_slots, minlength=bins)
    present = count > 0
    starts = np.arange(len(count)) * width
    return pd.DataFrame(
        {
            "start": starts[present],
            "end": starts[present] + width - 1,
            "slot_drop_rate": (lost / np.maximum(slots, 1))[present],
            "token_drop_rate": (full / np.maximum(with_slots, 1))[present],
            "tokens": count[present],
        }
    )


@dataclass(frozen=True)
class ServingOrder:
    """The slots of one sequence at one layer, in the order a capacity-bound MoE serves them."""

    token: np.ndarray  # [S] token index in the trace
    rank: np.ndarray  # [S] 0 = the token's first choice
    expert: np.ndarray  # [S]
    kept: np.ndarray  # [S] bool: the slot found room (its expert had taken fewer than C before it)
    capacity: int


def serving_order(trace: RoutingTrace, result: CapacityResult, layer_row: int, sequence: int = 0) -> ServingOrder:
    """All rank-1 slots, then all rank-2 slots, ...; within a rank in the order the result's policy served them
    (`result.order`). Uses the sequence's own capacity (group='sequence') or the batch's."""
    order = result.order[layer_row]
    tokens = order[trace.tokens.sequence[order] == sequence]
    top_k = trace.experts.shape[2]
    token = np.tile(tokens, top_k)
    rank = np.repeat(np.arange(top_k), len(tokens))
    expert = trace.experts[layer_row, token, rank]
    real = expert != DROPPED
    token, rank, expert = token[real], rank[real], expert[real]
    group = result.group_index[tokens[0]] if len(tokens) else 0
    capacity = int(result.capacity[layer_row, group])
    return ServingOrder(token, rank, expert, result.kept[layer_row, token, rank], capacity)


def fill_after(order: ServingOrder, steps: int, num_experts: int) -> pd.DataFrame:
    """Each expert's kept slots after the first `steps` slots were served. Columns: expert, kept, refused."""
    expert, kept = order.expert[:steps], order.kept[:steps]
    return pd.DataFrame(
        {
            "expert": np.arange(num_experts),
            "kept": np.bincount(expert[kept], minlength=num_experts),
            "refused": np.bincount(expert[~kept], minlength=num_experts),
        }
    )


def first_drop(order: ServingOrder) -> int | None:
    """Index in the serving order of the first slot that found its expert full (None: nothing dropped)."""
    refused = np.flatnonzero(~order.kept)
    return int(refused[0]) if len(refused) else None
