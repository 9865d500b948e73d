"""View 1: the text coloured by each token's top-1 expert, and the token × layer grid."""

from __future__ import annotations

import streamlit as st

from app.charts.routing import token_layer_grid_chart
from app.components import (
    explainer,
    html_block,
    legend,
    research_section,
    routed_text_box,
    show_chart,
    show_table,
    unranked_caption,
    window_slider,
)
from app.memo import per_trace
from app.palette import coloured_experts
from app.views import ViewContext
from moe_core.analyses.routing import (
    consecutive_repeats,
    continuation_marks,
    token_frame,
    token_id_consistency,
    token_layer_grid,
)

TITLE = "Token routing"
SHORT_TITLE = "Routing"  # its button in the presentation bar, where six must fit one row
NOTICE = (
    "Tokens of one kind (prose, code, German, numbers) tend to share a colour: the router sends them to the same "
    "expert."
)  # the one sentence of what to notice
EXPLAINER = """
Each token of your text is coloured by the expert the router ranked **first** at the chosen layer (hover a token
for all its experts and their gate weights). The grid below shows the same for **every** MoE layer, a window of
tokens at a time with each token's text under its column: colour is the top-1 expert, and a dot marks a cell where
the router hesitated (the bigger the dot, the lower the top-1 gate weight). Compare with Mixtral's Fig. 8 (arXiv
2401.04088): consecutive tokens and tokens of the same kind often share an expert.

The neighbours table shows whether that holds beyond the load: a rate above both of its chances means the router
follows local context. It measures it the way Mixtral's Table 5 does: how often a token's neighbour gets the same
first choice, or shares any of its experts. Mixtral compares with uniformly random routing (1/E, and
1 − C(E−k, k)/C(E, k) for any of the top-k); beside it, the chance given this text's own load: two tokens drawn at
random from the same text, so an expert that takes most tokens makes neighbours match without any context.

Then OpenMoE's finding (arXiv 2402.01739): routing depends
mostly on the token id, not its context. For token ids seen at least twice, the share of their occurrences sent to
their usual first-choice expert, against the same first choices shuffled across tokens. Try the "repeated word"
preset.
"""
NEIGHBOUR_RATES = (
    "first_choice",
    "first_choice_chance",
    "first_choice_text_chance",
    "any_choice",
    "any_choice_chance",
    "any_choice_text_chance",
)
CONSISTENCY_LABELS = {"consistency": "same expert as usual", "shuffled": "first choices shuffled",
                      "ids": "ids seen twice+"}  # fmt: skip


def neighbour_labels(top_k: int) -> dict[str, str]:
    """The neighbours table's column names (consecutive_repeats' columns)."""
    return {
        "first_choice": "same first choice",
        "first_choice_chance": "chance (first, uniform)",
        "first_choice_text_chance": "chance (first, this text's load)",
        "any_choice": f"share one of top-{top_k}",
        "any_choice_chance": "chance (any, uniform)",
        "any_choice_text_chance": "chance (any, this text's load)",
        "pairs": "neighbour pairs",
    }


GRID_WINDOW = 64  # tokens per grid window: each keeps its own text label at a 1440 px window


def grid_window(tokens: int) -> int:
    """The grid's first token: past GRID_WINDOW tokens a slider that moves the window along the text, and beside
    it the window it draws ("tokens 64–127 of 174"); a link's `grid=` opens there."""
    if tokens <= GRID_WINDOW:
        st.session_state.grid_start = 0  # a window kept from a longer text would follow this one into its link
        return 0
    slider, shown = st.columns([3, 1], vertical_alignment="bottom")
    with slider:
        start = window_slider("Move the grid along the text (its first token)", tokens - GRID_WINDOW, 0,
                              GRID_WINDOW // 4, "grid_start")  # fmt: skip
    shown.markdown(f"**tokens {start:,}–{min(start + GRID_WINDOW, tokens) - 1:,} of {tokens:,}**")
    return start


def draw(context: ViewContext) -> None:
    routing, row = context.trace, context.layer_row
    explainer(NOTICE, EXPLAINER)
    frame = token_frame(routing, row)
    layer = context.layer
    unranked = unranked_caption(routing, "the text is coloured by each token's lowest-numbered expert, and the "
                                "first-choice rows below are left empty")  # fmt: skip
    which = "Lowest-numbered expert" if unranked else "Top-1 expert"
    st.subheader(f"{which} of each token at layer {layer}")
    html_block(legend(routing.model.num_experts, shown=coloured_experts(frame["top1"], routing.model.num_experts)))
    marks = continuation_marks(routing, context.continued_at)
    if context.continued_at is not None and "own" in marks:
        html_block('<span class="tok own">the model\'s own writing</span> (from "Let the model continue")')
    routed_text_box(frame, routing.model.num_experts, marks, key="text_start")
    start = grid_window(len(frame))
    grid = token_layer_grid(routing, start, start + GRID_WINDOW)
    chart = token_layer_grid_chart(grid, routing.model.num_experts, len(frame), routing.model.top_k)
    show_chart(chart, "token-layer-grid")

    with research_section("Do neighbouring tokens share experts?"):
        rates = per_trace(consecutive_repeats, routing)
        show_table(rates, neighbour_labels(routing.model.top_k), percent=NEIGHBOUR_RATES)

    st.subheader("Does the same token always go to the same expert?")
    consistency = per_trace(token_id_consistency, routing)
    if unranked:
        st.caption("Token-id consistency follows each token's first choice, which this trace does not record.")
    elif consistency["ids"].iloc[0] == 0:
        st.info("No token id appears twice in this text: try a longer text or the repeated-word preset.")
    else:
        show_table(consistency, CONSISTENCY_LABELS, percent=("consistency", "shuffled"))
