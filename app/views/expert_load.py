"""View 3: how many tokens each expert receives per layer, and balance figures per layer."""

from __future__ import annotations

import streamlit as st

from app.charts.load import balance_chart, coactivation_chart, domain_chart, load_chart
from app.components import explainer, show_chart
from app.loading import domain_names
from app.views import ViewContext
from moe_core.analyses.load import balance_frame, coactivation_frame, domain_share_frame, load_frame

TITLE = "Expert load"
EXPLAINER = """
How many tokens each expert receives at each layer, counting only each token's **first** choice or **every**
slot of its top-k, against the dashed line of a perfectly even split. Below, per layer: the coefficient of
variation (0 = even), the busiest expert's load over the mean (1 = even), and Switch Transformer's auxiliary
loss N·Σ f_i·P_i (f_i: share of tokens whose first choice is expert i; P_i: mean router probability of expert i),
which training pushes toward 1. Last, OLMoE's co-activation (arXiv 2409.02060, §5) at the chosen layer: of the
tokens routed to expert i, the share also routed to expert j. Pairs that often work together may split one skill.
And routing by domain (Mixtral's Fig. 7, OLMoE's domain specialization): on held-out texts of each training domain,
each expert's share of the slots; an expert far above an even share has specialised in that domain.
"""


BALANCE_COLUMNS = {"cv": "coeff. of variation", "max_over_mean": "max / mean", "aux_loss": "Switch aux loss"}


def _count_label(count: str, top_k: int) -> str:
    return "first choice only" if count == "top1" else f"all top-{top_k}"


def draw(context: ViewContext) -> None:
    routing = context.trace
    explainer(EXPLAINER)
    top_k = routing.model.top_k
    count = st.radio("Count", ["top1", "topk"], horizontal=True, key="load_count",
                     format_func=lambda c: _count_label(c, top_k))  # fmt: skip
    show_chart(load_chart(load_frame(routing), count, routing.model.num_experts), f"expert-load-{count}")
    balance = balance_frame(routing)
    number = st.column_config.NumberColumn(format="%.3f")
    st.dataframe(
        balance.rename(columns=BALANCE_COLUMNS),
        hide_index=True,
        column_config=dict.fromkeys(BALANCE_COLUMNS.values(), number),
    )
    show_chart(balance_chart(balance), "balance")
    layer = routing.model.moe_layers[context.layer_row]
    if top_k == 1:
        st.info(f"Top-1 routing: each token has one expert at layer {layer}, so no two experts are co-activated.")
    else:
        show_chart(coactivation_chart(coactivation_frame(routing, context.layer_row), layer), "coactivation")

    batch = context.domain_batch()
    if batch is None:
        st.caption("Routing by domain needs a model, to run its held-out texts: not available for an uploaded trace.")
    else:
        show_chart(domain_chart(domain_share_frame(batch, context.layer_row, domain_names()), layer), "domains")
