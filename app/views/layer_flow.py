"""View 5: how tokens move from their expert at one MoE layer to their expert at the next."""

from __future__ import annotations

import streamlit as st

from app.charts.matrix import (
    ANY_CHOICE,
    FIRST_CHOICE,
    MATRIX_EXPERTS,
    MIN_ROW_TOKENS,
    PAIR_EXPERTS,
    flow_overview_chart,
    flow_pair_chart,
    flow_pairs_chart,
)
from app.components import explainer, show_chart, unranked_caption
from app.memo import per_trace
from app.views import ViewContext
from moe_core.analyses.flow import all_pairs_frame, flow_pair, flow_summary, transition_frame

TITLE = "Layer flow"
SHORT_TITLE = "Flow"  # its button in the presentation bar, where six must fit one row
NOTICE = (
    "Tokens that share an expert at one layer often share one at the next: a dark cell is a route many tokens "
    "take together."
)  # the one sentence of what to notice
EXPLAINER = f"""
Do tokens that share an expert at one layer also share one at the next? The first chart answers it for every
pair of consecutive MoE layers at once: the share of tokens that take their group's most common path, against
two chance levels, an even next layer (1/E) and the next layer's own choices shuffled across tokens (same load,
no link to the previous layer; small groups raise it, since a group of one token always follows its path).

Below it, every pair as a small heatmap (the busiest experts of each layer, the rest pooled as "other"), to
compare the pairs at a glance; hover a cell for its experts and tokens.

The large heatmap shows one pair, the layer chosen in the sidebar and the next: each row is the tokens whose
first-choice expert is the row's at the first layer (the row label says how many), and each cell the share of
them whose first choice at the next layer is the column's. A dark cell means a group of tokens travels together
through the network. Rows of fewer than {MIN_ROW_TOKENS} tokens are grey: their shares are mostly chance.
Expert numbers are not related across layers (expert 3 at layer 1 has nothing to do with expert 3 at layer 2),
so the diagonal is not special; what matters is how concentrated each row is.
"""


def draw(context: ViewContext) -> None:
    routing = context.trace
    explainer(NOTICE, EXPLAINER)
    start = flow_pair(routing, context.layer_row)
    if start is None:
        st.info("This model has a single MoE layer: flow needs two.")
        return
    layers = routing.model.moe_layers
    unranked = unranked_caption(routing, "flow counts every pair of a token's experts at one layer and the next "
                                "(k × k per token), not first choice to first choice")  # fmt: skip
    chosen = ANY_CHOICE if unranked else FIRST_CHOICE
    summary = per_trace(flow_summary, routing)
    show_chart(flow_overview_chart(summary, layers[start]), "layer-flow-overview")
    every_pair = per_trace(all_pairs_frame, routing, PAIR_EXPERTS)
    show_chart(flow_pairs_chart(every_pair, routing.model.num_experts, layers[start], chosen), "layer-flow-pairs")
    pair = summary.iloc[start]
    columns = st.columns(3)
    columns[0].metric(f"Follow their group's path, layer {layers[start]} → {layers[start + 1]}", f"{pair.followed:.0%}")
    columns[1].metric("Chance: next layer shuffled", f"{pair.shuffled:.0%}")
    columns[2].metric("Chance: even next layer (1/E)", f"{pair.even:.0%}")
    if start != context.layer_row:
        st.caption(f"Layer {layers[context.layer_row]} is the last MoE layer: showing the pair before it.")
    num_experts = routing.model.num_experts
    pair_frame = per_trace(transition_frame, routing, start, MATRIX_EXPERTS)
    show_chart(flow_pair_chart(pair_frame, layers[start], layers[start + 1], num_experts, chosen), "layer-flow")
