"""'Let the model continue' (issue 17): the model writes, each token shown as it is written and coloured by the
expert it went to at the chosen layer; the views then show the routing the model used while writing
(moe_core.capture.generation), not a re-trace of the longer text.

The button only asks (its callback cannot draw); main() streams at its place in the page, then hands the longer
text to the next run through PENDING_KEY, because the text box it belongs to is already drawn in this run.
A click elsewhere, or the visitor leaving, stops the script at its next page update, which ends generate()
(its model lock is released on the way out).
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from app.components import html_block, token_spans, visible_text
from app.safe_text import md_text
from moe_core.capture.generation import generate_trace, supports_generation_capture, token_pieces
from moe_core.generate import continue_text
from moe_core.models import LoadedModel
from moe_core.traces.types import RoutingTrace

CONTINUE_TOKENS = 40  # per click: a sentence or a few lines of code
GENERATION_SECONDS = 60.0  # at most this long per click, whatever the model's speed
TAIL_CHARS = 240  # of the text being continued, shown before the streamed tokens
REQUEST_KEY = "continue_requested"
PENDING_KEY = "pending_prompt"  # the longer text, applied before the text box is drawn in the next run
GENERATION_KEY = "generation"  # (model id, the generation's trace) of this session's last continuation
ERROR_KEY = "continue_error"


def request_continuation() -> None:
    """The button's callback: ask main() to stream a continuation in this run (an empty text is said at once:
    the page stops before its views when there is no text)."""
    if not st.session_state.prompt.strip():
        st.session_state[ERROR_KEY] = "empty text: give the model something to continue"
        return
    st.session_state[REQUEST_KEY] = True


def generated_trace(model_id: str, prompt: str) -> RoutingTrace | None:
    """This session's generation trace while the text is exactly what the model wrote, else None."""
    kept = st.session_state.get(GENERATION_KEY)
    if kept is None or kept[0] != model_id or kept[1].texts[0] != prompt:
        return None
    return kept[1]


def _written_html(tail: str, pieces: list[str], first: list[int], num_experts: int, layer: int) -> str:
    titles = [f"written token {n}: E{e} at layer {layer}" for n, e in enumerate(first)]
    before = f'<p class="box-note">{visible_text(tail)}</p>' if tail else ""
    return before + token_spans(pieces, first, titles, num_experts)


def _finish(before: str, longer: str, written: RoutingTrace | None, model_id: str) -> None:
    """Hand the longer text (and the generation's routing) to the next run, which draws the views on it."""
    st.session_state[PENDING_KEY] = longer
    if written is not None:
        st.session_state[GENERATION_KEY] = (model_id, written)
    # Where the model's own writing begins: continuing its own text again keeps the first start.
    if st.session_state.get("continued_text") != before:
        st.session_state.continued_at = len(before)
    st.session_state.continued_text = longer
    st.rerun()


def stream_if_requested(loaded: LoadedModel, model_id: str, layer: int, layer_row: int, num_experts: int) -> None:
    """Where the page asked for it: stream the model's continuation of the text, then rerun on the longer text."""
    if not st.session_state.pop(REQUEST_KEY, False):
        return
    before = st.session_state.prompt
    try:
        if not supports_generation_capture(loaded.model):  # encoder-decoders, remote code: write, then re-trace
            with st.spinner("The model is writing …"):
                _finish(before, continue_text(loaded.model, loaded.tokenizer, before, CONTINUE_TOKENS), None, model_id)
        st.subheader(f"The model is writing (up to {CONTINUE_TOKENS} tokens), coloured by expert at layer {layer}")
        box = st.empty()
        tail = before if len(before) <= TAIL_CHARS else "… " + before[-TAIL_CHARS:]

        def watch(ids: list[int], first: np.ndarray) -> None:
            pieces = token_pieces(loaded.tokenizer, ids)
            shown = first[:, layer_row].tolist()
            with box.container():
                html_block(_written_html(tail, pieces, shown, num_experts, layer))

        written = generate_trace(loaded.model, loaded.tokenizer, before, CONTINUE_TOKENS, watch=watch,
                                 max_time=GENERATION_SECONDS, name=model_id)  # fmt: skip
    except ValueError as error:
        st.session_state[ERROR_KEY] = str(error)
        st.rerun()
    _finish(before, written.texts[0], written, model_id)


def generation_caption(routing: RoutingTrace) -> None:
    """Say that the routing shown is the generation's own, and where the model's writing begins."""
    start = routing.generated_from[0] if routing.generated_from else None
    if start is not None:
        st.caption(f"Routing recorded while the model wrote: tokens {start}–{len(routing.tokens) - 1} are its own, "
                   f"each routed as it was written (KV cache on); the first {start} are the prompt's prefill. "
                   f"{md_text('Edit the text to route it as one prompt.')}")  # fmt: skip
