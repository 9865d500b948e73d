"""Token routing charts: the token × layer grid of top-1 experts."""

from __future__ import annotations

import altair as alt
import pandas as pd

from app.charts.common import expert_color, styled
from app.charts.labels import token_columns
from app.palette import expert_colors, text_color_on

DOUBT_DOT_PX = 9  # diameter of the dot in a cell whose top-1 weight is 0 (the router put nothing on its pick)


def grid_frame(grid: pd.DataFrame, num_experts: int) -> pd.DataFrame:
    """token_layer_grid plus what the chart draws: `expert` ("E3", as the chips say) and `ink`, black or white
    for a dot on the expert's colour."""
    colors = expert_colors(num_experts)
    shown = grid.copy()
    shown["expert"] = ["dropped" if e < 0 else f"E{e}" for e in shown["top1"]]
    shown["ink"] = ["#000000" if e < 0 else text_color_on(colors[e]) for e in shown["top1"]]
    return shown


def doubt_legend(floor: float) -> list[float]:
    """Legend entries for the doubt dot: four weights from the fullest dot (floor) to none (1)."""
    return [round(floor + (1 - floor) * step / 3, 2) for step in range(4)]


def token_layer_grid_chart(
    grid: pd.DataFrame, num_experts: int, total_tokens: int | None = None, top_k: int = 1
) -> alt.TopLevelMixin:
    """Rect per (token, layer): colour = top-1 expert at full strength, whatever the weight; the router's doubt
    is a separate neutral dot, larger as the top-1 weight falls (shading the colour instead made a pale E5 look
    like E0). The dot is largest at 1/top_k (an even split of the top-k; 0 for top-1 routers) and gone at 1.
    Token text under the columns; hovering a column outlines it. `total_tokens` states the window."""
    floor = 1 / top_k if top_k > 1 else 0.0
    shown = grid_frame(grid, num_experts)
    columns = token_columns(shown, total_tokens)
    first, last, total, hover = columns.first, columns.last, columns.total, columns.hover
    base = alt.Chart(shown).encode(
        x=columns.x,
        y=alt.Y("layer:O", title="MoE layer", sort="descending"),
        tooltip=[
            alt.Tooltip("token:O", title="token #"),
            alt.Tooltip("text:N", title="text"),
            alt.Tooltip("layer:O"),
            alt.Tooltip("expert:N", title="top-1 expert"),
            alt.Tooltip("top1_weight:Q", title="weight", format=".2f"),
        ],
    )
    cells = base.mark_rect().encode(
        color=expert_color("top1", num_experts, "top-1 expert"),
        stroke=alt.condition(hover, alt.value("#000000"), alt.value("#FFFFFF")),
        strokeWidth=alt.condition(hover, alt.value(2), alt.value(0.5)),
    )
    doubt = base.mark_circle(opacity=0.85).encode(
        size=alt.Size(
            "top1_weight:Q",
            title="top-1 weight (dot: unsure)",
            scale=alt.Scale(domain=[floor, 1], range=[DOUBT_DOT_PX**2, 0], clamp=True),
            legend=alt.Legend(orient="top", values=doubt_legend(floor), format=".2f"),
        ),
        color=alt.Color("ink:N", scale=None),
    )
    window = f"tokens {first}–{last} of {total}" if (first, last + 1) != (0, total) else f"all {total} tokens"
    subtitle = f"{window} · colour: top-1 expert · dot: the router was unsure (bigger = lower top-1 weight)"
    layers = cells.add_params(hover) + doubt
    if shown["top1_weight"].isna().all():  # a compact trace (engine dump): no weights, so no doubt to show
        subtitle = f"{window} · colour: top-1 expert · this trace has no gate weights, so no dots"
        layers = cells.add_params(hover)
    chart = layers.properties(
        height=max(120, 36 * shown["layer"].nunique()),
        title=alt.Title("Top-1 expert of every token at every layer", subtitle=subtitle),
    )
    return styled(chart)
