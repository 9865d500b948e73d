"""View 5: how tokens move from their expert at one MoE layer to their expert at the next."""

from __future__ import annotations

import streamlit as st

from app.charts.flow import transition_chart
from app.components import explainer, show_chart
from app.views import ViewContext
from moe_core.analyses.flow import flow_pair, transition_counts, transition_frame

TITLE = "Layer flow"
EXPLAINER = """
Each cell counts the tokens whose first-choice expert is the row's at one MoE layer and the column's at the
next. A bright cell means a group of tokens travels together through the network. Expert numbers are not
related across layers (expert 3 at layer 1 has nothing to do with expert 3 at layer 2), so the diagonal is not
special; what matters is how concentrated each row is.
"""


def draw(context: ViewContext) -> None:
    routing = context.trace
    explainer(EXPLAINER)
    start = flow_pair(routing, context.layer_row)
    if start is None:
        st.info("This model has a single MoE layer: flow needs two.")
        return
    layers = routing.model.moe_layers
    if start != context.layer_row:
        st.caption(f"Layer {layers[context.layer_row]} is the last MoE layer: showing the pair before it.")
    show_chart(transition_chart(transition_frame(routing, start), layers[start], layers[start + 1]), "layer-flow")
    counts = transition_counts(routing, start)
    concentration = counts.max(axis=1).sum() / max(counts.sum(), 1)
    st.metric(
        "Tokens that follow their group's most common path",
        f"{concentration:.0%}",
        help=f"Per row, the share in its busiest column, pooled; {1 / routing.model.num_experts:.0%} if routing "
        "at the next layer ignored the previous one and were even.",
    )
