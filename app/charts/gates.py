"""Gate-weight charts: token × expert heatmap, one token's distribution, entropy per token."""

from __future__ import annotations

import math

import altair as alt
import pandas as pd

from app.charts.common import expert_color, styled
from app.charts.labels import EXPERT_OR_OTHER_LABEL, expert_axis, token_columns
from app.palette import BLUES, heat_ink
from moe_core.analyses.gates import binned_entropy
from moe_core.traces.types import SUM_TO_ONE

ENTROPY_POINTS = 300  # past this many tokens the entropy curve is drawn as means of equal bins


def heat_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """gate_heatmap (or grouped_gate_heatmap) plus `ink`: black or white, whichever reads on the cell's blue
    (the domain runs 0 to the window's highest score), so the rank numbers stay legible on the darkest cells;
    and `label`, the number drawn in a cell: the rank of a chosen expert, "+n" on the "other" row for n picks
    among the experts it pools."""
    shown = frame.copy()
    top = float(shown["prob"].max()) if len(shown) else 1.0
    shown["ink"] = [heat_ink(p / top if top > 0 else 0.0, BLUES) for p in shown["prob"]]
    picked = shown["picked"] if "picked" in shown else pd.Series(0, index=shown.index)
    shown["label"] = [
        str(rank) if rank > 0 else f"+{n}" if n > 0 else "" for rank, n in zip(shown["rank"], picked, strict=True)
    ]
    return shown


def _expert_rows(experts: pd.Series) -> list[int]:
    """The heatmap's rows: the named experts in order, then "other" (OTHER = -1) last."""
    named = sorted(int(e) for e in experts.unique() if e >= 0)
    return named + ([-1] if (experts < 0).any() else [])


def gate_heatmap_chart(
    frame: pd.DataFrame, scoring: str, total_tokens: int | None = None, num_experts: int | None = None
) -> alt.TopLevelMixin:
    """Rect per (token, expert), shade = score; chosen cells carry their rank (1 = first choice) in black or
    white by the cell's shade. Token text under the columns; hovering a column outlines it. A grouped frame's
    "other" row (grouped_gate_heatmap) is drawn last; `num_experts` lets the subtitle say what it pools."""
    shown = heat_frame(frame)
    columns = token_columns(shown, total_tokens)
    first, last, total, hover = columns.first, columns.last, columns.total, columns.hover
    rows = _expert_rows(shown["expert"])
    base = alt.Chart(shown).encode(
        x=columns.x,
        y=alt.Y("expert:O", title="expert", sort=rows, axis=alt.Axis(labelExpr=EXPERT_OR_OTHER_LABEL)),
    )
    top = float(shown["prob"].max()) if len(shown) else 1.0
    cells = base.mark_rect().encode(
        color=alt.Color(
            "prob:Q", title=scoring, scale=alt.Scale(range=list(BLUES), interpolate="rgb", domain=[0, top or 1.0])
        ),
        stroke=alt.condition(hover, alt.value("#000000"), alt.value("transparent")),
        strokeWidth=alt.condition(hover, alt.value(2), alt.value(0)),
        tooltip=[
            alt.Tooltip("token:O", title="token #"),
            alt.Tooltip("text:N"),
            alt.Tooltip("expert:O"),
            alt.Tooltip("prob:Q", title=scoring, format=".3f"),
            alt.Tooltip("rank:O", title="chosen as (0 = not)"),
        ],
    )
    chosen = (
        base.transform_filter(alt.datum.label != "")
        .mark_text(fontWeight="bold")
        .encode(text="label:N", color=alt.Color("ink:N", scale=None))
    )
    window = f"tokens {first}–{last} of {total}" if (first, last + 1) != (0, total) else f"all {total} tokens"
    subtitle = [f"{window} · darker: higher score · numbers: the chosen experts' rank (1 = first choice)"]
    if rows[-1:] == [-1]:
        of = f" of {num_experts}" if num_experts else ""
        subtitle.append(f"the {len(rows) - 1} experts{of} chosen most in this window · other: the best score of the "
                        "rest, +n: the token's picks among them")  # fmt: skip
    title = alt.Title("Router scores of every token for every expert", subtitle=subtitle)
    chart = (cells.add_params(hover) + chosen).resolve_scale(color="independent")  # ink is a literal colour
    return styled(chart.properties(height=min(640, max(160, 22 * len(rows))), title=title))


def distribution_chart(frame: pd.DataFrame, scoring: str, token_label: str) -> alt.TopLevelMixin:
    """Bars of one token's scores over all experts; chosen experts in their palette colour, others grey."""
    num_experts = len(frame)
    sums_to_one = f"{scoring}: the scores sum to 1" if scoring in SUM_TO_ONE else f"{scoring}: scores need not sum to 1"
    chart = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("expert:O", axis=expert_axis(num_experts)),
            y=alt.Y("prob:Q", title=f"router score ({scoring})"),
            color=alt.condition(
                alt.datum.rank > 0, expert_color("expert", num_experts, legend=False), alt.value("#CCCCCC")
            ),
            tooltip=["expert:O", alt.Tooltip("prob:Q", format=".3f"), "rank:O", alt.Tooltip("weight:Q", format=".3f")],
        )
        .properties(height=260, title=alt.Title(f"Token {token_label}", subtitle=f"coloured: chosen; {sums_to_one}"))
    )
    return styled(chart)


def entropy_chart(frame: pd.DataFrame, num_experts: int) -> alt.TopLevelMixin:
    """Routing entropy per token, with the maximum log2(E) (router undecided) as a dashed rule. Past
    ENTROPY_POINTS tokens, the mean of each bin of tokens, with a band from its lowest to its highest token."""
    ceiling = math.log2(num_experts)
    y_scale = alt.Scale(domain=[0, ceiling])
    if len(frame) <= ENTROPY_POINTS:
        curve = (
            alt.Chart(frame)
            .mark_line(point=len(frame) <= 200)
            .encode(
                x=alt.X("token:Q", title="token #"),
                y=alt.Y("entropy:Q", title="entropy (bits)", scale=y_scale),
                tooltip=["token:Q", "text:N", alt.Tooltip("entropy:Q", format=".2f")],
            )
        )
        detail = "one point per token"
    else:
        bins = binned_entropy(frame, ENTROPY_POINTS)
        size = int(bins["tokens"].iloc[0])
        base = alt.Chart(bins).encode(x=alt.X("start:Q", title="token #"))
        band = base.mark_area(opacity=0.25).encode(y=alt.Y("low:Q", scale=y_scale), y2="high:Q")
        mean = base.mark_line().encode(
            y=alt.Y("mean:Q", title="entropy (bits)", scale=y_scale),
            tooltip=[
                alt.Tooltip("start:Q", title="from token #"),
                alt.Tooltip("stop:Q", title="to (excl.)"),
                alt.Tooltip("mean:Q", format=".2f"),
                alt.Tooltip("low:Q", format=".2f"),
                alt.Tooltip("high:Q", format=".2f"),
            ],
        )
        curve = band + mean
        detail = f"line: mean of each {size} tokens · band: their lowest to highest"
    rule = alt.Chart(pd.DataFrame({"max": [ceiling]})).mark_rule(strokeDash=[6, 4]).encode(y="max:Q")
    subtitle = f"{detail} · dashed: log2({num_experts}), all experts equal"
    title = alt.Title("How undecided the router is, token by token", subtitle=subtitle)
    return styled((curve + rule).properties(height=220, title=title))


def similarity_chart(frame: pd.DataFrame, layer: int) -> alt.TopLevelMixin:
    """Experts × experts, shaded by the cosine similarity of their weights (the diagonal left blank)."""
    num_experts = int(max(frame["source"].max(), frame["target"].max())) + 1 if len(frame) else 1
    axis = expert_axis(num_experts)
    base = alt.Chart(frame).encode(x=alt.X("target:O", axis=axis), y=alt.Y("source:O", axis=axis))
    cells = base.mark_rect().encode(
        color=alt.Color(
            "similarity:Q", title="cosine", scale=alt.Scale(scheme="redblue", domain=[-1, 1], reverse=True)
        ),
        tooltip=["source:O", "target:O", alt.Tooltip("similarity:Q", format=".3f")],
    )
    labels = base.mark_text().encode(text=alt.Text("similarity:Q", format=".2f"))
    side = min(480, max(220, 30 * num_experts))
    subtitle = "all weights of each expert as one vector · 0: unrelated · 1: copies"
    title = alt.Title(f"How alike are the experts' weights at layer {layer}?", subtitle=subtitle)
    chart = cells + labels if num_experts <= 16 else cells
    return styled(chart.properties(width=side, height=side, title=title))
