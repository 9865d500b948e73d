"""Routing across training: one fixed text set traced at every checkpoint, each step compared with the final one.

- **Router saturation** (OLMoE, arXiv 2409.02060 §5): per layer, the share of tokens whose first choice at step t
  is the final checkpoint's (top-1), and the mean share of their k experts that are (top-k), against the step.
  Both are analyses.compare's agreements of step t against the last step: one definition of agreement.
- **Early routing learning** (OpenMoE, arXiv 2402.01739): for each token id seen at least `min_count` times, its
  most frequent first-choice expert at step t against the final one; the share of (layer, id) pairs that match.

Pure numpy and pandas over compact traces (experts only is enough).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from moe_core.analyses.compare import compare
from moe_core.metrics import routed
from moe_core.traces.types import RoutingTrace

MIN_ID_COUNT = 5  # a token id must appear this often for its usual expert to mean something


@dataclass(frozen=True)
class Series:
    """The traces of one text set, one per checkpoint, in step order (the last is the final checkpoint)."""

    steps: tuple[int, ...]
    traces: tuple[RoutingTrace, ...]

    def __post_init__(self) -> None:
        if len(self.steps) != len(self.traces) or not self.steps:
            raise ValueError("a series needs one trace per step, and at least one step")
        if list(self.steps) != sorted(set(self.steps)):
            raise ValueError(f"a series' steps must increase: {list(self.steps)[:8]}")


def usual_experts(routing: RoutingTrace, min_count: int = MIN_ID_COUNT) -> dict[tuple[int, int], int]:
    """(layer row, token id) -> the id's most frequent first-choice expert (ties: the lower id), for ids seen at
    least `min_count` times with a routed first choice."""
    num_experts = routing.model.num_experts
    ids = routing.tokens.ids
    found: dict[tuple[int, int], int] = {}
    for row in range(len(routing.model.moe_layers)):
        first = routing.experts[row, :, 0]
        keep = routed(first, num_experts)
        pairs, counts = np.unique(np.stack([ids[keep], first[keep]], axis=1), axis=0, return_counts=True)
        totals: dict[int, int] = {}
        best: dict[int, tuple[int, int]] = {}
        for (token, expert), count in zip(pairs.tolist(), counts.tolist(), strict=True):
            totals[token] = totals.get(token, 0) + count
            if token not in best or count > best[token][0]:  # np.unique sorts by expert: ties keep the lower
                best[token] = (count, expert)
        found |= {(row, token): expert for token, (_, expert) in best.items() if totals[token] >= min_count}
    return found


def token_id_match(step: RoutingTrace, final: RoutingTrace, min_count: int = MIN_ID_COUNT) -> float:
    """Share of the (layer, token id) pairs frequent in both whose usual expert at `step` is the final one."""
    now, last = usual_experts(step, min_count), usual_experts(final, min_count)
    both = [key for key in last if key in now]
    return float(np.mean([now[key] == last[key] for key in both])) if both else math.nan


def saturation_frame(series: Series) -> pd.DataFrame:
    """Per (step, layer): top1_match_final (NaN where a side is unranked), set_match_final. Long table."""
    final = series.traces[-1]
    rows = []
    for step, routing in zip(series.steps, series.traces, strict=True):
        layers = compare(routing, final).layers
        rows += [(step, int(r.layer), r.top1_agreement, r.set_agreement) for r in layers.itertuples()]
    return pd.DataFrame(rows, columns=["step", "layer", "top1_match_final", "set_match_final"])


def series_json(series: Series, min_count: int = MIN_ID_COUNT) -> dict:
    """The `training-series` contract (README): steps; per layer the two saturation curves; early routing
    learning per step."""
    frame = saturation_frame(series)

    def numbers(values: Sequence[float]) -> list[float | None]:
        return [None if math.isnan(v) else round(float(v), 6) for v in values]

    layers = [
        {
            "layer": int(layer),
            "top1_match_final": numbers(rows.sort_values("step")["top1_match_final"].tolist()),
            "set_match_final": numbers(rows.sort_values("step")["set_match_final"].tolist()),
        }
        for layer, rows in frame.groupby("layer", sort=True)
    ]
    final = series.traces[-1]
    return {
        "steps": list(series.steps),
        "layers": layers,
        "token_id_match_final": numbers([token_id_match(t, final, min_count) for t in series.traces]),
    }
