"""View 2: the router's scores for every expert, one token's full distribution, and entropy per token."""

from __future__ import annotations

import streamlit as st

from app.charts.gates import distribution_chart, entropy_chart, gate_heatmap_chart, similarity_chart
from app.components import explainer, sentence, show_chart, show_table
from app.safe_text import neutral_bidi, one_line
from app.views import ViewContext
from moe_core.analyses.experts import similarity_frame
from moe_core.analyses.gates import entropy_frame, gate_heatmap, grouped_gate_heatmap, token_distribution
from moe_core.experts import ExpertsCallUnsupported
from moe_core.traces.types import needs_sentence

PREFERENCE_LABELS = {
    "first_is_largest": "first choice has the largest output",
    "chance": "chance",
    "rank_correlation": "router ranking vs output norms (rho)",
    "tokens": "tokens",
}
SIMILARITY_LABELS = {
    "matrix": "matrix",
    "shape": "shape (one expert)",
    "weights": "weights",
    "mean_abs": "mean |cosine|",
    "max_abs": "max |cosine|",
    "random_mean_abs": "random init: mean |cosine|",
    "random_max_abs": "random init: max |cosine|",
}
TITLE = "Gate weights"
SHORT_TITLE = "Gates"  # its button in the presentation bar, where six must fit one row
NOTICE = (
    "Most tokens put nearly all their weight on one or two experts; a token whose scores spread over many experts "
    "is one the router is unsure about."
)  # the one sentence of what to notice
EXPLAINER = """
The router scores **every** expert for every token; the model keeps the top-k and mixes their outputs with
the combine weights. The heatmap shows the scores (darker = higher) and marks the chosen experts with their rank.
Pick a token to see its whole distribution. **Entropy** says how undecided the router is: 0 bits means one expert
takes everything, log2(E) means all experts score the same. Softmax routers (Mixtral, OLMoE) give probabilities
that sum to 1; sigmoid routers (DeepSeek-V3, Llama 4) score each expert independently, so entropy is computed on
the scores normalised to sum to 1.

Last, A Closer Look into MoE (Lo et al. 2024, arXiv 2406.18219), run on the model itself: every expert computes an
output for every token at this layer, and the table says how often the router's first choice is the expert with
the **largest output norm** (they found routers prefer such experts) and how well the router's ranking follows the
norms (Spearman's rho, averaged over tokens).

The weights table shows whether the experts are more alike than chance: a matrix whose mean |cosine| sits near its
random column is as unrelated across experts as random matrices of that size. It follows the paper's §4.1: each
weight matrix (gate, up and down projections where the experts have them) flattened to one vector per expert, and
the cosine similarity of every pair of experts. Small values need a yardstick, because random matrices are not
exactly orthogonal: the random columns are the same summary for seeded random matrices of the same shapes, whose
cosines spread about 1/√(weights), so 0.01 is chance for 10,000 weights but far above it for 50 million. The
heatmap shows every pair, all weights at once: near 0, unrelated functions; near 1, copies.
"""
WINDOW = 64  # tokens per heatmap window: the rank numbers and every token's text label stay legible
HEATMAP_EXPERTS = 24  # experts named in the heatmap (those chosen most in the window); the rest make one row
SIMILARITY_COLUMNS = ("mean_abs", "max_abs", "random_mean_abs", "random_max_abs")


def draw(context: ViewContext) -> None:
    routing, row = context.trace, context.layer_row
    info = routing.model
    explainer(NOTICE, EXPLAINER)
    if absent := routing.missing("probs"):
        st.info(sentence(needs_sentence(absent, "the gate view")))
        _closer_look(context)
        return
    num_tokens = len(routing.tokens)
    start = 0
    if num_tokens > WINDOW:
        last = num_tokens - WINDOW
        start = st.slider(f"Heatmap: first of {WINDOW} tokens shown", 0, last, 0, step=8, key="gate_start")
    heat = grouped_gate_heatmap(gate_heatmap(routing, row, start, start + WINDOW), HEATMAP_EXPERTS)
    show_chart(gate_heatmap_chart(heat, info.scoring, num_tokens, info.num_experts), "gate-heatmap")
    if st.session_state.get("token", 0) >= num_tokens:
        st.session_state.token = 0
    token = st.number_input("Token # for the full distribution", 0, num_tokens - 1, key="token", step=1)
    label = f"#{token} “{neutral_bidi(one_line(routing.tokens.text[token]))}”"
    show_chart(distribution_chart(token_distribution(routing, row, token), info.scoring, label), "gate-token")
    show_chart(entropy_chart(entropy_frame(routing, row), info.num_experts), "gate-entropy")
    _closer_look(context)


def _closer_look(context: ViewContext) -> None:
    """The experts themselves at this layer: needs the model, so not for an uploaded trace."""
    st.subheader("Does the router pick the experts with the biggest outputs?")
    try:
        study = context.expert_study()
    except ExpertsCallUnsupported as error:
        st.info(f"Not available for this family ({error}).")
        return
    if study is None:
        st.caption("This needs the model, to run every expert: not available for an uploaded trace.")
        return
    preference = study.preference.round({"rank_correlation": 2})
    show_table(preference, PREFERENCE_LABELS, percent=("first_is_largest", "chance"), decimals={"rank_correlation": 2})
    layer = context.layer
    st.subheader(f"Are the experts' weights more alike than random ones at layer {layer}?")
    show_table(study.matrices, SIMILARITY_LABELS, decimals=dict.fromkeys(SIMILARITY_COLUMNS, 4))
    show_chart(similarity_chart(similarity_frame(study.similarity), layer), "expert-similarity")
