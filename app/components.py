"""Small rendering pieces shared by the views: coloured token text, expert legend, charts with downloads.

Token text is user input: it is always HTML-escaped here, control characters are shown as symbols, and
bidirectional controls as [U+202E] labels (each token is also isolated, so none can reorder its neighbours).
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import altair as alt
import pandas as pd
import streamlit as st

from app.export import chart_png, chart_svg
from app.palette import expert_colors, text_color_on
from app.safe_text import neutral_bidi

_VISIBLE_CONTROLS = {i: chr(0x2400 + i) for i in range(32) if chr(i) not in "\n\t"} | {0x7F: "\u2421"}


def visible_text(text: str) -> str:
    """HTML-escaped token text; control characters become their Unicode 'symbol for' glyphs, bidi controls
    labels (U+202E would otherwise show the following text reversed)."""
    return html.escape(neutral_bidi(text.translate(_VISIBLE_CONTROLS))).replace("\n", "↵<br>")


def token_spans(
    texts: Sequence[str], experts: Sequence[int], titles: Sequence[str], num_experts: int, marks: Sequence[str] = ()
) -> str:
    """Tokens as coloured spans (background = expert), with a tooltip each. `marks` adds a CSS class per token."""
    colors = expert_colors(num_experts)
    parts = []
    for index, (text, expert, title) in enumerate(zip(texts, experts, titles, strict=True)):
        if not text:
            continue
        css = marks[index] if marks else ""
        if expert < 0:
            style = "background:#FFFFFF;color:#000;outline:1px dashed #555"
        else:
            style = f"background:{colors[expert]};color:{text_color_on(colors[expert])}"
        tip = html.escape(neutral_bidi(title))
        parts.append(f'<span class="tok {css}" style="{style}" title="{tip}">{visible_text(text)}</span>')
    return '<div class="tokens">' + "".join(parts) + "</div>"


def routed_text(frame: pd.DataFrame, num_experts: int, marks: Sequence[str] = ()) -> str:
    """The text of a token_frame coloured by top-1 expert; each token's tooltip lists its top-k and weights."""
    titles = [f"#{t} {r}" for t, r in zip(frame["token"], frame["route"], strict=True)]
    return token_spans(frame["text"].tolist(), frame["top1"].tolist(), titles, num_experts, marks)


def legend(num_experts: int, label: str = "Expert") -> str:
    colors = expert_colors(num_experts)
    chips = "".join(
        f'<span class="chip" style="background:{c};color:{text_color_on(c)}">{label[0]}{i}</span>'
        for i, c in enumerate(colors)
    )
    return f'<div class="legend">{chips}</div>'


def html_block(markup: str) -> None:
    st.markdown(markup, unsafe_allow_html=True)


def explainer(text: str) -> None:
    """The 'What am I looking at?' note every view opens with."""
    with st.expander("What am I looking at?"):
        st.markdown(text)


CHART_CHROME_PX = 190  # title, subtitle, top legend and axes around a chart's plot height


def frame_height(chart: alt.TopLevelMixin) -> int | None:
    """Pixel height for the chart's frame: its plot height plus room for title, legend and axes.

    Streamlit otherwise fits the whole chart, legend included, into the plot height and squeezes the plot.
    """
    height = getattr(chart, "height", alt.Undefined)
    return int(height) + CHART_CHROME_PX if isinstance(height, int | float) else None


def show_table(frame: pd.DataFrame, labels: dict[str, str], percent: tuple[str, ...] = ()) -> None:
    """A table with readable column names; `percent` columns (shares in [0, 1]) shown as 12.3%, one decimal for
    every row, so a projected table lines up."""
    shown = frame.copy()
    shown[list(percent)] = shown[list(percent)] * 100
    config = {name: st.column_config.NumberColumn(label, format="%.1f%%" if name in percent else None)
              for name, label in labels.items()}  # fmt: skip
    st.dataframe(shown, hide_index=True, column_config=config)


def show_chart(chart: alt.TopLevelMixin, name: str) -> None:
    """Draw an Altair chart with Download PNG / SVG buttons (rendered only when clicked).

    theme=None: the chart looks exactly like its exported PNG/SVG, with the large projector-friendly fonts.
    """
    height = frame_height(chart)
    st.altair_chart(chart, width="stretch", theme=None, **({"height": height} if height else {}))
    exports = (("PNG", chart_png, "image/png"), ("SVG", chart_svg, "image/svg+xml"))
    for column, (kind, render, mime) in zip(st.columns([1, 1, 4])[:2], exports, strict=True):
        column.download_button(
            f"Download {kind}", data=lambda render=render: render(chart), file_name=f"{name}.{kind.lower()}",
            mime=mime, key=f"{kind.lower()}-{name}", on_click="ignore",
        )  # fmt: skip


PAGE_CSS = """
<style>
.tokens {line-height: 2.1; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 1.0rem;
         white-space: pre-wrap; word-break: break-word; padding: 4px 0 18px 0;}
.tok {padding: 2px 1px; margin: 0 1px 0 0; border-radius: 3px; unicode-bidi: isolate;}
.tok.drop1 {text-decoration: line-through 2px #B00020;}
.tok.drop2 {text-decoration: underline wavy 2px #B00020;}
.tok.dropall {outline: 3px solid #B00020; opacity: 0.55;}
.legend {margin: 0.2rem 0 0.6rem 0;}
.chip {display: inline-block; padding: 1px 8px; margin: 2px 4px 2px 0; border-radius: 10px;
       font-size: 0.85rem; font-weight: 600;}
</style>
"""

PRESENTATION_CSS = """
<style>
header, [data-testid="stSidebar"], [data-testid="stToolbar"], footer {display: none !important;}
.block-container {padding-top: 1rem; max-width: 96vw;}
html, body, [data-testid="stMarkdownContainer"] p {font-size: 1.3rem;}
.tokens {font-size: 1.6rem; line-height: 2.3;}
h1, h2, h3 {font-size: 2.0rem !important;}
</style>
"""
