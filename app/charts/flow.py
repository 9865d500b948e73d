"""Layer-flow chart: top-1 expert at one MoE layer against top-1 at the next."""

from __future__ import annotations

import altair as alt
import pandas as pd

from app.charts.matrix import expert_matrix_chart


def transition_chart(frame: pd.DataFrame, source_layer: int, target_layer: int) -> alt.TopLevelMixin:
    """Heatmap: row = expert at the first layer, column = expert at the next; shade = share of the row."""
    return expert_matrix_chart(
        frame,
        row_title=f"top-1 expert at layer {source_layer}",
        column_title=f"top-1 expert at layer {target_layer}",
        share_title="share of row",
        title=f"Where tokens go from layer {source_layer} to layer {target_layer}",
        subtitle="numbers: tokens",
    )
