"""Gate-weight charts: token × expert heatmap, one token's distribution, entropy per token."""

from __future__ import annotations

import math

import altair as alt
import pandas as pd

from app.charts.common import expert_color, styled
from moe_core.routers import SUM_TO_ONE

HEAT_SCHEME = "blues"


def gate_heatmap_chart(frame: pd.DataFrame, scoring: str) -> alt.TopLevelMixin:
    """Rect per (token, expert), shade = score; chosen cells carry their rank (1 = first choice)."""
    base = alt.Chart(frame).encode(
        x=alt.X("token:O", title="token #", axis=alt.Axis(labelOverlap=True, labelAngle=0)),
        y=alt.Y("expert:O", title="expert"),
    )
    cells = base.mark_rect().encode(
        color=alt.Color("prob:Q", title=scoring, scale=alt.Scale(scheme=HEAT_SCHEME, domainMin=0)),
        tooltip=[
            alt.Tooltip("token:O", title="token #"),
            alt.Tooltip("text:N"),
            alt.Tooltip("expert:O"),
            alt.Tooltip("prob:Q", title=scoring, format=".3f"),
            alt.Tooltip("rank:O", title="chosen as (0 = not)"),
        ],
    )
    chosen = (
        base.transform_filter(alt.datum.rank > 0)
        .mark_text(fontSize=11, fontWeight="bold")
        .encode(text="rank:O", color=alt.value("#B00020"))
    )
    num_experts = frame["expert"].nunique()
    title = alt.Title("Router scores of every token for every expert", subtitle="numbers: the chosen experts' rank")
    return styled((cells + chosen).properties(height=min(640, max(160, 22 * num_experts)), title=title))


def distribution_chart(frame: pd.DataFrame, scoring: str, token_label: str) -> alt.TopLevelMixin:
    """Bars of one token's scores over all experts; chosen experts in their palette colour, others grey."""
    num_experts = len(frame)
    sums_to_one = f"{scoring}: the scores sum to 1" if scoring in SUM_TO_ONE else f"{scoring}: scores need not sum to 1"
    chart = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("expert:O", title="expert"),
            y=alt.Y("prob:Q", title=f"router score ({scoring})"),
            color=alt.condition(
                alt.datum.rank > 0, expert_color("expert", num_experts, legend=False), alt.value("#CCCCCC")
            ),
            tooltip=["expert:O", alt.Tooltip("prob:Q", format=".3f"), "rank:O", alt.Tooltip("weight:Q", format=".3f")],
        )
        .properties(height=260, title=alt.Title(f"Token {token_label}", subtitle=f"coloured: chosen; {sums_to_one}"))
    )
    return styled(chart)


def entropy_chart(frame: pd.DataFrame, num_experts: int) -> alt.TopLevelMixin:
    """Routing entropy per token, with the maximum log2(E) (router undecided) as a dashed rule."""
    line = (
        alt.Chart(frame)
        .mark_line(point=len(frame) <= 200)
        .encode(
            x=alt.X("token:Q", title="token #"),
            y=alt.Y("entropy:Q", title="entropy (bits)", scale=alt.Scale(domain=[0, math.log2(num_experts)])),
            tooltip=["token:Q", "text:N", alt.Tooltip("entropy:Q", format=".2f")],
        )
    )
    rule = alt.Chart(pd.DataFrame({"max": [math.log2(num_experts)]})).mark_rule(strokeDash=[6, 4]).encode(y="max:Q")
    title = alt.Title("How undecided the router is, token by token", subtitle=f"dashed: log2({num_experts}), all equal")
    return styled((line + rule).properties(height=220, title=title))


def similarity_chart(frame: pd.DataFrame, layer: int) -> alt.TopLevelMixin:
    """Experts × experts, shaded by the cosine similarity of their weights (the diagonal left blank)."""
    num_experts = int(max(frame["source"].max(), frame["target"].max())) + 1 if len(frame) else 1
    base = alt.Chart(frame).encode(x=alt.X("target:O", title="expert"), y=alt.Y("source:O", title="expert"))
    cells = base.mark_rect().encode(
        color=alt.Color(
            "similarity:Q", title="cosine", scale=alt.Scale(scheme="redblue", domain=[-1, 1], reverse=True)
        ),
        tooltip=["source:O", "target:O", alt.Tooltip("similarity:Q", format=".3f")],
    )
    labels = base.mark_text(fontSize=11).encode(text=alt.Text("similarity:Q", format=".2f"))
    side = min(480, max(220, 30 * num_experts))
    subtitle = "all weights of each expert as one vector · 0: unrelated · 1: copies"
    title = alt.Title(f"How alike are the experts' weights at layer {layer}?", subtitle=subtitle)
    chart = cells + labels if num_experts <= 16 else cells
    return styled(chart.properties(width=side, height=side, title=title))
