"""Compare-view charts: agreement per layer as lines, and both sides' load per expert side by side."""

from __future__ import annotations

import math

import altair as alt
import pandas as pd

from app.charts.common import CHART_HEIGHT, styled
from app.charts.labels import expert_axis

MEASURES = {"top1_agreement": "first choice the same", "set_agreement": "share of the experts shared (|A∩B|/k)"}
SIDE_COLORS = ("#0072B2", "#E69F00")  # Okabe-Ito blue and orange: A and B, told apart under colour-vision deficiency


def agreement_chart(frame: pd.DataFrame, title: str) -> alt.TopLevelMixin:
    """agreement_frame's long table: one line per measure over the MoE layers; the axis starts just below the
    lowest point (two runs usually agree on 95%+ of slots, which a 0–100% axis would flatten into one line)."""
    frame = frame.assign(measure=frame["measure"].map(MEASURES))
    low = float(frame["value"].min()) if len(frame) else 0.0
    floor = max(0.0, math.floor((low - 0.005) * 50) / 50)  # 2%-steps below the lowest point: differences show
    chart = (
        alt.Chart(frame)
        .mark_line(point=True, strokeWidth=3)
        .encode(
            x=alt.X("layer:O", title="MoE layer"),
            y=alt.Y("value:Q", title="agreement", scale=alt.Scale(domain=[floor, 1]), axis=alt.Axis(format="%")),
            color=alt.Color(
                "measure:N", title=None, sort=list(MEASURES.values()), legend=alt.Legend(orient="top", labelLimit=400)
            ),
            tooltip=["layer:O", "measure:N", alt.Tooltip("value:Q", format=".2%")],
        )
        .properties(height=CHART_HEIGHT * 3 // 4, title=title)
    )
    return styled(chart)


def load_pair_chart(frame: pd.DataFrame, names: tuple[str, str], num_experts: int, title: str) -> alt.TopLevelMixin:
    """One layer's slots per expert for A and for B, as bars side by side (xOffset by side)."""
    long = frame.melt(id_vars="expert", value_vars=["load_a", "load_b"], var_name="side", value_name="slots")
    long["side"] = long["side"].map({"load_a": f"A: {names[0]}", "load_b": f"B: {names[1]}"})
    return paired_bars_chart(long, "slots", "slots (all top-k)", num_experts, title)


def paired_bars_chart(
    long: pd.DataFrame, value: str, value_title: str, num_experts: int, title: str, percent: bool = False
) -> alt.TopLevelMixin:
    """Two sides' values per expert (columns expert, side, `value`) as bars side by side, sides in order of
    appearance: two runs in the Compare view, prompt and generated tokens in the load view."""
    sides = list(dict.fromkeys(long["side"]))
    number = ".1%" if percent else ","
    y = alt.Y(f"{value}:Q", title=value_title, axis=alt.Axis(format="%" if percent else ","))
    chart = (
        alt.Chart(long)
        .mark_bar()
        .encode(
            x=alt.X("expert:O", axis=expert_axis(num_experts)),
            xOffset=alt.XOffset("side:N", sort=sides),
            y=y,
            color=alt.Color(
                "side:N",
                title=None,
                sort=sides,
                scale=alt.Scale(domain=sides, range=SIDE_COLORS),
                legend=alt.Legend(orient="top", labelLimit=400),
            ),
            tooltip=["expert:O", "side:N", alt.Tooltip(f"{value}:Q", format=number)],
        )
        .properties(height=CHART_HEIGHT * 3 // 4, title=title)
    )
    return styled(chart)
