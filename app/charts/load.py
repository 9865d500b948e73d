"""Expert-load charts: tokens per expert per layer against the uniform line, and balance per layer."""

from __future__ import annotations

import altair as alt
import pandas as pd

from app.charts.common import expert_color, styled
from app.charts.labels import expert_axis
from app.charts.matrix import expert_matrix_chart

LOAD_ROW_WIDTH = 920  # px the small multiples of one row share: the main column at a 1440 px window, less the y axis
GROUPED_BARS = 96  # up to this many bars (layers × experts) in one chart that fills the page's width
SMALL_MULTIPLES = (32, 64)  # up to this many layers and experts: a bar chart per layer; more: one heatmap
LOAD_RATIO_MAX = (
    4.0  # the heatmap's darkest orange: 4x an even share and above (one hot expert would wash out the rest)
)
HEATMAP_ROW_PX = (10, 28)  # a heatmap row's height, least and most: 61 layers fit on a screen, 4 are not slivers


def load_heatmap_frame(frame: pd.DataFrame, count: str) -> pd.DataFrame:
    """What the load heatmap sends the browser: per (layer, expert) the count and its ratio to an even split,
    in small integer and float types (61 layers × 256 experts is 15,616 cells: 7 bytes each, not 48)."""
    uniform = frame[f"{count}_uniform"].to_numpy()
    ratio = frame[count].to_numpy() / uniform
    return pd.DataFrame(
        {
            "layer": frame["layer"].astype("int16"),
            "expert": frame["expert"].astype("int16"),
            count: frame[count].astype("int32"),
            "ratio": ratio.astype("float32"),
        }
    )


def load_heatmap_chart(frame: pd.DataFrame, count: str, num_experts: int, title: alt.Title) -> alt.TopLevelMixin:
    """Layers × experts, shaded by load over an even split (white = even): every expert of every layer at once,
    where bars would be slivers (48-61 layers of 128-256 experts)."""
    cells = load_heatmap_frame(frame, count)
    num_layers = cells["layer"].nunique()
    chart = (
        alt.Chart(cells)
        .mark_rect(invalid=None)  # no per-cell validity filter: every ratio is finite (an even share is > 0)
        .encode(
            x=alt.X("expert:O", axis=expert_axis(num_experts)),
            y=alt.Y("layer:O", title="MoE layer", axis=alt.Axis(labelOverlap="greedy")),
            color=alt.Color(
                "ratio:Q",
                title=f"× even ({LOAD_RATIO_MAX:g}+ darkest)",
                scale=alt.Scale(scheme="blueorange", domainMin=0, domainMid=1, domainMax=LOAD_RATIO_MAX, clamp=True),
            ),
            tooltip=[
                "layer:O",
                alt.Tooltip("expert:O"),
                f"{count}:Q",
                alt.Tooltip("ratio:Q", title="× even", format=".2f"),
            ],
        )
    )
    row = min(max(HEATMAP_ROW_PX[0], 900 // max(num_layers, 1)), HEATMAP_ROW_PX[1])
    subtitle = f"{num_layers} layers × {num_experts} experts · colour: load over an even split (white: even, "
    subtitle += "orange: busier, blue: idler)"
    return styled(chart.properties(height=row * num_layers, title=alt.Title(title.text, subtitle=subtitle)))


def load_chart(frame: pd.DataFrame, count: str, num_experts: int) -> alt.TopLevelMixin:
    """Bars per expert per layer, with a dashed line at the uniform load of each layer.

    Up to GROUPED_BARS bars: one chart, a group of bars per layer, as wide as the page at any window size.
    More: small multiples per layer (four or two to a row, of fixed width, so each bar stays wide enough); past
    SMALL_MULTIPLES layers or experts, a layers × experts heatmap (load_heatmap_chart).
    """
    label = "top-1 tokens" if count == "top1" else "top-k slots"
    title = alt.Title(f"Load per expert ({label})", subtitle="dashed: perfectly even")
    num_layers = frame["layer"].nunique()
    tooltip = [
        "layer:O",
        alt.Tooltip("expert:O"),
        f"{count}:Q",
        alt.Tooltip(f"{count}_uniform:Q", title="even", format=".1f"),
    ]
    if num_layers * num_experts <= GROUPED_BARS:
        x = alt.X(
            "layer:O",
            title="MoE layer",
            scale=alt.Scale(paddingInner=0.15),
            axis=alt.Axis(labelExpr="'layer ' + datum.label"),
        )
        bars = (
            alt.Chart()
            .mark_bar()
            .encode(
                x=x,
                xOffset=alt.XOffset("expert:O", scale=alt.Scale(paddingInner=0.1)),
                y=alt.Y(f"{count}:Q", title=label),
                color=expert_color("expert", num_experts),
                tooltip=tooltip,
            )
        )
        even = (
            alt.Chart()
            .mark_bar(filled=False, stroke="black", strokeDash=[6, 4], strokeWidth=1.5)
            .encode(x=x, y=f"mean({count}_uniform):Q", y2=f"mean({count}_uniform):Q")
        )
        return styled(alt.layer(bars, even, data=frame).properties(height=260, title=title))
    if num_layers > SMALL_MULTIPLES[0] or num_experts > SMALL_MULTIPLES[1]:
        return load_heatmap_chart(frame, count, num_experts, title)
    columns = max(1, min(num_layers, 4 if num_experts <= 16 else 2))
    bars = (
        alt.Chart()
        .mark_bar()
        .encode(
            x=alt.X("expert:O", axis=expert_axis(num_experts)),
            y=alt.Y(f"{count}:Q", title=label),
            color=expert_color("expert", num_experts, legend=False),
            tooltip=tooltip,
        )
    )
    uniform = alt.Chart().mark_rule(strokeDash=[6, 4], color="black").encode(y=f"mean({count}_uniform):Q")
    chart = (
        alt.layer(bars, uniform, data=frame)
        .properties(height=130, width=LOAD_ROW_WIDTH // columns - 20)
        .facet(facet=alt.Facet("layer:O", title="MoE layer"), columns=columns)
    )
    return styled(chart.properties(title=title))


FIGURES = {"max_over_mean": "max / mean load", "switch_aux_loss": "Switch aux (top-1 f)"}


def balance_chart(frame: pd.DataFrame) -> alt.TopLevelMixin:
    """Max/mean load and the Switch auxiliary loss per layer (1.0 = perfectly balanced for both)."""
    long = frame.melt(id_vars="layer", value_vars=[f for f in FIGURES if f in frame], var_name="figure")
    long["figure"] = long["figure"].map(FIGURES)
    chart = (
        alt.Chart(long)
        .mark_line(point=True)
        .encode(
            x=alt.X("layer:O", title="MoE layer", axis=alt.Axis(labelOverlap="greedy")),
            y=alt.Y("value:Q", title="value (1 = balanced)", scale=alt.Scale(zero=False)),
            color=alt.Color("figure:N", title=None),
            tooltip=["layer:O", "figure:N", alt.Tooltip("value:Q", format=".3f")],
        )
        .properties(height=220, title="Balance per layer")
    )
    return styled(chart)


def coactivation_chart(frame: pd.DataFrame, layer: int, num_experts: int | None = None) -> alt.TopLevelMixin:
    """OLMoE-style co-activation heatmap: row i, column j = share of expert i's tokens also routed to j."""
    return expert_matrix_chart(
        frame,
        row_title="expert i",
        column_title="also routed to expert j",
        share_title="share of i's tokens",
        title=f"Which experts work together at layer {layer}",
        subtitle="colour and numbers: share of expert i's tokens also routed to j (darker = more)",
        num_experts=num_experts,
    )


def domain_chart(frame: pd.DataFrame, layer: int) -> alt.TopLevelMixin:
    """Domains × experts, shaded by each expert's share of the domain's slots relative to an even 1/E."""
    uniform = float(frame["uniform"].iloc[0])
    num_experts = frame["expert"].nunique()
    base = alt.Chart(frame).encode(
        x=alt.X("expert:O", axis=expert_axis(num_experts)),
        y=alt.Y("domain:N", title=None, sort=None),
    )
    cells = base.mark_rect().encode(
        color=alt.Color(
            "share:Q",
            title="share of slots",
            scale=alt.Scale(scheme="blueorange", domainMid=uniform, domainMin=0),
        ),
        tooltip=["domain:N", "expert:O", alt.Tooltip("share:Q", format=".1%"), "slots:Q"],
    )
    far_from_even = (alt.datum.share > 2.5 * uniform) | (alt.datum.share < 0.3 * uniform)  # dark cells
    labels = base.mark_text().encode(
        text=alt.Text("share:Q", format=".0%"),
        color=alt.condition(far_from_even, alt.value("white"), alt.value("black")),
    )
    title = alt.Title(
        f"Routing by domain at layer {layer}",
        subtitle=f"white: an even share (1/{num_experts}) · orange: more · blue: less",
    )
    layered = cells + labels if num_experts <= 16 else cells  # 64 numbers a row would not fit
    return styled(layered.properties(height=44 * frame["domain"].nunique(), width=LOAD_ROW_WIDTH - 160, title=title))
