"""Expert-load charts: tokens per expert per layer against the uniform line, and balance per layer."""

from __future__ import annotations

import altair as alt
import pandas as pd

from app.charts.common import expert_color, styled
from app.charts.matrix import expert_matrix_chart

LOAD_ROW_WIDTH = 920  # px the small multiples of one row share: the main column at a 1440 px window, less the y axis


def load_chart(frame: pd.DataFrame, count: str, num_experts: int) -> alt.TopLevelMixin:
    """Bars per expert, small multiples per layer filling the row; dashed rule at the uniform load.

    Four layers to a row, or two when there are many experts, so each bar stays wide enough to read.
    """
    num_layers = frame["layer"].nunique()
    columns = max(1, min(num_layers, 4 if num_experts <= 16 else 2))
    label = "top-1 tokens" if count == "top1" else "top-k slots"
    bars = (
        alt.Chart()
        .mark_bar()
        .encode(
            x=alt.X("expert:O", title="expert"),
            y=alt.Y(f"{count}:Q", title=label),
            color=expert_color("expert", num_experts, legend=False),
            tooltip=["layer:O", "expert:O", f"{count}:Q"],
        )
    )
    uniform = alt.Chart().mark_rule(strokeDash=[6, 4], color="black").encode(y=f"mean({count}_uniform):Q")
    chart = (
        alt.layer(bars, uniform, data=frame)
        .properties(height=130, width=LOAD_ROW_WIDTH // columns - 20)
        .facet(facet=alt.Facet("layer:O", title="MoE layer"), columns=columns)
    )
    return styled(chart.properties(title=alt.Title(f"Load per expert ({label})", subtitle="dashed: perfectly even")))


FIGURES = {"max_over_mean": "max / mean load", "aux_loss": "Switch aux loss"}


def balance_chart(frame: pd.DataFrame) -> alt.TopLevelMixin:
    """Max/mean load and the Switch auxiliary loss per layer (1.0 = perfectly balanced for both)."""
    long = frame.melt(id_vars="layer", value_vars=list(FIGURES), var_name="figure")
    long["figure"] = long["figure"].map(FIGURES)
    chart = (
        alt.Chart(long)
        .mark_line(point=True)
        .encode(
            x=alt.X("layer:O", title="MoE layer"),
            y=alt.Y("value:Q", title="value (1 = balanced)", scale=alt.Scale(zero=False)),
            color=alt.Color("figure:N", title=None),
            tooltip=["layer:O", "figure:N", alt.Tooltip("value:Q", format=".3f")],
        )
        .properties(height=220, title="Balance per layer")
    )
    return styled(chart)


def coactivation_chart(frame: pd.DataFrame, layer: int) -> alt.TopLevelMixin:
    """OLMoE-style co-activation heatmap: row i, column j = share of expert i's tokens also routed to j."""
    return expert_matrix_chart(
        frame,
        row_title="expert i",
        column_title="also routed to expert j",
        share_title="share of i's tokens",
        title=f"Which experts work together at layer {layer}",
        subtitle="numbers: tokens routed to both",
    )
