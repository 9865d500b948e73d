"""Small rendering pieces shared by the views: coloured token text, expert legend, charts with downloads.

Token text is user input: it is always HTML-escaped here, control characters are shown as symbols, and
bidirectional controls as [U+202E] labels (each token is also isolated, so none can reorder its neighbours).
"""

from __future__ import annotations

import contextlib
import html
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from app.charts.common import FONT_SIZE, PRESENT_FONT_SIZE, styled
from app.export import ChartStamp, chart_png, chart_svg
from app.palette import OTHER_COLOR, OTHER_SHADE, coloured_experts, expert_colors, text_color_on
from app.safe_text import neutral_bidi
from moe_core.traces.types import DROPPED, RoutingTrace

_VISIBLE_CONTROLS = {i: chr(0x2400 + i) for i in range(32) if chr(i) not in "\n\t"} | {0x7F: "\u2421"}


def visible_text(text: str) -> str:
    """HTML-escaped token text; control characters become their Unicode 'symbol for' glyphs, bidi controls
    labels (U+202E would otherwise show the following text reversed)."""
    return html.escape(neutral_bidi(text.translate(_VISIBLE_CONTROLS))).replace("\n", "↵<br>")


def token_spans(
    texts: Sequence[str], experts: Sequence[int], titles: Sequence[str], num_experts: int, marks: Sequence[str] = ()
) -> str:
    """Tokens as coloured spans (background = expert), with a tooltip each. `marks` adds a CSS class per token.

    Colours come from one CSS class per expert (x0, x1, …; x- for a dropped slot), declared once in a style block
    beside the spans: inline styles made up most of the routing and capacity views' payload (~100 characters
    per token; 417 KB at 4,096 tokens).
    """
    colors = expert_colors(num_experts)
    parts, used = [], set()
    for index, (text, expert, title) in enumerate(zip(texts, experts, titles, strict=True)):
        if not text:
            continue
        name = SPECIAL_CLASSES[expert][0] if expert < 0 else f"x{expert}"
        used.add(expert)
        css = f"{name} {marks[index]}" if marks and marks[index] else name
        tip = html.escape(neutral_bidi(title))
        parts.append(f'<span class="tok {css}" title="{tip}">{visible_text(text)}</span>')
    rules = [
        SPECIAL_CLASSES[expert][1]
        if expert < 0
        else f".tokens .x{expert}{{background:{colors[expert]};color:{text_color_on(colors[expert])}}}"
        for expert in sorted(used)
    ]
    return f"<style>{''.join(rules)}</style>" + '<div class="tokens">' + "".join(parts) + "</div>"


SPECIAL_CLASSES = {  # token_spans' "experts" below 0: (CSS class, its rule)
    DROPPED: ("x-", ".tokens .x-{background:#FFFFFF;color:#000;outline:1px dashed #555}"),
    OTHER_SHADE: ("xo", f".tokens .xo{{background:{OTHER_COLOR};color:{text_color_on(OTHER_COLOR)}}}"),
}


def routed_text(frame: pd.DataFrame, num_experts: int, marks: Sequence[str] = (), window: slice = slice(None)) -> str:
    """The text of a token_frame coloured by top-1 expert; each token's tooltip lists its top-k and weights.
    Past 20 experts only the most frequent few keep their colour (palette.coloured_experts), the rest are grey.

    `window`: the rows to draw. The colours are chosen over the whole frame, so they agree with the legend."""
    top1 = frame["top1"].to_numpy()
    coloured = coloured_experts(top1, num_experts)
    if coloured is not None:
        top1 = np.where((top1 >= 0) & ~np.isin(top1, coloured), OTHER_SHADE, top1)
    shown = frame.iloc[window]
    titles = [f"#{t} {r}" for t, r in zip(shown["token"], shown["route"], strict=True)]
    marks = list(marks)[window] if marks else ()
    return token_spans(shown["text"].tolist(), top1[window].tolist(), titles, num_experts, marks)


TEXT_WINDOW = 512  # tokens of routed text drawn at once: 4,096 tokens with top-8 tooltips made a 560 KB block
TEXT_FULL_TOKENS = 300  # up to this many tokens the routed text is shown whole, on the page
TEXT_BOX_PX = 420  # past it the text scrolls in a box this tall (a bar always visible), so charts stay near


def text_box(inner: str, tokens: int) -> str:
    """Routed text (`inner`: escaped token spans) of `tokens` tokens: whole up to TEXT_FULL_TOKENS; past that in a
    box with a scroll bar that stays visible and a line under it saying so (a 320 px box scrolling with no
    visible bar hid a text's German and number lines, the ones that show specialisation)."""
    if tokens <= TEXT_FULL_TOKENS:
        return f'<div class="routed-box">{inner}</div>'
    note = f'<p class="box-note">{tokens:,} tokens in the box: scroll it (the bar on its right) for the rest.</p>'
    return f'<div class="routed-box scrolls" style="max-height:{TEXT_BOX_PX}px">{inner}</div>{note}'


def window_slider(label: str, last: int, default: int, step: int, key: str) -> int:
    """The first token of a window over a long text. A start kept from a longer text is brought within this
    one's range first: Streamlit raises on a slider whose value is beyond its max, and the page would stay broken."""
    if key in st.session_state and not 0 <= st.session_state[key] <= last:
        st.session_state[key] = min(max(st.session_state[key], 0), last)
    if key in st.session_state:
        return st.slider(label, 0, last, step=step, key=key)
    return st.slider(label, 0, last, default, step=step, key=key)


def routed_text_box(
    frame: pd.DataFrame, num_experts: int, marks: Sequence[str], key: str, from_the_end: bool = False
) -> None:
    """The routed text in its scroll box; past TEXT_WINDOW tokens a slider picks which window is drawn, and the
    caption says which tokens these are. `from_the_end`: the last window first (where capacity drops pile up)."""
    window = slice(None)
    if len(frame) > TEXT_WINDOW:
        last = len(frame) - TEXT_WINDOW
        first = last if from_the_end else 0
        start = window_slider(f"Text: first of {TEXT_WINDOW} tokens shown", last, first, TEXT_WINDOW // 8, key)
        window = slice(start, start + TEXT_WINDOW)
        st.caption(f"Tokens {start:,}–{min(start + TEXT_WINDOW, len(frame)) - 1:,} of {len(frame):,}.")
    text = routed_text(frame, num_experts, marks, window)
    html_block(text_box(text, len(frame.iloc[window])))


def legend(num_experts: int, label: str = "Expert", shown: Sequence[int] | None = None) -> str:
    """The expert chips: every expert, or only `shown` (palette.coloured_experts) and one grey chip for the rest."""
    colors = expert_colors(num_experts)
    experts = range(num_experts) if shown is None else shown
    chips = "".join(
        f'<span class="chip" style="background:{colors[i]};color:{text_color_on(colors[i])}">{label[0]}{i}</span>'
        for i in experts
    )
    if shown is not None:
        chips += (f'<span class="chip" style="background:{OTHER_COLOR};color:#000">the other '
                  f"{num_experts - len(shown)} experts</span>")  # fmt: skip
    return f'<div class="legend">{chips}</div>'


def sentence(text: str) -> str:
    """A library message ('this trace has no …') as a sentence on the page."""
    return f"{text[:1].upper()}{text[1:]}."


def unranked_caption(routing: RoutingTrace, needed_by: str) -> bool:
    """Say, once per view, that an unranked trace (an engine's sets of experts) has no first choice; True if so."""
    if (text := routing.unranked_sentence(needed_by)) is None:
        return False
    st.info(sentence(text))
    return True


def html_block(markup: str) -> None:
    st.markdown(markup, unsafe_allow_html=True)


def research_section(title: str) -> AbstractContextManager[object]:
    """Where a research table goes (many columns of rates a class cannot read from the back): a heading and the
    table under it; in presentation mode a collapsed expander of that title, opened when someone asks."""
    if chart_settings()[1]:
        return st.expander(title)
    st.subheader(title)
    return contextlib.nullcontext()


def explainer(notice: str, text: str) -> None:
    """Every view opens with one plain sentence of what to notice (static text, the view's own); the detail and
    the papers follow, collapsed, so a projected page starts with the point and then the chart."""
    html_block(f'<p class="notice">{html.escape(notice)}</p>')
    with st.expander("What am I looking at? The detail and the papers"):
        st.markdown(text)


CHART_CHROME_PX = 190  # title, subtitle, top legend and axes around a chart's plot height
CHART_SETTINGS_KEY = "chart_settings"  # session state: (ChartStamp | None, presentation mode), set by main


def set_chart_settings(stamp: ChartStamp | None, present: bool) -> None:
    """Called by main before a view draws. Views build their charts without knowing the page's settings, so
    show_chart reads them here: the stamp for downloads and the presentation flag for chart text size."""
    st.session_state[CHART_SETTINGS_KEY] = (stamp, present)


def chart_settings() -> tuple[ChartStamp | None, bool]:
    return st.session_state.get(CHART_SETTINGS_KEY, (None, False))


def frame_height(chart: alt.TopLevelMixin, present: bool = False) -> int | None:
    """Pixel height for the chart's frame: its plot height plus room for title, legend and axes (more room for
    presentation mode's larger text).

    Streamlit otherwise fits the whole chart, legend included, into the plot height and squeezes the plot.
    """
    height = getattr(chart, "height", alt.Undefined)
    chrome = CHART_CHROME_PX * (PRESENT_FONT_SIZE / FONT_SIZE if present else 1)
    return int(height + chrome) if isinstance(height, int | float) else None


HTML_TABLE_ROWS = 16  # show_table draws tables up to this many rows as HTML


def show_table(
    frame: pd.DataFrame,
    labels: dict[str, str],
    percent: tuple[str, ...] = (),
    decimals: dict[str, int] | None = None,
    helps: dict[str, str] | None = None,
) -> None:
    """A table with readable column names; `percent` columns (shares in [0, 1]) shown as 12.3%, one decimal for
    every row, so a projected table lines up; `decimals` fixes other columns' digits, `helps` their tooltips.

    Short tables (up to HTML_TABLE_ROWS rows, no column help) and every table in presentation mode are HTML
    (st.table). st.dataframe's grid is 1.2 MB of script a browser loads and compiles on first use: about 1 s of a
    new visitor's first page on 2 cores, for tables of a few rows that need none of its scrolling or sorting
    (and it paints cells on a canvas no stylesheet can enlarge). Longer tables, and those whose columns carry
    help, stay st.dataframe: scroll, sort, help on hover.
    """
    shown = frame.copy()
    shown[list(percent)] = shown[list(percent)] * 100
    digits = dict(decimals or {}) | dict.fromkeys(percent, 1)
    suffix = dict.fromkeys(percent, "%")
    if chart_settings()[1] or (len(frame) <= HTML_TABLE_ROWS and not helps):
        # One format() call naming every float column: a second call with a dict resets the columns it omits.
        floats = {c: 3 for c in shown.columns if pd.api.types.is_float_dtype(shown[c])} | digits
        formats = {labels.get(c, c): f"{{:.{d}f}}{suffix.get(c, '')}" for c, d in floats.items()}
        st.table(shown.rename(columns=labels).style.hide(axis="index").format(formats))
        return
    helps = helps or {}

    def column(name: str) -> Any:
        label, help_text = labels.get(name, name), helps.get(name)
        if name not in digits:
            return st.column_config.Column(label, help=help_text)
        number_format = f"%.{digits[name]}f" + ("%%" if name in suffix else "")
        return st.column_config.NumberColumn(label, format=number_format, help=help_text)

    st.dataframe(shown, hide_index=True, column_config={name: column(name) for name in shown.columns})


def show_chart(chart: alt.TopLevelMixin, name: str) -> None:
    """Draw an Altair chart with a Download menu of PNG and SVG (each file made only when clicked).

    theme=None: the chart looks exactly like its exported PNG/SVG, with the large projector-friendly fonts
    (larger still in presentation mode). Downloads carry the page's settings in their title and file name.
    The two buttons sit in a popover, which the browser mounts only when opened: one row under each chart instead
    of two buttons (room on a projected screen), and a first page that no longer loads the download widget's
    scripts (bench_startup's ratio to Streamlit's floor did not move measurably: 1.40-1.48 against 1.43).
    """
    stamp, present = chart_settings()
    if present:
        chart = styled(chart, present=True)
    height = frame_height(chart, present)
    st.altair_chart(chart, width="stretch", theme=None, **({"height": height} if height else {}))
    exports = (("PNG", chart_png, "image/png"), ("SVG", chart_svg, "image/svg+xml"))
    with st.popover("Download", key=f"download-{name}"):
        for kind, render, mime in exports:
            extension = kind.lower()
            st.download_button(
                f"Download {kind}", data=lambda render=render: render(chart, stamp), mime=mime,
                file_name=stamp.file_name(name, extension) if stamp else f"{name}.{extension}",
                key=f"{extension}-{name}", on_click="ignore",
            )  # fmt: skip


PAGE_CSS = """
<style>
.tokens {line-height: 2.1; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 1.0rem;
         white-space: pre-wrap; word-break: break-word; padding: 4px 0 18px 0;}
.tok {padding: 2px 1px; margin: 0 1px 0 0; border-radius: 3px; unicode-bidi: isolate;}
.tok.drop1 {text-decoration: line-through 2px #B00020;}
.tok.drop2, .tok.dropany {text-decoration: underline wavy 2px #B00020;}
.tok.dropall {outline: 3px solid #B00020; opacity: 0.55;}
.tok.own {font-style: italic; text-decoration: underline dotted 2px #333; text-underline-offset: 3px;}
.legend {margin: 0.2rem 0 0.6rem 0;}
.routed-box.scrolls {overflow-y: scroll; border: 1px solid #D0D0D0; border-radius: 4px; padding: 0 0.6rem;}
.routed-box.scrolls::-webkit-scrollbar {width: 14px;}
.routed-box.scrolls::-webkit-scrollbar-track {background: #EEEEEE;}
.routed-box.scrolls::-webkit-scrollbar-thumb {background: #8A8A8A; border-radius: 7px; border: 3px solid #EEEEEE;}
.box-note {font-size: 0.9rem; color: #555; margin: 0.2rem 0 0.8rem 0;}
.notice {font-size: 1.1rem; margin: 0 0 0.4rem 0; padding: 0.1rem 0 0.1rem 0.7rem; border-left: 4px solid #785EF0;}
.chip {display: inline-block; padding: 1px 8px; margin: 2px 4px 2px 0; border-radius: 10px;
       font-size: 0.85rem; font-weight: 600;}
</style>
"""

# Presentation mode: no sidebar or header; body text, headings and tables (show_table's HTML tables) larger; the
# control bar (view, layer, capacity factor, policy) a little smaller than the body so it fits on one or two rows.
PRESENTATION_CSS = """
<style>
header, [data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"], [data-testid="stToolbar"],
footer {display: none !important;}
.block-container {padding: 1rem 1.5rem 2rem 1.5rem; max-width: none;}
html, body, [data-testid="stMarkdownContainer"] p, [data-testid="stMarkdownContainer"] li {font-size: 1.3rem;}
[data-testid="stCaptionContainer"] p {font-size: 1.1rem;}
.tokens {font-size: 1.6rem; line-height: 2.3;}
h1 {font-size: 1.9rem !important; padding: 0 0 0.5rem 0 !important;}
h2, h3 {font-size: 1.8rem !important;}
[data-testid="stWidgetLabel"] p {font-size: 1.15rem;}
[data-testid="stTable"] th, [data-testid="stTable"] td {font-size: 1.3rem; padding: 0.35rem 0.9rem;}
.block-container {padding-top: 0.6rem !important;}
.st-key-control-bar {padding: 0.4rem 1rem; row-gap: 0.3rem;}
.st-key-control-bar [data-testid="stButtonGroup"] button {padding: 0 0.4rem;}
.st-key-control-bar [data-testid="stButtonGroup"] button p {font-size: 1.05rem;}
.st-key-control-bar [data-testid="stRadio"] label p {font-size: 1.05rem;}
.st-key-control-bar [role="radiogroup"] {column-gap: 0.4rem;}
.st-key-exit_present button {min-height: 2.2rem; padding: 0.1rem 0.5rem;}
.st-key-control-bar [data-testid="stMarkdownContainer"] p {font-size: 1.05rem;}
.st-key-control-bar [data-testid="stWidgetLabel"] p {font-size: 1.1rem;}
.chip {font-size: 1.1rem;}
[data-testid="stMetricLabel"], [data-testid="stMetricLabel"] * {white-space: normal !important;
  overflow: visible !important; text-overflow: clip !important;}
</style>
"""
