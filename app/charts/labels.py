"""Axis labels that match the rest of the app: experts as "E3" (like the chips), tokens by their text.

Token text is user input. On a chart it is drawn as text by Vega (never HTML), but it still goes through
neutral_bidi and one_line, and reaches the label expression only as a JSON string literal.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import altair as alt
import pandas as pd

from app.safe_text import neutral_bidi, one_line

EXPERT_LABEL = "'E' + datum.label"  # legend / axis labelExpr: the chips' names, not bare numbers
# The same where a chart pools the experts it does not name into one "other" (moe_core.analyses.matrix.OTHER).
EXPERT_OR_OTHER_LABEL = "datum.value < 0 ? 'other' : 'E' + datum.label"
EXPERT_AXIS_LABELS = 20  # at most this many expert names under an axis of many experts (every 4th, 8th, 16th)


def expert_axis(num_experts: int, title: str = "expert", **options: object) -> alt.Axis:
    """An axis of experts named as the chips name them ("E3"); with many experts only every 2nd, 4th, … 16th
    is named, so 256 names do not pile onto one another."""
    step = next(s for s in (1, 2, 4, 8, 16, 32, 64, 128) if num_experts / s <= EXPERT_AXIS_LABELS or s == 128)
    values = list(range(0, num_experts, step)) if step > 1 else alt.Undefined
    return alt.Axis(title=title, labelExpr=EXPERT_LABEL, values=values, **options)


TOKEN_LABEL_CHARS = 12  # longer tokens are cut with "…" so the axis stays one column per token
TOKEN_LABEL_STYLE = "token-labels"  # a config style: common.styled sizes the labels for the mode


def token_label(text: str) -> str:
    """One token as an axis label: on one line, bidi controls shown as labels, a blank token as "␣"."""
    shown = neutral_bidi(one_line(text.replace("\n", "↵").replace("\t", "⇥"))).strip()
    if not shown:
        return "␣"
    return shown if len(shown) <= TOKEN_LABEL_CHARS else shown[: TOKEN_LABEL_CHARS - 1] + "…"


LABEL_SEPARATOR = "\0"  # between the labels in token_axis_expr's one string (a NUL in a token is shown as ␀)


def token_axis_expr(texts: Sequence[str], start: int) -> str:
    """Vega label expression for an ordinal axis of token indices start, start+1, …: each index's text.

    The labels travel as one JSON string literal split at NULs (json.dumps escapes quotes, backslashes and all
    non-ASCII, so no token can end the string and become part of the expression). Not an array of strings: Vega
    reads a string literal "if" as a signal name and the whole chart fails to draw ("Unrecognized signal name"),
    so the token `if` blanked the grid; the joined string ends with a separator and is never a bare word.
    """
    labels = [token_label(t).replace(LABEL_SEPARATOR, "␀") for t in texts]
    joined = json.dumps(LABEL_SEPARATOR.join(labels) + LABEL_SEPARATOR)
    return f"split({joined}, {json.dumps(LABEL_SEPARATOR)})[datum.value - {int(start)}]"


def labels_of_expr(expr: str) -> list[str]:
    """The labels a token_axis_expr holds (tests and readers of a saved spec)."""
    joined = json.loads(expr[len("split(") : expr.index(f", {json.dumps(LABEL_SEPARATOR)})")])
    return joined.split(LABEL_SEPARATOR)[:-1]


def token_axis(texts: Sequence[str], start: int, title: str) -> alt.Axis:
    """The token text under each column, written upwards so every token of a window gets its own label."""
    return alt.Axis(
        title=title, labelExpr=token_axis_expr(texts, start), labelAngle=-90, labelAlign="right",
        labelBaseline="middle", labelOverlap=False, labelLimit=140, style=TOKEN_LABEL_STYLE,
    )  # fmt: skip


@dataclass(frozen=True)
class TokenColumns:
    """A token-window chart's x axis: the window's first and last token, the tokens in the whole text, the
    token-text axis, and the hover selection that outlines a column."""

    first: int
    last: int
    total: int
    x: alt.X
    hover: alt.Parameter


def token_columns(shown: pd.DataFrame, total_tokens: int | None) -> TokenColumns:
    """The x axis of a chart with one column per token (columns `token`, `text`), shared by the grid and the
    gate heatmap."""
    first, last = int(shown["token"].min()), int(shown["token"].max())
    texts = shown.drop_duplicates("token").sort_values("token")["text"].tolist()
    hover = alt.selection_point(name="column", fields=["token"], on="pointerover", clear="pointerout", empty=False)
    x = alt.X("token:O", sort="ascending", axis=token_axis(texts, first, "token"))
    return TokenColumns(first, last, total_tokens if total_tokens is not None else last + 1, x, hover)
