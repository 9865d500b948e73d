"""Axis labels that match the rest of the app: experts as "E3" (like the chips), tokens by their text.

Token text is user input. On a chart it is drawn as text by Vega (never HTML), but it still goes through
neutral_bidi and one_line, and reaches the label expression only as a JSON string literal.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import altair as alt

from app.safe_text import neutral_bidi, one_line

EXPERT_LABEL = "'E' + datum.label"  # legend / axis labelExpr: the chips' names, not bare numbers
TOKEN_LABEL_CHARS = 12  # longer tokens are cut with "…" so the axis stays one column per token


def token_label(text: str) -> str:
    """One token as an axis label: on one line, bidi controls shown as labels, a blank token as "␣"."""
    shown = neutral_bidi(one_line(text.replace("\n", "↵").replace("\t", "⇥"))).strip()
    if not shown:
        return "␣"
    return shown if len(shown) <= TOKEN_LABEL_CHARS else shown[: TOKEN_LABEL_CHARS - 1] + "…"


def token_axis_expr(texts: Sequence[str], start: int) -> str:
    """Vega label expression for an ordinal axis of token indices start, start+1, …: each index's text.

    The labels sit in a JSON array literal (json.dumps escapes quotes, backslashes and all non-ASCII), so no
    token can end the string and become part of the expression.
    """
    return f"{json.dumps([token_label(t) for t in texts])}[datum.value - {int(start)}]"


def token_axis(texts: Sequence[str], start: int, title: str) -> alt.Axis:
    """The token text under each column, written upwards so every token of a window gets its own label."""
    return alt.Axis(
        title=title, labelExpr=token_axis_expr(texts, start), labelAngle=-90, labelAlign="right",
        labelBaseline="middle", labelFontSize=12, labelOverlap=False, labelLimit=140,
    )  # fmt: skip
