"""View 3: how many tokens each expert receives per layer, and balance figures per layer."""

from __future__ import annotations

import streamlit as st

from app.charts.compare import paired_bars_chart
from app.charts.load import balance_chart, coactivation_chart, domain_chart, load_chart
from app.charts.matrix import MATRIX_EXPERTS
from app.components import explainer, research_section, sentence, show_chart, show_table, unranked_caption
from app.memo import per_trace
from app.state import LOAD_COUNTS
from app.views import ViewContext
from moe_core.analyses.load import (
    balance_frame,
    coactivation_frame,
    domain_share_frame,
    load_frame,
    phase_load_frame,
    pooled_transformers_aux_loss,
)
from moe_core.batches import held_out_texts
from moe_core.traces.types import RoutingTrace, needs_sentence

TITLE = "Expert load"
SHORT_TITLE = "Load"  # its button in the presentation bar, where six must fit one row
NOTICE = (
    "The experts do not share the work evenly: a bar far above the dashed line is an expert that takes many of the "
    "tokens at its layer."
)  # the one sentence of what to notice
EXPLAINER = """
How many tokens each expert receives at each layer, counting only each token's **first** choice or **every**
slot of its top-k, against the dashed line of a perfectly even split.

The balance table shows which layers lean on a few experts: the further a figure sits from its even value, the
less even the layer. Each figure has one definition:
- **coeff. of variation**: std / mean of the top-k slots per expert (0 = even).
- **max / mean** and DeepSeek's **MaxVio** (arXiv 2408.15664): busiest expert's slots over the mean (1 = even),
  and (max − mean) / mean (0 = even).
- **Switch aux**: Switch Transformer's N·Σ f_i·P_i (arXiv 2101.03961, eq. 4), f_i the share of tokens whose
  first choice is expert i (a token the model dropped counts for the expert it chose before the capacity mask),
  P_i the mean router probability of expert i: 1 = even, N = one expert takes everything.
- **transformers aux**: transformers' `load_balancing_loss_func` on this layer, the loss Mixtral-style models
  train with: the same product, but f counts the **top-k** picks of the softmax of the logits, so even is k.
  Under the table, the same function over all layers pooled, as training computes it.
- **router z-loss**: ST-MoE's mean over tokens of logsumexp(logits)² (arXiv 2202.08906): large values mean
  large router logits, which make the softmax unstable in low precision.

Last, OLMoE's co-activation (arXiv 2409.02060, §5) at the chosen layer: of the
tokens routed to expert i, the share also routed to expert j. Pairs that often work together may split one skill.
And routing by domain (Mixtral's Fig. 7, OLMoE's domain specialization): on held-out texts of each training domain,
each expert's share of the slots; an expert far above an even share has specialised in that domain.
"""


BALANCE_COLUMNS = {
    "cv": ("coeff. of variation", "std / mean of the top-k slots per expert; 0 = even"),
    "max_over_mean": ("max / mean", "busiest expert's top-k slots over the mean; 1 = even"),
    "max_vio": ("MaxVio", "DeepSeek's (max - mean) / mean of the top-k slots; 0 = even"),
    "switch_aux_loss": ("Switch aux (top-1 f)", "N·Σ f·P, f from first choices before the capacity mask; 1 = even"),
    "transformers_aux_loss": ("transformers aux (top-k f)", "load_balancing_loss_func on this layer; k = even"),
    "z_loss": ("router z-loss", "mean over tokens of logsumexp(logits)²"),
}


def _count_label(count: str, top_k: int) -> str:
    return "first choice only" if count == "top1" else f"all top-{top_k}"


def _phase_load(routing: RoutingTrace, row: int, layer: int) -> None:
    """Where the model wrote part of the text: the prompt's load against its own writing's, side by side."""
    phases = per_trace(phase_load_frame, routing, row)
    if phases.empty:
        return
    long = phases.rename(columns={"phase": "side"})
    counts = long.groupby("side", sort=False)["slots"].sum()
    long["side"] = [f"{side} ({counts[side]:,} slots)" for side in long["side"]]
    title = f"The prompt against the model's own writing at layer {layer}"
    chart = paired_bars_chart(long, "share", "share of the phase's slots", routing.model.num_experts, title, True)
    show_chart(chart, "expert-load-phases")


def draw(context: ViewContext) -> None:
    routing = context.trace
    explainer(NOTICE, EXPLAINER)
    top_k = routing.model.top_k
    if unranked_caption(routing, f"expert load counts all top-{top_k} slots"):
        count = "topk"
    else:
        count = st.radio("Count", LOAD_COUNTS, horizontal=True, key="load_count",
                         format_func=lambda c: _count_label(c, top_k))  # fmt: skip
    show_chart(load_chart(per_trace(load_frame, routing), count, routing.model.num_experts), f"expert-load-{count}")
    _phase_load(routing, context.layer_row, context.layer)
    balance = per_trace(balance_frame, routing).dropna(
        axis="columns", how="all"
    )  # a compact trace lacks the score-based ones
    labels = {name: label for name, (label, _) in BALANCE_COLUMNS.items()}
    helps = {name: meaning for name, (_, meaning) in BALANCE_COLUMNS.items()}
    with research_section("How even is each layer? Six measures"):
        show_table(balance, labels, decimals=dict.fromkeys(BALANCE_COLUMNS, 3), helps=helps)
        if absent := routing.missing("probs", "logits"):
            st.caption(sentence(needs_sentence(absent, "the aux and z-loss columns", plural=True)))
        if routing.has("logits"):
            st.caption(
                f"transformers' load_balancing_loss_func over all {len(routing.model.moe_layers)} MoE layers pooled, "
                f"as training adds it (before its coefficient): {per_trace(pooled_transformers_aux_loss, routing):.3f} "
                f"({top_k} under perfectly even routing)."
            )
    show_chart(balance_chart(balance), "balance")
    layer = context.layer
    if top_k == 1:
        st.info(f"Top-1 routing: each token has one expert at layer {layer}, so no two experts are co-activated.")
    else:
        pairs = per_trace(coactivation_frame, routing, context.layer_row, MATRIX_EXPERTS)
        show_chart(coactivation_chart(pairs, layer, routing.model.num_experts), "coactivation")

    batch = context.domain_batch()
    if batch is None:
        st.caption("Routing by domain needs a model, to run its held-out texts: not available for an uploaded trace.")
    else:
        frame = domain_share_frame(batch, context.layer_row, tuple(held_out_texts()))
        show_chart(domain_chart(frame, layer), "domains")
