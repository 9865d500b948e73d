"""Training-view charts: one line per MoE layer against the training step (saturation, balance, specialization),
and the pooled early-routing-learning curve."""

from __future__ import annotations

import altair as alt
import pandas as pd

from app.charts.common import CHART_HEIGHT, styled

LAYER_COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")  # Okabe-Ito


def layer_lines_chart(
    frame: pd.DataFrame, value: str, value_title: str, title: str, percent: bool = False, floor: float | None = None
) -> alt.TopLevelMixin:
    """`frame`'s (step, layer, `value`) as one line per layer; `floor` starts the axis there (0–1 curves)."""
    layers = sorted(frame["layer"].unique().tolist())
    colors = alt.Scale(domain=layers, range=list(LAYER_COLORS[: len(layers)])) if len(layers) <= 8 else alt.Undefined
    scale = alt.Scale(domain=[floor, 1]) if floor is not None else alt.Scale(zero=False)
    number = ".1%" if percent else ".3f"
    chart = (
        alt.Chart(frame)
        .mark_line(strokeWidth=3)
        .encode(
            x=alt.X("step:Q", title="training step"),
            y=alt.Y(f"{value}:Q", title=value_title, scale=scale, axis=alt.Axis(format="%" if percent else "~g")),
            color=alt.Color("layer:O", title="MoE layer", scale=colors, legend=alt.Legend(orient="top")),
            tooltip=["step:Q", "layer:O", alt.Tooltip(f"{value}:Q", format=number)],
        )
        .properties(height=CHART_HEIGHT * 3 // 4, title=title)
    )
    return styled(chart)


ID_TITLE = "ids on their final expert"
PERCENT = alt.Axis(format="%")


def token_id_chart(frame: pd.DataFrame, title: str) -> alt.TopLevelMixin:
    """token_id_frame: the share of frequent token ids whose usual expert is already the final one, per step."""
    chart = (
        alt.Chart(frame.dropna())
        .mark_line(strokeWidth=3, point=True, color=LAYER_COLORS[0])
        .encode(
            x=alt.X("step:Q", title="training step"),
            y=alt.Y("token_id_match_final:Q", title=ID_TITLE, scale=alt.Scale(domain=[0, 1]), axis=PERCENT),
            tooltip=["step:Q", alt.Tooltip("token_id_match_final:Q", format=".1%", title=ID_TITLE)],
        )
        .properties(height=CHART_HEIGHT * 3 // 4, title=title)
    )
    return styled(chart)
