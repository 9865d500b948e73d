"""Expert × expert heatmaps (layer flow, co-activation) and the layer-flow overview.

In a heatmap the colour and the number are the same quantity, the share of the row, and each row says how
many tokens that share is of. A share of a handful of tokens means little (one token makes a 100% cell), so
rows under MIN_ROW_TOKENS are drawn grey, without numbers.
"""

from __future__ import annotations

import json

import altair as alt
import pandas as pd

from app.charts.common import styled
from app.charts.labels import EXPERT_OR_OTHER_LABEL
from app.palette import PURPLES, heat_ink
from moe_core.analyses.matrix import OTHER

MIN_ROW_TOKENS = 5  # rows with fewer tokens are greyed out: their shares are mostly chance
THIN_ROW_COLOR = "#E4E4E4"
NUMBERS_UP_TO = 17  # rows or columns: more would not leave room for a number in each cell
MATRIX_EXPERTS = 16  # experts named in a matrix (the busiest); the rest are pooled as "other" or left out


def matrix_cells(frame: pd.DataFrame, min_row: int = MIN_ROW_TOKENS) -> pd.DataFrame:
    """matrix_frame plus what the heatmap draws: `thin` (the row has fewer than `min_row` tokens), `label`
    (the share as "42%"; empty for 0 and in thin rows) and `ink` (black or white on the cell's purple)."""
    cells = frame.copy()
    cells["thin"] = cells["row_total"] < min_row
    cells["label"] = [
        "" if thin or count == 0 else "<1%" if share < 0.005 else f"{share:.0%}"
        for thin, count, share in zip(cells["thin"], cells["count"], cells["share"], strict=True)
    ]
    cells["ink"] = [heat_ink(share, PURPLES) for share in cells["share"]]
    return cells


def row_label_expr(frame: pd.DataFrame) -> str:
    """y-axis labelExpr: "E3 · 12" for expert 3's row of 12 tokens, "other · 300" for the pooled row (numbers
    only, so nothing to escape). Rows of every expert 0…E-1: a list by expert; a grouped matrix: a lookup."""
    totals = frame.drop_duplicates("source").set_index("source")["row_total"]
    if (frame["source"] >= 0).all():
        num_experts = int(max(frame["source"].max(), frame["target"].max())) + 1 if len(frame) else 1
        by_expert = [int(totals.get(expert, 0)) for expert in range(num_experts)]
        return f"'E' + datum.label + ' · ' + {json.dumps(by_expert)}[datum.value]"
    by_row = {str(int(expert)): int(total) for expert, total in totals.items()}
    return f"({EXPERT_OR_OTHER_LABEL}) + ' · ' + {json.dumps(by_row)}['' + datum.value]"


def grouping_note(frame: pd.DataFrame, num_experts: int | None) -> str:
    """What a grouped matrix shows of the E experts ('' when it shows them all), for the subtitle."""
    shown = int((frame["source"].drop_duplicates() >= 0).sum())
    if num_experts is None or shown >= num_experts:
        return ""
    rest = num_experts - shown
    if (frame["source"] == OTHER).any():
        return f"the {shown} busiest of {num_experts} experts; the other {rest} pooled as 'other'"
    return f"the {shown} busiest of {num_experts} experts; the other {rest} left out"


def axis_order(cells: pd.DataFrame) -> list[int]:
    """One order for rows and columns, so the diagonal is a diagonal: the rows' order (E0…E7, or busiest first
    and "other" last), then any column expert that heads no row. In order of appearance the columns began where
    the first row's first pair did (E1…E7, E0 in co-activation, which has no E0–E0 cell)."""
    rows = [int(expert) for expert in dict.fromkeys(cells["source"])]
    return rows + [int(expert) for expert in dict.fromkeys(cells["target"]) if expert not in set(rows)]


def expert_matrix_chart(
    frame: pd.DataFrame,
    row_title: str,
    column_title: str,
    share_title: str,
    title: str,
    subtitle: str,
    num_experts: int | None = None,
) -> alt.TopLevelMixin:
    """Heatmap of a matrix_frame or grouped_matrix_frame (source, target, count, share, row_total): square,
    sized to its rows, which keep the frame's order (a grouped one: busiest first, "other" last).

    Colour and number are both the share of the row; the row labels carry the row's tokens; thin rows grey.
    `num_experts` (E) lets the subtitle say how many experts a grouped frame names.
    """
    cells = matrix_cells(frame)
    side_count = max(cells["source"].nunique(), cells["target"].nunique()) if len(cells) else 1
    order = axis_order(cells)
    base = alt.Chart(cells).encode(
        x=alt.X(
            "target:O",
            title=column_title,
            sort=order,
            axis=alt.Axis(labelExpr=EXPERT_OR_OTHER_LABEL, labelAngle=-90 if side_count > 12 else 0),
        ),
        y=alt.Y(
            "source:O", title=f"{row_title} · its tokens", sort=order, axis=alt.Axis(labelExpr=row_label_expr(cells))
        ),
    )
    shade = alt.Color("share:Q", title=share_title, scale=alt.Scale(range=list(PURPLES), interpolate="rgb",
                      domain=[0, 1]), legend=alt.Legend(format=".0%"))  # fmt: skip
    rects = base.mark_rect().encode(
        color=alt.condition(alt.datum.thin, alt.value(THIN_ROW_COLOR), shade),
        tooltip=[
            alt.Tooltip("source:O", title="row expert"),
            alt.Tooltip("target:O", title="column expert"),
            alt.Tooltip("count:Q", title="tokens"),
            alt.Tooltip("row_total:Q", title="tokens in the row"),
            alt.Tooltip("share:Q", title="share of the row", format=".0%"),
        ],
    )
    layered = rects
    if side_count <= NUMBERS_UP_TO:
        labels = base.mark_text().encode(text="label:N", color=alt.Color("ink:N", scale=None))
        layered = (rects + labels).resolve_scale(color="independent")
    side = min(560, max(240, 34 * side_count))
    notes = [grouping_note(cells, num_experts), f"grey rows: under {MIN_ROW_TOKENS} tokens, too few for a share"]
    lines = [subtitle, " · ".join(note for note in notes if note)]  # two lines: one would run past the square
    return styled(layered.properties(height=side, width=side, title=alt.Title(title, subtitle=lines)))


FIRST_CHOICE, ANY_CHOICE = "top-1 expert", "an expert"  # what a flow row counts: first choices, or sets (unranked)


def flow_pair_chart(
    frame: pd.DataFrame, source_layer: int, target_layer: int, num_experts: int | None = None,
    chosen: str = FIRST_CHOICE,
) -> alt.TopLevelMixin:  # fmt: skip
    """Layer flow of one pair: row = top-1 expert at the first layer (`chosen`: any of a token's experts, for an
    unranked trace), column = at the next; share of the row."""
    return expert_matrix_chart(
        frame,
        row_title=f"{chosen} at layer {source_layer}",
        column_title=f"{chosen} at layer {target_layer}",
        share_title="share of row",
        title=f"Where tokens go from layer {source_layer} to layer {target_layer}",
        subtitle="colour and numbers: share of the row's tokens (darker = more)",
        num_experts=num_experts,
    )


FLOW_SERIES = {
    "followed": "follow their group's path",
    "shuffled": "chance: next layer shuffled",
    "even": "chance: even next layer (1/E)",
}


def flow_overview_chart(summary: pd.DataFrame, chosen_from: int | None = None) -> alt.TopLevelMixin:
    """All layer pairs at once (a flow_summary): the share of tokens following their group's most common path,
    against the two chance levels. The pair drawn in detail below is marked."""
    long = summary.assign(pair=[f"{a}→{b}" for a, b in zip(summary["from_layer"], summary["to_layer"], strict=True)])
    long = long.melt(id_vars=["pair", "from_layer", "tokens"], value_vars=list(FLOW_SERIES), var_name="series")
    long["series"] = long["series"].map(FLOW_SERIES)
    order = [f"{a}→{b}" for a, b in zip(summary["from_layer"], summary["to_layer"], strict=True)]
    axis = alt.Axis(labelOverlap="greedy")  # 60 pairs of a 61-layer model: every other label
    base = alt.Chart(long).encode(x=alt.X("pair:O", title="MoE layer pair", sort=order, axis=axis))
    lines = base.mark_line(point=True).encode(
        y=alt.Y("value:Q", title="share of tokens", axis=alt.Axis(format=".0%"), scale=alt.Scale(domain=[0, 1])),
        color=alt.Color(
            "series:N", title=None, sort=list(FLOW_SERIES.values()),
            scale=alt.Scale(domain=list(FLOW_SERIES.values()), range=["#54278F", "#888888", "#BBBBBB"]),
            legend=alt.Legend(orient="top", labelLimit=400),
        ),
        strokeDash=alt.StrokeDash(
            "series:N", sort=list(FLOW_SERIES.values()), legend=None,
            scale=alt.Scale(domain=list(FLOW_SERIES.values()), range=[[1, 0], [6, 4], [2, 3]]),
        ),
        tooltip=["pair:N", "series:N", alt.Tooltip("value:Q", format=".1%"), "tokens:Q"],
    )  # fmt: skip
    layered = lines
    if chosen_from is not None and (summary["from_layer"] == chosen_from).any():
        chosen = order[int((summary["from_layer"] == chosen_from).to_numpy().argmax())]
        marker = alt.Chart(pd.DataFrame({"pair": [chosen]})).mark_rule(color="#B0B0B0", strokeWidth=8, opacity=0.35)
        layered = marker.encode(x=alt.X("pair:O", sort=order)) + lines
    title = alt.Title(
        "Every layer pair: do tokens keep travelling together?",
        subtitle="above the grey chance lines: the previous layer's expert predicts the next · wide grey: shown below",
    )
    return styled(layered.properties(height=220, title=title))


PAIR_CELL_PX = 14  # one cell of a small-multiple heatmap
PAIR_EXPERTS = 8  # experts named in each small multiple (its rows and columns), the rest pooled as "other"
PAIR_COLUMNS = 6  # small multiples per row


def flow_pairs_chart(
    frame: pd.DataFrame, num_experts: int, chosen_from: int | None = None, chosen: str = FIRST_CHOICE
) -> alt.TopLevelMixin:
    """Small multiples of every consecutive layer pair's flow (all_pairs_frame): each a heatmap of the share of
    the row, rows busiest first and the pooled "other" last, so all pairs can be compared at a glance; rows
    under MIN_ROW_TOKENS tokens grey. The pair drawn in detail below says so in its title."""
    cells = matrix_cells(frame)
    cells["pair"] = [f"{a} → {b}" + (" (below)" if a == chosen_from else "")
                     for a, b in zip(cells["from_layer"], cells["to_layer"], strict=True)]  # fmt: skip
    small = {"row": "int8", "column": "int8", "source": "int16", "target": "int16", "count": "int32",
             "row_total": "int32", "share": "float32", "from_layer": "int16"}  # fmt: skip
    cells = cells[["pair", "thin", *small]].astype(small)  # what the cells draw, in small types: 60 pairs of 61 layers
    side = max(cells["row"].max(), cells["column"].max()) + 1 if len(cells) else 1
    shade = alt.Color("share:Q", title="share of row", scale=alt.Scale(range=list(PURPLES), interpolate="rgb",
                      domain=[0, 1]), legend=alt.Legend(format=".0%"))  # fmt: skip
    rects = (
        alt.Chart(cells)
        .mark_rect()
        .encode(
            x=alt.X("column:O", title=None, axis=None),
            y=alt.Y("row:O", title=None, axis=None),
            color=alt.condition(alt.datum.thin, alt.value(THIN_ROW_COLOR), shade),
            tooltip=[
                alt.Tooltip("pair:N", title="layers"),
                alt.Tooltip("source:O", title="row expert (-1: other)"),
                alt.Tooltip("target:O", title="column expert (-1: other)"),
                alt.Tooltip("count:Q", title="tokens"),
                alt.Tooltip("row_total:Q", title="tokens in the row"),
                alt.Tooltip("share:Q", title="share of the row", format=".0%"),
            ],
        )
        .properties(width=PAIR_CELL_PX * side, height=PAIR_CELL_PX * side)
    )
    named = side - 1 if (frame["source"] == OTHER).any() else side
    rows = f"rows: {chosen} at the first layer, columns: at the next"
    if named < side:
        rows += f" (the {named} busiest of each layer, then 'other')"
    marks = f"grey rows: under {MIN_ROW_TOKENS} tokens · (below): drawn in detail below · hover a cell for its experts"
    subtitle = [f"{rows} · colour: share of the row's tokens", marks]
    # Pairs in layer order by a number: a list sort would make the browser test every cell against every pair's
    # name (a 60-way expression per cell, run in Vega's interpreter).
    in_layer_order = alt.EncodingSortField("from_layer", op="min")
    columns = min(PAIR_COLUMNS, cells["pair"].nunique())
    title = alt.Title(f"Every layer pair at a glance ({num_experts} experts)", subtitle=subtitle)
    chart = rects.facet(facet=alt.Facet("pair:N", title=None, sort=in_layer_order), columns=columns)
    return styled(chart.properties(title=title))
