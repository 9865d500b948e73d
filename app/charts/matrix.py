"""Expert × expert heatmaps (layer flow, co-activation): shade = share of the row, numbers = token counts."""

from __future__ import annotations

import altair as alt
import pandas as pd

from app.charts.common import styled


def expert_matrix_chart(
    frame: pd.DataFrame, row_title: str, column_title: str, share_title: str, title: str, subtitle: str
) -> alt.TopLevelMixin:
    """Heatmap of a matrix_frame (source, target, count, share): square, sized to the number of experts."""
    num_experts = max(frame["source"].max(), frame["target"].max()) + 1 if len(frame) else 1
    base = alt.Chart(frame).encode(
        x=alt.X("target:O", title=column_title),
        y=alt.Y("source:O", title=row_title),
    )
    cells = base.mark_rect().encode(
        color=alt.Color("share:Q", title=share_title, scale=alt.Scale(scheme="purples", domain=[0, 1])),
        tooltip=["source:O", "target:O", "count:Q", alt.Tooltip("share:Q", format=".0%")],
    )
    labels = base.mark_text(fontSize=12).encode(
        text=alt.condition(alt.datum.count > 0, "count:Q", alt.value("")),
        color=alt.condition(alt.datum.share > 0.5, alt.value("white"), alt.value("black")),
    )
    side = min(560, max(240, 34 * int(num_experts)))
    return styled((cells + labels).properties(height=side, width=side, title=alt.Title(title, subtitle=subtitle)))
