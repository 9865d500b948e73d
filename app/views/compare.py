"""View: the same tokens routed twice (another dtype, another model or revision, an uploaded dump), compared."""

from __future__ import annotations

import hashlib

import numpy as np
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from app.charts.compare import agreement_chart, load_pair_chart
from app.components import (
    TEXT_WINDOW,
    chart_settings,
    explainer,
    html_block,
    show_chart,
    text_box,
    visible_text,
    window_slider,
)
from app.safe_text import md_text
from app.state import COMPARE_DTYPES, COMPARE_SIDES
from app.views import ViewContext
from moe_core.analyses.compare import (
    CATEGORIES,
    FIRST_CHANGED,
    SAME,
    SET_CHANGED,
    Comparison,
    NotComparable,
    agreement_frame,
    compare,
)
from moe_core.engines import UPLOAD_TYPES, ModelHints, Payload, model_hints, read_payloads
from moe_core.models import ModelLoadError, allowed_models
from moe_core.traces.checks import TraceFormatError
from moe_core.traces.types import RoutingTrace

TITLE = "Compare runs"
SHORT_TITLE = "Compare"  # its button in the presentation bar, where six must fit one row
# the one sentence of what to notice
NOTICE = "The same tokens routed twice rarely agree everywhere, and where they differ tells you how fragile routing is."
EXPLAINER = """
The second run is the same model in another dtype (bf16 against fp32: rounding alone moves tokens whose top
experts score almost the same), another model or a training checkpoint (a fine-tune against its base, OLMoE's
revisions), or a file: a serving engine's dump of the same request (vLLM's and SGLang's routed experts; the R3
paper, arXiv 2510.11370, measures how often an engine and a transformers re-run disagree).

Per MoE layer: **set agreement**, the share of a token's k experts both runs chose (|A∩B|/k), and **first choice
the same**, where both runs say which expert came first. The text marks, at the chosen layer, each token whose
experts changed (amber) or whose first choice changed (red). The bars put both runs' load per expert side by side.
"""
CATEGORY_STYLE = {  # category -> (background, text colour)
    SAME: ("#EEEEEE", "#222222"),
    SET_CHANGED: ("#E69F00", "#000000"),
    FIRST_CHANGED: ("#D55E00", "#FFFFFF"),
}


def _compare_legend() -> str:
    chips = "".join(f'<span class="chip" style="background:{bg};color:{fg}">{CATEGORIES[c]}</span>'
                    for c, (bg, fg) in CATEGORY_STYLE.items())  # fmt: skip
    return f'<div class="legend">{chips}</div>'


def category_text(result: Comparison, layer: int, window: slice = slice(None)) -> str:
    """A's tokens coloured by their category at `layer` (the aligned tokens in `window`), escaped."""
    row = result.alignment.layers.index(layer)
    rules = "".join(f".tokens .c{c}{{background:{bg};color:{fg}}}" for c, (bg, fg) in CATEGORY_STYLE.items())
    spans = []
    for token, category in zip(result.alignment.rows_a[window].tolist(), result.categories[row][window].tolist(),
                               strict=True):  # fmt: skip
        text = result.a.tokens.text[token]
        if text:
            spans.append(f'<span class="tok c{category}" title="{CATEGORIES[category]}">{visible_text(text)}</span>')
    return f"<style>{rules}</style>" + text_box(f'<div class="tokens">{"".join(spans)}</div>', len(spans))


def _text_window(result: Comparison, layer: int) -> slice:
    """Past TEXT_WINDOW tokens, a slider over the text that opens on the first token that changed here."""
    if result.tokens <= TEXT_WINDOW:
        return slice(None)
    last = result.tokens - TEXT_WINDOW
    changed = np.flatnonzero(result.categories[result.alignment.layers.index(layer)] != SAME)
    first = min(int(changed[0]) // 64 * 64, last) if len(changed) else 0
    start = window_slider(f"Text: first of {TEXT_WINDOW} tokens shown", last, first, TEXT_WINDOW // 8,
                          "compare_text_start")  # fmt: skip
    st.caption(f"Tokens {start:,}–{min(start + TEXT_WINDOW, result.tokens) - 1:,} of {result.tokens:,} compared.")
    return slice(start, start + TEXT_WINDOW)


@st.cache_resource(max_entries=4, show_spinner=False)
def _hints(model_id: str) -> ModelHints:
    """The page's model as the reader's hints for side B (its config: E, k, MoE layers, whether its top-k is
    ranked): a dump of the same tokens is usually of the same model."""
    return model_hints(model_id)


def _uploaded_side(model_id: str | None) -> RoutingTrace | None:
    upload = st.file_uploader("Side B: a trace or an engine's dump of the same tokens", type=UPLOAD_TYPES,
                              key="compare_upload")  # fmt: skip
    if upload is None:
        st.info("Upload side B: a saved trace, or a vLLM / SGLang / Megatron-Core dump of the same tokens.")
        return None
    payload = Payload(upload.name, upload.getvalue())
    key = (model_id, hashlib.blake2b(payload.data, digest_size=16).hexdigest())
    parsed = st.session_state.get("compare_parsed")
    if parsed is None or parsed[0] != key:
        try:
            hints = _hints(model_id) if model_id else None
            parsed = (key, read_payloads([payload], hints=hints))
        except (TraceFormatError, ModelLoadError) as error:
            parsed = (key, str(error))
        st.session_state.compare_parsed = parsed
    if isinstance(parsed[1], str):
        st.error(f"Side B is not a routing file this app can read: {md_text(parsed[1])}")
        return None
    return parsed[1]


def _allowed_revision(model: str, revision: str) -> bool:
    """With an allow-list, a revision is offered only where the operator listed it as model@revision."""
    allowed = allowed_models()
    return allowed is None or f"{model}@{revision}" in allowed


def _run_side(context: ViewContext, beside: DeltaGenerator) -> RoutingTrace | None:
    """Side B from the chosen source, or None (with a sentence saying what is missing). `beside`: the place next
    to the source picker, where the dtype picker goes (one row, so the chart stays on a projected first screen)."""
    settings = context.settings
    if settings.compare_with == "upload":
        return _uploaded_side(context.model_id)
    if context.other_run is None:
        st.info("Re-running these tokens needs a model: pick \u201can uploaded trace or dump\u201d as side B.")
        return None
    if settings.compare_with == "dtype":
        if context.model_id is None:  # an uploaded trace: the model that made it is not loaded here
            st.info("Another dtype needs the model that made this trace: compare with another model (its name) "
                    "or with a second uploaded file.")  # fmt: skip
            return None
        beside.selectbox("Side B's dtype", COMPARE_DTYPES, key="compare_dtype")
        model, revision, dtype = context.model_id, None, settings.compare_dtype
    else:
        left, right = st.columns(2)
        left.text_input("Side B's model (bundled name, folder or hub id; empty: this one)", key="compare_model")
        right.text_input("Its revision (a hub branch, tag or training checkpoint; optional)", key="compare_revision")
        model = settings.compare_model.strip() or context.model_id or st.session_state.get("model")
        revision, dtype = settings.compare_revision.strip() or None, None
        if revision and not _allowed_revision(model, revision):
            st.error(f"Revision {md_text(revision[:60])} of {md_text(model[:60])} is not offered here.")
            return None
    try:
        return context.other_run(model, revision, dtype)
    except (ModelLoadError, ValueError) as error:
        st.error(f"Cannot run side B: {md_text(str(error).splitlines()[0])}")
        return None


def draw(context: ViewContext) -> None:
    routing = context.trace
    explainer(NOTICE, EXPLAINER)
    source, beside = st.columns([3, 1], vertical_alignment="bottom")
    source.radio("Compare with", list(COMPARE_SIDES), key="compare_with", horizontal=True,
                 format_func=COMPARE_SIDES.get)  # fmt: skip
    other = _run_side(context, beside)
    if other is None:
        return
    try:
        result = compare(routing, other)
    except NotComparable as error:
        st.error(f"These two cannot be compared: {md_text(error)}")
        return
    for note in [*result.alignment.notes, *([result.top1_reason] if result.top1_reason else [])]:
        st.caption(md_text(note))
    layer = context.layer if context.layer in result.alignment.layers else result.alignment.layers[0]
    row = result.layers[result.layers["layer"] == layer].iloc[0]
    figures = {
        "tokens compared": f"{result.tokens:,}",
        "changed at some layer": f"{result.tokens_changed_any_layer:.1%}",
        f"experts shared at layer {layer}": f"{row.set_agreement:.1%}",
    }
    if chart_settings()[1]:  # projected: one line of figures, so the agreement chart starts on the first screen
        st.markdown(" · ".join(f"**{value}** {name}" for name, value in figures.items()))
    else:
        for column, (name, value) in zip(st.columns(len(figures)), figures.items(), strict=True):
            column.metric(name, value)
    names = (routing.model.name, other.model.name)
    show_chart(agreement_chart(agreement_frame(result), f"A: {names[0]} · B: {names[1]}"), "compare-agreement")
    st.subheader(f"Which tokens changed at layer {layer}")
    html_block(_compare_legend())
    html_block(category_text(result, layer, _text_window(result, layer)))
    load = result.load[result.load["layer"] == layer]
    show_chart(load_pair_chart(load, names, routing.model.num_experts, f"Load at layer {layer}, both runs"),
               "compare-load")  # fmt: skip
