"""Capacity views: C per layer, fill against C, drop marks per token, the drop curve and a step-through.

All read a CapacityResult from moe_core.capacity.simulate.simulate_capacity on the same trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from moe_core.capacity.simulate import CapacityResult
from moe_core.traces.types import DROPPED, RoutingTrace


def capacity_table(layers: Sequence[int], slots: Sequence[LayerSlots], capacity: np.ndarray) -> pd.DataFrame:
    """Per MoE layer: C (largest group's), the busiest expert's demand, slots dropped and the drop rate (NaN
    where a layer has no slots: nothing to rate). Reads the static result or the capacity-bound pass alike."""
    demand = np.array([s.demand.max(initial=0) for s in slots], dtype=np.int64)
    assigned = np.array([s.assigned.sum() for s in slots], dtype=np.int64)
    dropped = np.array([s.dropped.sum() for s in slots], dtype=np.int64)
    rate = np.full(len(slots), np.nan)
    np.divide(dropped, assigned, out=rate, where=assigned > 0)
    return pd.DataFrame(
        {"layer": list(layers), "capacity": capacity, "busiest_demand": demand, "dropped_slots": dropped,
         "drop_rate": rate}
    )  # fmt: skip


def fill_frame(slots: LayerSlots, capacity: int) -> pd.DataFrame:
    """Per expert at one layer: kept slots, dropped slots (routed there but over C), and the slots it can accept
    in all (`capacity`: the sum of the groups' C, since an expert takes C_g slots in each group g)."""
    fill, demand = slots.fill, slots.demand
    return pd.DataFrame(
        {"expert": np.arange(len(fill)), "kept": fill, "dropped": demand - fill, "capacity": int(capacity)}
    )


@dataclass(frozen=True)
class LayerSlots:
    """One layer's slots and which of them ran: the common ground of the static simulation and the
    capacity-bound forward, so marks and curves are drawn by one piece of code for both.

    experts [T, m] (DROPPED: no assignment in that slot, e.g. the model's own drop or expert-choice padding),
    kept [T, m] bool.
    """

    experts: np.ndarray
    kept: np.ndarray
    num_experts: int

    @classmethod
    def simulated(cls, trace: RoutingTrace, result: CapacityResult, layer_row: int) -> LayerSlots:
        return cls(trace.experts[layer_row], result.kept[layer_row], trace.model.num_experts)

    def rows(self, rows: np.ndarray) -> LayerSlots:
        """The slots of some tokens only (a boolean or index selection)."""
        return LayerSlots(self.experts[rows], self.kept[rows], self.num_experts)

    @property
    def demand(self) -> np.ndarray:
        """[E] slots routed to each expert before the limit."""
        return np.bincount(self.experts[self.experts != DROPPED], minlength=self.num_experts)

    @property
    def fill(self) -> np.ndarray:
        """[E] slots each expert kept."""
        return np.bincount(self.experts[(self.experts != DROPPED) & self.kept], minlength=self.num_experts)

    @property
    def assigned(self) -> np.ndarray:
        """[T] slots routed to an expert before the limit."""
        return (self.experts != DROPPED).sum(axis=1)

    @property
    def dropped(self) -> np.ndarray:
        """[T] of those, the slots that did not run."""
        return ((self.experts != DROPPED) & ~self.kept).sum(axis=1)

    @property
    def fully_dropped(self) -> np.ndarray:
        """[T] bool: the token had slots and lost them all (only the residual carries it)."""
        return (self.assigned > 0) & (self.dropped == self.assigned)


DROP_KINDS = {  # drop_flags' keys -> what each marks, as the page says it
    "dropall": "every slot dropped",
    "drop1": "first choice dropped",
    "drop2": "a lower choice dropped",
    "dropany": "a slot dropped",
}
RANKED_DROP_KINDS = ("drop1", "drop2", "dropall")  # where slot 0 is the first choice
UNRANKED_DROP_KINDS = ("dropany", "dropall")  # sets of experts: no first choice to lose


def drop_flags(slots: LayerSlots) -> dict[str, np.ndarray]:
    """[T] bool per kind of loss (DROP_KINDS): every slot dropped (only the residual carries the token), its
    rank-1 slot dropped, a lower-rank slot dropped, any slot dropped. Kinds overlap: a token that lost every
    slot also lost its first choice."""
    dropped = (slots.experts != DROPPED) & ~slots.kept
    return {
        "dropall": slots.fully_dropped,
        "drop1": dropped[:, 0],
        "drop2": dropped[:, 1:].any(axis=1),
        "dropany": dropped.any(axis=1),
    }


def position_bins(position: np.ndarray, bins: int, width: int | None = None) -> tuple[np.ndarray, int]:
    """(bin of each token, bin width): `bins` equal-width bins over positions 0 … max, or bins of a given
    `width` (to share one chart's bins between lines); the one binning of every by-position curve."""
    if width is None:
        width = max(1, int(np.ceil((int(position.max()) + 1) / bins))) if len(position) else 1
    return position // width, width


def drop_curve(position: np.ndarray, slots: LayerSlots, bins: int = 32, width: int | None = None) -> pd.DataFrame:
    """Drop rates by position in the sequence, pooled into equal-width position bins (aggregated for the browser).

    Columns: start, end (positions covered), slot_drop_rate, token_drop_rate (fully dropped), tokens, slots.
    """
    if len(position) == 0:
        return pd.DataFrame(columns=["start", "end", "slot_drop_rate", "token_drop_rate", "tokens", "slots"])
    bin_index, width = position_bins(position, bins, width)
    count = np.bincount(bin_index)
    assigned = slots.assigned
    has_slots = assigned > 0
    total = np.bincount(bin_index, weights=assigned, minlength=len(count))
    lost = np.bincount(bin_index, weights=slots.dropped, minlength=len(count))
    full = np.bincount(bin_index, weights=slots.fully_dropped, minlength=len(count))
    with_slots = np.bincount(bin_index, weights=has_slots, minlength=len(count))
    return bin_frame(
        count,
        width,
        slot_drop_rate=lost / np.maximum(total, 1),
        token_drop_rate=full / np.maximum(with_slots, 1),
        tokens=count,
        slots=total.astype(np.int64),
    )


def bin_frame(count: np.ndarray, width: int, **columns: np.ndarray) -> pd.DataFrame:
    """One row per position bin holding tokens: start, end (positions covered) and the given per-bin columns."""
    present = count > 0
    starts = np.arange(len(count)) * width
    return pd.DataFrame(
        {"start": starts[present], "end": starts[present] + width - 1}
        | {name: values[present] for name, values in columns.items()}
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
    """Each expert's kept slots after the first `steps` slots were served. Columns: expert, kept, dropped."""
    expert, kept = order.expert[:steps], order.kept[:steps]
    return pd.DataFrame(
        {
            "expert": np.arange(num_experts),
            "kept": np.bincount(expert[kept], minlength=num_experts),
            "dropped": np.bincount(expert[~kept], minlength=num_experts),
        }
    )


def first_drop(order: ServingOrder) -> int | None:
    """Index in the serving order of the first slot that found its expert full (None: nothing dropped)."""
    dropped = np.flatnonzero(~order.kept)
    return int(dropped[0]) if len(dropped) else None
