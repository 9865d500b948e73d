"""Token routing charts: the token × layer grid of top-1 experts."""

from __future__ import annotations

import altair as alt
import pandas as pd

from app.charts.common import expert_color, styled


def token_layer_grid_chart(grid: pd.DataFrame, num_experts: int) -> alt.TopLevelMixin:
    """Rect per (token, layer): colour = top-1 expert, opacity = its gate weight (Mixtral Fig. 8 style)."""
    num_tokens = grid["token"].nunique()
    chart = (
        alt.Chart(grid)
        .mark_rect(stroke="white", strokeWidth=0.5 if num_tokens <= 200 else 0)
        .encode(
            x=alt.X("token:O", title="token position", axis=alt.Axis(labelOverlap=True, labelAngle=0)),
            y=alt.Y("layer:O", title="MoE layer", sort="descending"),
            color=expert_color("top1", num_experts, "top-1 expert"),
            opacity=alt.Opacity("top1_weight:Q", scale=alt.Scale(domain=[0, 1], range=[0.25, 1]), legend=None),
            tooltip=[
                alt.Tooltip("token:O", title="token #"),
                alt.Tooltip("text:N", title="text"),
                alt.Tooltip("layer:O"),
                alt.Tooltip("top1:N", title="top-1 expert"),
                alt.Tooltip("top1_weight:Q", title="weight", format=".2f"),
            ],
        )
        .properties(
            height=max(120, 36 * grid["layer"].nunique()),
            title=alt.Title(
                "Top-1 expert of every token at every layer", subtitle="shade: gate weight (pale = unsure)"
            ),
        )
    )
    return styled(chart)
