"""Routing across training: one fixed text set traced at every checkpoint, each step compared with the final one.

- **Router saturation** (OLMoE, arXiv 2409.02060 §5): per layer, the share of tokens whose first choice at step t
  is the final checkpoint's (top-1), and the mean share of their k experts that are (top-k), against the step.
  Both are analyses.compare's agreements of step t against the last step: one definition of agreement.
- **Early routing learning** (OpenMoE, arXiv 2402.01739): for each token id seen at least `min_count` times, its
  most frequent first-choice expert at step t against the final one; the share of (layer, id) pairs that match.
- **Load balance** per step (analyses.load.balance_frame's CV and max/mean over the top-k slots) and **domain
  specialization** per step: how far each text's (domain's) use of the experts is from all texts pooled.

Pure numpy and pandas over compact traces (experts only is enough).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from moe_core.analyses.compare import compare
from moe_core.analyses.load import balance_frame, domain_share_frame
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


def token_id_frame(series: Series, min_count: int = MIN_ID_COUNT) -> pd.DataFrame:
    """Per step: token_id_match_final (early routing learning), pooled over the layers."""
    final = series.traces[-1]
    matches = [token_id_match(routing, final, min_count) for routing in series.traces]
    return pd.DataFrame({"step": list(series.steps), "token_id_match_final": matches})


def balance_series_frame(series: Series) -> pd.DataFrame:
    """Per (step, layer): cv and max_over_mean of the experts' top-k slots (balance_frame's definitions)."""
    frames = [balance_frame(t)[["layer", "cv", "max_over_mean"]].assign(step=s)
              for s, t in zip(series.steps, series.traces, strict=True)]  # fmt: skip
    return pd.concat(frames, ignore_index=True)[["step", "layer", "cv", "max_over_mean"]]


def domain_distance(shares: pd.DataFrame) -> float:
    """domain_share_frame's table -> the mean over domains of the total-variation distance between the domain's
    expert shares and all domains' slots pooled: 0 when every domain uses the experts alike, 1 when no two
    domains share an expert. Against the pooled load, not 1/E, so an unbalanced router is not called
    specialised."""
    table = shares.pivot(index="domain", columns="expert", values="share").fillna(0.0)
    slots = shares.groupby("domain")["slots"].first().reindex(table.index).to_numpy(dtype=float)
    pooled = (table.to_numpy() * slots[:, None]).sum(axis=0) / slots.sum()
    return float((0.5 * np.abs(table.to_numpy() - pooled).sum(axis=1)).mean())


def specialization_frame(series: Series, domains: Sequence[str]) -> pd.DataFrame:
    """Per (step, layer): domain_specialization = domain_distance of that step's routing of the texts, one text
    per domain (`domains` names them, in the traces' text order)."""
    rows = [(step, layer, domain_distance(domain_share_frame(routing, row, domains)))
            for step, routing in zip(series.steps, series.traces, strict=True)
            for row, layer in enumerate(routing.model.moe_layers)]  # fmt: skip
    return pd.DataFrame(rows, columns=["step", "layer", "domain_specialization"])


def first_step_reaching(frame: pd.DataFrame, column: str, level: float) -> int | None:
    """The first step from which `column` (one value per step, pooled over layers by the mean) stays at or
    above `level` to the end; None where it never settles there."""
    per_step = frame.groupby("step")[column].mean().sort_index()
    below = per_step.to_numpy() < level
    if below[-1]:
        return None
    settled = len(below) - int(np.argmax(below[::-1])) if below.any() else 0
    return int(per_step.index[settled])


SETTLED = 0.8  # "settled": from this step on, at least this share of tokens keep their final first choice


@dataclass(frozen=True)
class TrainingCurves:
    """Every curve of the Training view, computed once per series."""

    saturation: pd.DataFrame  # saturation_frame
    token_ids: pd.DataFrame  # token_id_frame
    balance: pd.DataFrame  # balance_series_frame
    specialization: pd.DataFrame  # specialization_frame


def training_curves(series: Series, domains: Sequence[str], min_count: int = MIN_ID_COUNT) -> TrainingCurves:
    return TrainingCurves(saturation_frame(series), token_id_frame(series, min_count), balance_series_frame(series),
                          specialization_frame(series, domains))  # fmt: skip


def value_at_fraction(frame: pd.DataFrame, column: str, fraction: float) -> tuple[int, float]:
    """(step, value) at the first recorded step at or past `fraction` of the run, `column` averaged over layers."""
    per_step = frame.groupby("step")[column].mean().sort_index()
    first, last = per_step.index[0], per_step.index[-1]
    at = per_step[per_step.index >= first + fraction * (last - first)]
    return int(at.index[0]), float(at.iloc[0])


def what_training_shows(curves: TrainingCurves) -> str:
    """The one sentence a teacher reads first, worded from this series' own numbers: whether its routing was
    fixed early (OpenMoE's finding) or kept changing (a short run may not fix it early)."""
    saturation = curves.saturation
    last = int(saturation["step"].max())
    settled = first_step_reaching(saturation, "top1_match_final", SETTLED)
    step, share = value_at_fraction(saturation, "top1_match_final", 0.1)
    early = f"{share:.0%} of tokens have their final first choice by step {step:,} ({step / last:.0%} of training)"
    if settled is not None and settled <= 0.25 * last:
        return f"Routing is fixed early, as OpenMoE found: {early}, {SETTLED:.0%} from step {settled:,} on."
    when = f"from step {settled:,} ({settled / last:.0%})" if settled is not None else "at the very end"
    if settled is not None and settled <= 0.5 * last:
        return f"Most routing is fixed early, as OpenMoE found: {early}, {SETTLED:.0%} only {when}."
    return f"This run's routing keeps changing, unlike OpenMoE's finding: {early}, {SETTLED:.0%} only {when}."
