"""Encodings every chart shares, so colours and labels match across views and exports."""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt

from app.charts.labels import TOKEN_LABEL_STYLE
from app.palette import OTHER_COLOR, OTHER_SHADE, expert_colors

FONT_SIZE = 14
PRESENT_FONT_SIZE = 20  # presentation mode: axes, legends and titles read from the back of a room
CELL_FONT_SIZE = 12  # numbers drawn inside heatmap cells (text marks without a size of their own), scaled alike
# Token text under a column per token: one label per column, so smaller than other axes; 16 px in the mode.
TOKEN_FONT_SIZE, PRESENT_TOKEN_FONT_SIZE = 12, 16
CHART_HEIGHT = 320


def expert_color(
    field: str, num_experts: int, title: str = "expert", legend: bool = True, shown: Sequence[int] | None = None
) -> alt.Color:
    """Nominal colour by expert index with the app's fixed palette (expert i is always the same colour); the
    legend names experts "E0", "E1", … exactly as the chips above the text do.

    `shown` (palette.coloured_experts): only these experts keep their colour, and the field's OTHER_SHADE value
    is the grey of all the others, named "other" in the legend.
    """
    colors = expert_colors(num_experts)
    experts = list(range(num_experts)) if shown is None else list(shown)
    domain = experts if shown is None else [*experts, OTHER_SHADE]
    palette = [colors[e] for e in experts] + ([] if shown is None else [OTHER_COLOR])
    label = "'E' + datum.label" if shown is None else f"datum.value == {OTHER_SHADE} ? 'other' : 'E' + datum.label"
    return alt.Color(
        f"{field}:N",
        title=title,
        scale=alt.Scale(domain=domain, range=palette),
        legend=alt.Legend(orient="top", direction="horizontal", columns=min(len(domain), 17), labelExpr=label)
        if legend
        else None,
    )


def styled(chart: alt.TopLevelMixin, present: bool = False) -> alt.TopLevelMixin:
    """Readable on a projector: larger labels and titles; larger still in presentation mode.

    Each call replaces the axis, legend, title and cell-number config, so show_chart can restyle a chart a view
    built (numbers in heatmap cells grow with the axes in presentation mode).
    Legend labels and titles are never cut ("follow their grou…"): a limit of 0 is none.
    The config is set in one shallow copy: Altair's configure_* methods each copy the whole chart, and six of
    them made up a third of building the token grid, the chart every visit draws first.
    No mark gets an ARIA description: Vega-Lite builds one string per mark item (every heatmap cell) and
    Streamlit's front end evaluates it in Vega's expression interpreter, which took a third of drawing a
    61 x 256 heatmap; the charts are drawn on a canvas, where no screen reader sees those descriptions anyway.
    """
    size = PRESENT_FONT_SIZE if present else FONT_SIZE
    styles = {
        "axis": alt.AxisConfig(labelFontSize=size, titleFontSize=size),
        "text": alt.MarkConfig(fontSize=round(CELL_FONT_SIZE * size / FONT_SIZE)),
        "axisX": alt.AxisConfig(labelAngle=0),
        "legend": alt.LegendConfig(
            labelFontSize=size, titleFontSize=size, symbolSize=size * 8, labelLimit=0, titleLimit=0
        ),
        "header": alt.HeaderConfig(labelFontSize=size, titleFontSize=size),  # facet row and column labels
        "title": alt.TitleConfig(fontSize=size + 2, subtitleFontSize=size - 1),
        "mark": alt.MarkConfig(aria=False),  # no per-item ARIA description: see the docstring
        "style": {TOKEN_LABEL_STYLE: {"labelFontSize": PRESENT_TOKEN_FONT_SIZE if present else TOKEN_FONT_SIZE}},
    }
    copy = chart.copy(deep=False)
    config = alt.Config() if chart.config is alt.Undefined else chart.config.copy(deep=False)
    for name, style in styles.items():
        config[name] = style
    copy.config = config
    return copy
