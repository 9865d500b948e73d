"""Token routing charts: the token × layer grid of top-1 experts."""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import pandas as pd

from app.charts.common import expert_color, styled
from app.charts.labels import token_columns
from app.palette import OTHER_COLOR, OTHER_SHADE, coloured_experts, expert_colors, text_color_on
from moe_core.traces.types import DROPPED

DOUBT_DOT_PX = 9  # diameter of the dot in a cell whose top-1 weight is 0 (the router put nothing on its pick)
GRID_ROW_PX = (14, 36)  # a layer row's height, least and most
GRID_HEIGHT_PX = 860  # the grid's plot height once its layers would make it taller at the most


def grid_frame(grid: pd.DataFrame, num_experts: int, coloured: Sequence[int] | None = None) -> pd.DataFrame:
    """token_layer_grid plus what the chart draws: `expert` ("E3", as the chips say), `shade` (the expert, or
    OTHER_SHADE for one outside `coloured`, drawn grey) and `ink`, black or white for a dot on that colour."""
    colors = expert_colors(num_experts)
    keep = set(range(num_experts)) if coloured is None else set(coloured)
    shown = grid.copy()
    shown["expert"] = ["dropped" if e < 0 else f"E{e}" for e in shown["top1"]]
    shown["shade"] = [e if e < 0 or e in keep else OTHER_SHADE for e in shown["top1"]]
    shown["ink"] = [
        "#000000" if e == DROPPED else text_color_on(OTHER_COLOR if e == OTHER_SHADE else colors[e])
        for e in shown["shade"]
    ]
    return shown


def grid_row_px(num_layers: int) -> int:
    """Height of one layer's row: roomy for a few layers, down to GRID_ROW_PX[0] so 61 layers fit a screen."""
    return min(max(GRID_ROW_PX[0], GRID_HEIGHT_PX // max(num_layers, 1)), GRID_ROW_PX[1])


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
    coloured = coloured_experts(grid["top1"].to_numpy(), num_experts)
    shown = grid_frame(grid, num_experts, coloured)
    row = grid_row_px(shown["layer"].nunique())
    dot = min(DOUBT_DOT_PX, row // 2)  # half a row at most: 61 rows of dots would hide their colours
    columns = token_columns(shown, total_tokens)
    first, last, total, hover = columns.first, columns.last, columns.total, columns.hover
    base = alt.Chart(shown).encode(
        x=columns.x,
        y=alt.Y("layer:O", title="MoE layer", sort="descending", axis=alt.Axis(labelOverlap="greedy")),
        tooltip=[
            alt.Tooltip("token:O", title="token #"),
            alt.Tooltip("text:N", title="text"),
            alt.Tooltip("layer:O"),
            alt.Tooltip("expert:N", title="top-1 expert"),
            alt.Tooltip("top1_weight:Q", title="weight", format=".2f"),
        ],
    )
    cells = base.mark_rect().encode(
        color=expert_color("top1" if coloured is None else "shade", num_experts, "top-1 expert", shown=coloured),
        stroke=alt.condition(hover, alt.value("#000000"), alt.value("#FFFFFF")),
        strokeWidth=alt.condition(hover, alt.value(2), alt.value(0.5)),
    )
    doubt = base.mark_circle(opacity=0.85).encode(
        size=alt.Size(
            "top1_weight:Q",
            title="top-1 weight (dot: unsure)",
            scale=alt.Scale(domain=[floor, 1], range=[dot**2, 0], clamp=True),
            legend=alt.Legend(orient="top", values=doubt_legend(floor), format=".2f"),
        ),
        color=alt.Color("ink:N", scale=None),
    )
    window = f"tokens {first}–{last} of {total}" if (first, last + 1) != (0, total) else f"all {total} tokens"
    colour = "top-1 expert"
    if coloured is not None:
        colour = f"the {len(coloured)} most frequent top-1 experts of this window (of {num_experts}), grey: the rest"
    subtitle = f"{window} · colour: {colour} · dot: the router was unsure (bigger = lower top-1 weight)"
    layers = cells.add_params(hover) + doubt
    if shown["top1_weight"].isna().all():  # a compact trace (engine dump): no weights, so no doubt to show
        subtitle = f"{window} · colour: {colour} · this trace has no gate weights, so no dots"
        layers = cells.add_params(hover)
    chart = layers.properties(
        height=max(120, row * shown["layer"].nunique()),
        title=alt.Title("Top-1 expert of every token at every layer", subtitle=subtitle),
    )
    return styled(chart)
