"""Layer-flow chart: top-1 expert at one MoE layer against top-1 at the next."""

from __future__ import annotations

import altair as alt
import pandas as pd

from app.charts.common import styled


def transition_chart(frame: pd.DataFrame, source_layer: int, target_layer: int) -> alt.TopLevelMixin:
    """Heatmap: row = expert at the first layer, column = expert at the next; shade = share of the row."""
    num_experts = frame["source"].nunique()
    base = alt.Chart(frame).encode(
        x=alt.X("target:O", title=f"top-1 expert at layer {target_layer}"),
        y=alt.Y("source:O", title=f"top-1 expert at layer {source_layer}"),
    )
    cells = base.mark_rect().encode(
        color=alt.Color("share:Q", title="share of row", scale=alt.Scale(scheme="purples", domain=[0, 1])),
        tooltip=["source:O", "target:O", "count:Q", alt.Tooltip("share:Q", format=".0%")],
    )
    labels = base.mark_text(fontSize=12).encode(
        text=alt.condition(alt.datum.count > 0, "count:Q", alt.value("")),
        color=alt.condition(alt.datum.share > 0.5, alt.value("white"), alt.value("black")),
    )
    side = min(560, max(240, 34 * num_experts))
    title = alt.Title(f"Where tokens go from layer {source_layer} to layer {target_layer}", subtitle="numbers: tokens")
    return styled((cells + labels).properties(height=side, width=side, title=title))
