"""View 4: expert capacity, which slots overflow, and why drops pile up toward the end of a sequence."""

from __future__ import annotations

import streamlit as st

from app.charts.capacity import drop_curve_chart, fill_chart
from app.components import explainer, html_block, routed_text, show_chart, show_table
from app.views import ViewContext
from moe_core.analyses.capacity import (
    capacity_table,
    drop_curve,
    drop_marks,
    fill_after,
    fill_frame,
    first_drop,
    serving_order,
)
from moe_core.analyses.routing import token_frame
from moe_core.capacity import CapacityResult, simulate_capacity

TITLE = "Capacity and drops"
EXPLAINER = """
Capacity-bound MoEs (GShard, Switch, OpenMoE) let each expert take at most **C** slots per sequence:
C = max(1, ⌈capacity factor · k · tokens / experts⌉). A token's slot that arrives at a full expert is **dropped**:
the token skips that expert and only the residual stream (and its other experts) carry it. With the `position`
order all first choices are served in token order, then all second choices, so experts fill up from the start
of the text and **late tokens are dropped most**: OpenMoE's "drop towards the end" (arXiv 2402.01739). The
`score` order serves the most confident tokens first instead, which flattens the curve. This simulation runs on
any model's routing, capacity-bound or not.
"""
MARKS_LEGEND = (
    '<span class="tok drop1">first choice dropped</span> &nbsp; <span class="tok drop2">second choice dropped</span>'
    ' &nbsp; <span class="tok dropall">every slot dropped</span>'
)


def draw(context: ViewContext) -> None:
    routing, row, settings = context.trace, context.layer_row, context.settings
    info = routing.model
    explainer(EXPLAINER)
    result = simulate_capacity(routing, settings.capacity_factor, policy=settings.policy, group=settings.group)
    layer = info.moe_layers[row]
    tokens = int((routing.tokens.sequence == 0).sum()) if settings.group == "sequence" else len(routing.tokens)
    st.markdown(
        f"**Layer {layer}:** C = max(1, ⌈{settings.capacity_factor:g} · {info.top_k} · {tokens} / "
        f"{info.num_experts}⌉) = **{int(result.capacity[row, 0])}** slots per expert"
        + (" (per sequence)" if routing.num_sequences > 1 and settings.group == "sequence" else "")
    )
    table = capacity_table(routing, result)
    show_table(table, {"busiest_demand": "busiest expert's demand", "dropped_slots": "dropped slots",
                       "drop_rate": "drop rate"}, percent=("drop_rate",))  # fmt: skip
    show_chart(fill_chart(fill_frame(result, row), f"Fill of each expert at layer {layer}"), "capacity-fill")

    st.subheader("Which tokens lost an expert")
    html_block(MARKS_LEGEND)
    html_block(routed_text(token_frame(routing, row), info.num_experts, drop_marks(routing, result, row)))

    show_chart(drop_curve_chart(drop_curve(routing, result, row), "Drop rate by position: your text"), "drops-prompt")
    batch = context.domain_batch()
    if batch is None:
        st.caption("The built-in multi-domain batch needs a model: not available for an uploaded trace.")
    else:
        batch_result = simulate_capacity(batch, settings.capacity_factor, policy=settings.policy, group=settings.group)
        title = f"Drop rate by position: {batch.num_sequences} longer held-out texts (prose, code, numbers, …)"
        show_chart(drop_curve_chart(drop_curve(batch, batch_result, row), title), "drops-batch")
    _step_through(context, result)


def _step_through(context: ViewContext, result: CapacityResult) -> None:
    """The teaching moment: serve the slots one by one and watch the experts fill up."""
    routing, row = context.trace, context.layer_row
    order = serving_order(routing, result, row)
    if len(order.token) == 0:
        return
    st.subheader("Step through the serving order")
    st.caption(
        f"Slots of the first text in the order the `{result.policy}` policy serves them: every token's first choice, "
        "then every second choice. Each expert accepts C slots; the next ones are refused."
    )
    step = st.slider("Slots served", 1, len(order.token), len(order.token), key="capacity_step")
    drop = first_drop(order)
    if drop is None:
        st.success("No slot is dropped at this capacity factor.")
    else:
        token = int(order.token[drop])
        st.warning(
            f"First drop at slot {drop + 1}: token #{token} “{routing.tokens.text[token]}” (choice "
            f"{int(order.rank[drop]) + 1}) finds expert {int(order.expert[drop])} full."
        )
    frame = fill_after(order, step, routing.model.num_experts)
    frame["capacity"] = order.capacity
    served = int(order.token[step - 1])
    title = f"After {step} slots (last: token #{served} “{routing.tokens.text[served]}”)"
    show_chart(fill_chart(frame, title, second="refused"), "capacity-step")
