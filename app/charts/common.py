"""Encodings every chart shares, so colours and labels match across views and exports."""

from __future__ import annotations

import altair as alt

from app.palette import expert_colors

FONT_SIZE = 14
CHART_HEIGHT = 320


def expert_color(field: str, num_experts: int, title: str = "expert", legend: bool = True) -> alt.Color:
    """Nominal colour by expert index with the app's fixed palette (expert i is always the same colour); the
    legend names experts "E0", "E1", … exactly as the chips above the text do."""
    return alt.Color(
        f"{field}:N",
        title=title,
        scale=alt.Scale(domain=list(range(num_experts)), range=list(expert_colors(num_experts))),
        legend=alt.Legend(
            orient="top", direction="horizontal", columns=min(num_experts, 16), labelExpr="'E' + datum.label"
        )
        if legend
        else None,
    )


def styled(chart: alt.TopLevelMixin) -> alt.TopLevelMixin:
    """Readable on a projector: larger labels and titles."""
    return (
        chart.configure_axis(labelFontSize=FONT_SIZE, titleFontSize=FONT_SIZE)
        .configure_axisX(labelAngle=0)
        .configure_legend(labelFontSize=FONT_SIZE, titleFontSize=FONT_SIZE)
        .configure_title(fontSize=FONT_SIZE + 2)
    )
