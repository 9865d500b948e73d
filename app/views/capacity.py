"""View 4, the capacity lab: which slots a capacity limit drops, what the drops cost the model, and why drops
pile up toward the end of a text."""

from __future__ import annotations

import time

import altair as alt
import numpy as np
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from app.charts.capacity import (
    control_curves_chart,
    delta_loss_chart,
    domain_curves_chart,
    drop_curve_chart,
    fill_chart,
    labelled_curves_chart,
    sequence_drops_chart,
    sweep_chart,
)
from app.components import (
    explainer,
    html_block,
    research_section,
    routed_text_box,
    show_chart,
    show_table,
    unranked_caption,
)
from app.safe_text import md_text, neutral_bidi, one_line
from app.views import ViewContext
from moe_core.analyses.capacity import (
    DROP_KINDS,
    RANKED_DROP_KINDS,
    UNRANKED_DROP_KINDS,
    LayerSlots,
    ServingOrder,
    capacity_table,
    drop_curve,
    drop_flags,
    fill_after,
    fill_frame,
    first_drop,
    serving_order,
)
from moe_core.analyses.drops import (
    capacity_sweep,
    cascade_curves,
    control_curves,
    curve_readiness,
    curves_by_domain,
    delta_loss_curve,
    grouping_curves,
    sequence_drops,
    tail_cost,
)
from moe_core.analyses.routing import token_frame
from moe_core.batches import LabBatch
from moe_core.capacity.forward import Counterfactual
from moe_core.capacity.simulate import EXPERT_CHOICE, CapacityResult, simulate_capacity
from moe_core.traces.types import DROPPED, RoutingTrace

TITLE = "Capacity and drops"
SHORT_TITLE = "Capacity"  # its button in the presentation bar, where six must fit one row
NOTICE = (
    "When each expert can take only so many tokens, the tokens at the end of a text are the ones that lose their "
    "experts, and the model predicts worse there."
)  # the one sentence of what to notice
EXPLAINER = """
- A **slot** is one (token, expert) choice: with top-k routing every token has k slots.
- Capacity-bound MoEs (GShard, Switch, OpenMoE) let each expert take at most **C** slots per **capacity group**
  (one text, or the whole batch): C = max(1, ⌈capacity factor · k · tokens / experts⌉).
- A slot that reaches a full expert is **dropped**: the token skips that expert, and only the residual stream
  (and its other experts) carry it. Kept weights are not renormalised.
- With the `position` order all first choices are served in token order, then all second choices, so experts
  fill up from the start and **late tokens are dropped most**: OpenMoE's "drop towards the end" (arXiv 2402.01739).
  The `score` order serves the tokens with the highest top-1 router probability first (V-MoE), which flattens it.
- **Static simulation** (instant): the limit applied to the routing of an ordinary pass, each layer on its own.
  **Capacity-bound forward** (on demand): the model run with the limit inside, so drops at one layer change what
  the next layer's router sees, and Δloss (nats) says what the drops cost each next-token prediction.
"""
DELTA_MARK = "delta"  # the marked text's Δloss bars, beside drop_flags' kinds
MARK_LABELS = {**DROP_KINDS, DELTA_MARK: "Δloss of the capacity-bound run"}
# Δloss shading of the token text: a bar under each token, darker for a larger cost (nats per token).
DELTA_LEVELS = (0.05, 0.25, 1.0, 2.0)
DELTA_CSS = """<style>
.tok.dl1 {box-shadow: inset 0 -4px 0 rgba(176,0,32,.30);} .tok.dl2 {box-shadow: inset 0 -5px 0 rgba(176,0,32,.55);}
.tok.dl3 {box-shadow: inset 0 -6px 0 rgba(176,0,32,.80);} .tok.dl4 {box-shadow: inset 0 -7px 0 rgba(120,0,20,1);}
.tok.dlminus {box-shadow: inset 0 -4px 0 rgba(30,120,60,.6);}
</style>"""
DELTA_LEGEND = (
    '<span class="tok dl1">Δloss &gt; 0.05</span> <span class="tok dl2">&gt; 0.25</span> '
    '<span class="tok dl3">&gt; 1</span> <span class="tok dl4">&gt; 2 nats</span> '
    '<span class="tok dlminus">better than plain</span>'
)
PLAY_FRAMES = 40  # the step-through animation: about 3 s on any text length


def draw(context: ViewContext) -> None:
    routing, row, settings = context.trace, context.layer_row, context.settings
    info = routing.model
    explainer(NOTICE, EXPLAINER)
    unranked_caption(routing, "each token's experts are served together, tokens in the policy's order "
                     "(Megatron-Core's own position policy), not every first choice before every second")  # fmt: skip
    _decode_note(routing, settings.group)
    result = simulate_capacity(routing, settings.capacity_factor, policy=settings.policy, group=settings.group)
    capped = _capped_run(context)
    _capacity_line(routing, result, row, context.layer)
    _own_drops(routing, row)
    if capped is not None:
        _cost_summary(capped)
    slots = _layer_slots(routing, result, capped)
    source = "capacity-bound forward" if capped is not None else "static simulation"
    capacity = result.capacity_per_layer if capped is None else np.array([c.capacity.max() for c in capped.layers])
    layer = context.layer
    total_capacity = int(result.capacity[row].sum() if capped is None else capped.layers[row].capacity.sum())
    show_chart(
        fill_chart(fill_frame(slots[row], total_capacity), f"Fill of each expert at layer {layer} ({source})"),
        "capacity-fill",
    )
    with research_section("Capacity and drops at every layer"):
        show_table(
            capacity_table(info.moe_layers, slots, capacity),
            {"busiest_demand": "busiest expert's demand", "dropped_slots": "dropped slots", "drop_rate": "drop rate"},
            percent=("drop_rate",),
        )

    st.subheader("Which tokens lost an expert")
    _marked_text(routing, row, slots[row], capped)
    _your_text_curves(routing, row, slots[row], capped, source)
    _honest_batch(context, capped is not None)
    _step_through(context, result)


def _decode_note(routing: RoutingTrace, group: str) -> None:
    """Where the model wrote part of the text: each of its tokens was one decode step, whose capacity is that of
    one token, never the prompt's (OpenMoE's point about chat use); the `steps` group simulates exactly that."""
    written = int(routing.generated().sum())
    if not written:
        return
    if group == "steps":
        st.caption(f"Capacity group steps: the prompt is one prefill group; each of the {written} tokens the model "
                   "wrote is its own decode step, with the capacity of a single token.")  # fmt: skip
    else:
        st.caption(f"The last {written} tokens were written by the model, one decode step each: choose the capacity "
                   "group steps (sidebar) to give each step its own capacity, as a capacity-bound model serves "
                   "them; here they queue with the prompt.")  # fmt: skip


def _capped_run(context: ViewContext) -> Counterfactual | None:
    """The capacity-bound forward of the current text when the visitor asks for it (and a model is loaded)."""
    settings = context.settings
    on = st.toggle(
        "Run the model capacity-bound (measures what the drops cost)",
        key="capped_run",
        help="Runs the model twice: plainly and with the capacity limit inside every MoE layer.",
    )
    if not on:
        return None
    if context.counterfactual is None:
        st.info("The capacity-bound forward needs the model: not available for an uploaded trace.")
        return None
    try:
        return context.counterfactual(context.trace.texts, settings.capacity_factor, settings.policy, settings.group)
    except ValueError as error:  # CappedUnsupported included: one sentence about the family
        st.info(str(error))
        return None


def _capacity_line(routing: RoutingTrace, result: CapacityResult, row: int, layer: int) -> None:
    """C at this layer, with the numbers that make it, read from the result (not recomputed)."""
    info = routing.model
    group_sizes = result.group_sizes
    tokens = int(group_sizes[0]) if len(group_sizes) else 0
    per = " (first text; each text is its own group)" if result.group == "sequence" and len(group_sizes) > 1 else ""
    st.markdown(
        f"**Layer {layer}:** C = max({result.min_capacity}, ⌈{result.capacity_factor:g} · "
        f"{info.top_k} · {tokens} / {info.num_experts}⌉) = **{int(result.capacity[row, 0])}** slots per expert{per}"
    )


def _own_drops(routing: RoutingTrace, row: int) -> None:
    """The drops the model made itself (real capacity: Switch, OpenMoE), beside the simulation that adds to them."""
    own = routing.experts[row] == DROPPED
    if own.any():
        st.markdown(
            f"**The model itself dropped {int(own.sum())} of {own.size} slots** at this layer ({own.mean():.1%}, its "
            "own expert capacity, as traced); the simulation counts them as dropped and applies C to the rest."
        )


def _cost_summary(capped: Counterfactual) -> None:
    """The headline numbers of the capacity-bound forward, with the end-of-text sentence."""
    first, last = tail_cost(capped.tokens.position, capped.tokens.sequence, capped.delta_loss)
    changed = capped.top1_changed[capped.top1_changed >= 0]
    columns = st.columns(4)
    columns[0].metric("mean Δloss", f"{capped.mean_delta_loss:+.3f} nats", help="capacity-bound minus plain loss")
    if capped.policy == EXPERT_CHOICE:  # no slot is turned away: each expert picks its tokens
        columns[1].metric("experts per token", f"{capped.mean_experts_per_token:.2f}", help="mean over layers and "
                          f"tokens (top-{capped.model.top_k} routing gives {capped.model.top_k})")  # fmt: skip
    else:
        columns[1].metric("slots dropped", f"{capped.dropped_slot_rate:.1%}", help="over all MoE layers")
    columns[2].metric("tokens with no expert", f"{capped.fully_dropped_token_rate:.1%}", help="per layer and token")
    columns[3].metric("top-1 prediction changed", f"{changed.mean() if len(changed) else 0:.1%}")
    if np.isfinite(first) and np.isfinite(last):
        st.markdown(
            f"The **last quarter** of the text loses **{last:+.3f} nats per token**, the first quarter {first:+.3f}."
        )


def _layer_slots(routing: RoutingTrace, result: CapacityResult, capped: Counterfactual | None) -> list[LayerSlots]:
    """Per layer, the slots to draw: the capacity-bound pass's when it ran, else the static simulation's."""
    if capped is None:
        return [LayerSlots.simulated(routing, result, row) for row in range(len(routing.model.moe_layers))]
    return [LayerSlots(layer.experts, layer.kept, routing.model.num_experts) for layer in capped.layers]


def _marked_text(routing: RoutingTrace, row: int, slots: LayerSlots, capped: Counterfactual | None) -> None:
    """The text with one kind of loss marked at a time (a class reads one mark, not five at once): a selector
    of the kinds this trace has, and the Δloss bars when the capacity-bound forward ran."""
    frame = token_frame(routing, row)
    kinds = list(RANKED_DROP_KINDS if routing.slots_ranked else UNRANKED_DROP_KINDS)
    kinds += [DELTA_MARK] if capped is not None else []
    if st.session_state.get("drop_mark") not in kinds:  # "Δloss" kept from a run the toggle has since turned off
        st.session_state.drop_mark = kinds[0]
    kind = st.radio("Mark the tokens where", kinds, key="drop_mark", horizontal=True, format_func=MARK_LABELS.get)
    if kind == DELTA_MARK:
        marks = _delta_classes(capped.delta_loss)
        html_block(DELTA_CSS + DELTA_LEGEND)
    else:
        flags = drop_flags(slots)[kind]
        marks = list(np.where(flags, kind, ""))
        html_block(f'<span class="tok {kind}">{MARK_LABELS[kind]}</span>: {int(flags.sum())} of {len(flags)} tokens')
    if capped is not None:
        frame = frame.assign(route=[f"{r} · Δloss {d:+.3f}" if np.isfinite(d) else r
                                    for r, d in zip(frame["route"], capped.delta_loss, strict=True)])  # fmt: skip
        st.caption("Marks from the capacity-bound forward (hover a token for its Δloss).")
    else:
        st.caption("Marks from the static simulation (turn on the capacity-bound forward above to see the cost).")
    routed_text_box(frame, routing.model.num_experts, marks, key="drops_text_start", from_the_end=True)


def _delta_classes(delta: np.ndarray) -> list[str]:
    level = np.searchsorted(DELTA_LEVELS, np.nan_to_num(delta, nan=0.0), side="right")
    classes = np.where(level > 0, np.char.add("dl", level.astype(str)), "")
    return list(np.where(np.nan_to_num(delta) < -DELTA_LEVELS[0], "dlminus", classes))


def _your_text_curves(
    routing: RoutingTrace, row: int, slots: LayerSlots, capped: Counterfactual | None, source: str
) -> None:
    st.subheader("Drop rate by position: your text")
    if note := curve_readiness(routing):
        st.info(note)
    show_chart(drop_curve_chart(drop_curve(routing.tokens.position, slots), f"Your text ({source})"), "drops-prompt")
    if capped is not None:
        frame = delta_loss_curve(capped.tokens.position, capped.delta_loss)
        title = "What the drops cost, by position (capacity-bound minus plain)"
        show_chart(delta_loss_chart(frame, title), "delta-loss")


def _cascade(context: ViewContext, lab: LabBatch, static: LayerSlots) -> None:
    """The windows run capacity-bound: the real drops by position beside the static curve, each labelled."""
    settings, row = context.settings, context.layer_row
    window = int(lab.trace.tokens.position.max()) + 1
    try:
        capped = context.counterfactual(lab.windows.texts, settings.capacity_factor, settings.policy, settings.group,
                                        window)  # fmt: skip
    except ValueError as error:  # CappedUnsupported included
        st.info(str(error))
        return
    layer = capped.layers[row]
    forward = LayerSlots(layer.experts, layer.kept, capped.model.num_experts)
    frame = cascade_curves(capped.tokens.position, static, forward)
    title = f"Layer {context.layer}: the static simulation against the capacity-bound forward"
    show_chart(labelled_curves_chart(frame, "source", "drops from", title), "drops-cascade")
    st.caption("The static simulation applies capacity to each layer on the uncapped routing; the capacity-bound "
               "forward applies it inside the pass, so each layer routes what the drops before it left.")  # fmt: skip
    kept = capped.routing_kept_by_layer()
    if len(kept) < 2:
        return
    if row == 0:
        st.caption(f"At the first MoE layer the two lines are one (nothing was dropped before it). A drop changes "
                   f"what later layers see: at layer {capped.layers[1].layer} only {kept[1]:.0%} of the tokens keep "
                   "the plain pass's routing; choose it to see the cascade.")  # fmt: skip
    else:
        st.caption(f"A drop changes what later layers see: here {kept[row]:.0%} of the tokens keep the plain "
                   "pass's routing, and the capacity-bound line is the drops they really met.")  # fmt: skip


def _honest_batch(context: ViewContext, capped_on: bool) -> None:
    """Drop towards the end on texts that make it a fair comparison, with the controls that explain it."""
    settings, row = context.settings, context.layer_row
    st.subheader("Drop towards the end, on equal-length texts")
    lab = context.lab_batch()
    if lab is None:
        st.caption("The built-in batch needs a model: not available for an uploaded trace.")
        return
    batch = lab.trace
    result = simulate_capacity(batch, settings.capacity_factor, policy=settings.policy, group=settings.group)
    slots = LayerSlots.simulated(batch, result, row)
    count, length = batch.num_sequences, int(batch.tokens.position.max()) + 1
    st.caption(
        f"{count} held-out windows of exactly {length} tokens ({len(set(lab.windows.domains))} domains, taken in "
        "turn: one of each, then the next of each), so every position bin holds the same texts and no domain is "
        "served last in a shared budget. Static simulation at this layer; the grey bars count the slots per bin."
    )
    frame = curves_by_domain(batch, slots, lab.windows.domains)
    show_chart(domain_curves_chart(frame, "Slots dropped by position, per domain and pooled"), "drops-domains")
    groupings = grouping_curves(batch, settings.capacity_factor, settings.policy, row)
    title = f"Per text or per batch: the same windows at CF {settings.capacity_factor:g}"
    show_chart(labelled_curves_chart(groupings, "grouping", "capacity group", title), "drops-grouping")
    st.caption("Per text, each window has its own C; per batch, one C for all windows together, as the model was "
               "trained: a window's hot expert is another's cold one, so far fewer slots drop.")  # fmt: skip
    if capped_on and context.counterfactual is not None:
        _cascade(context, lab, slots)
    if settings.group == "batch":
        st.markdown(
            "With **one capacity group for the whole batch**, the budget is spent in serving order across texts: "
            "the **later texts of the batch** lose most, whatever their content."
        )
        bars = sequence_drops(batch, slots)
        show_chart(sequence_drops_chart(bars, "Slots dropped per text of the batch"), "drops-per-text")
    st.markdown(
        "**Why the end?** Serve the same routing last-to-first and the drops move to the start; shuffle which "
        "token has which routing and the curve stays: the drops follow the serving order, not the tokens."
    )
    controls = control_curves(batch, settings.capacity_factor, settings.group, row)
    show_chart(control_curves_chart(controls, "The serving order decides who is dropped"), "drops-controls")
    sweep = capacity_sweep(batch, settings.policy, settings.group, row)
    show_chart(sweep_chart(sweep, "More capacity, fewer drops: the same batch at four capacity factors"), "drops-sweep")


def _step_through(context: ViewContext, result: CapacityResult) -> None:
    """The teaching moment: serve the slots one by one and watch the experts fill up (static simulation)."""
    routing, row = context.trace, context.layer_row
    order = serving_order(routing, result, row)
    total = len(order.token)
    if total == 0:
        return
    st.subheader("Step through the serving order")
    st.caption(
        f"Slots of the first text in the order the `{result.policy}` policy serves them: every token's first choice, "
        "then every second choice. Each expert accepts C slots; the next ones are dropped."
    )
    drop = first_drop(order)
    start = total if drop is None else drop + 1
    signature = (routing.texts, row, result.capacity_factor, result.policy, result.group)
    if st.session_state.get("capacity_step_for") != signature:  # new text or settings: start at the first drop
        st.session_state.capacity_step_for = signature
        st.session_state.capacity_step = start
    st.session_state.capacity_step = min(max(1, st.session_state.get("capacity_step", start)), total)
    controls, chart = st.container(), st.container()
    if st.session_state.pop("capacity_play", False):
        with chart:
            frames = st.empty()
            _play(routing, order, frames)
            frames.empty()
        st.session_state.capacity_step = total
    with controls:
        slider, button = st.columns([5, 1])
        step = slider.slider("Slots served", 1, total, key="capacity_step")
        button.button("▶ Play", key="capacity_play_button", on_click=_start_playing, help="Serve every slot in order")
        if drop is None:
            st.success("No slot is dropped at this capacity factor.")
        else:
            token = int(order.token[drop])
            st.warning(
                f"First drop at slot {drop + 1}: token #{token} “{md_text(routing.tokens.text[token])}” (choice "
                f"{int(order.rank[drop]) + 1}) finds expert {int(order.expert[drop])} full."
            )
    with chart:
        show_chart(_fill_step(routing, order, step), "capacity-step")


def _start_playing() -> None:
    st.session_state.capacity_play = True


def _fill_step(routing: RoutingTrace, order: ServingOrder, step: int) -> alt.TopLevelMixin:
    frame = fill_after(order, step, routing.model.num_experts)
    frame["capacity"] = order.capacity
    served = int(order.token[step - 1])
    shown = neutral_bidi(one_line(routing.tokens.text[served]))
    return fill_chart(frame, f"After {step} slots (last: token #{served} “{shown}”)")


def _play(routing: RoutingTrace, order: ServingOrder, chart: DeltaGenerator) -> None:
    """Serve the slots from the first to the last in PLAY_FRAMES frames, redrawing the fill chart in place."""
    for step in np.unique(np.linspace(1, len(order.token), PLAY_FRAMES).astype(int)):
        chart.altair_chart(_fill_step(routing, order, int(step)), width="stretch", theme=None)
        time.sleep(0.06)
