"""View: routing over training, from the model's own series (the demo model ships one; any model folder with a
series/ written by trace-checkpoints has one)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from app.charts.series import layer_lines_chart, token_id_chart
from app.components import explainer, html_block, legend, routed_text, show_chart, text_box
from app.safe_text import md_text
from app.views import ViewContext
from moe_core.analyses.routing import token_frame
from moe_core.analyses.series import Series, TrainingCurves, training_curves, what_training_shows
from moe_core.series.runner import text_names
from moe_core.series.store import load_series, read_manifest, series_folder

TITLE = "Training"
SHORT_TITLE = "Training"  # its button in the presentation bar
NOTICE = "Watch when each token's expert stops changing during training: OpenMoE found it is fixed early."
EXPLAINER = """
The same held-out texts (one per domain) were routed by the model at checkpoints through its training; every
curve compares a checkpoint with the final model.

**Router saturation** (OLMoE, arXiv 2409.02060 §5): per MoE layer, the share of tokens whose first choice is
already the final model's (top-1), and the mean share of their k experts that are (top-k). **Early routing
learning** (OpenMoE, arXiv 2402.01739): for every token id seen at least 5 times, its most frequent first-choice
expert at that step against the final one; OpenMoE found this fixed early in pre-training and barely changing
after. **Load balance**: the busiest expert's slots over the mean (1 = even) and the coefficient of variation of
the experts' slots. **Domain specialization**: how far each domain's use of the experts is from all domains
pooled (total-variation distance, 0 = every domain uses the experts alike).

The text below is coloured by each token's first choice at the chosen layer and step; **Play** steps through
training. A short run like the demo model's (2,600 steps on one CPU) need not behave like a pre-training of
trillions of tokens: the first sentence says what this one shows.
"""
PLAY_FRAMES = 40  # Play shows this many steps, evenly spaced, from the first to the last
PLAY_SECONDS = 0.15  # per frame


def page_notice(model_id: str | None) -> str:
    """The sentence this view opens with: worded from the model's own series, NOTICE where it has none."""
    data = _data(model_id) if model_id else None
    return NOTICE if data is None else what_training_shows(data.curves)


def offered(model_id: str | None) -> bool:
    """Whether the page's model has a training series: the view is offered only then (main reads this)."""
    return model_id is not None and _folder(model_id) is not None


def _folder(model_id: str) -> Path | None:
    try:
        return series_folder(model_id)
    except ValueError:
        return None


@dataclass(frozen=True)
class TrainingData:
    series: Series
    names: tuple[str, ...]  # each text's domain (or "text 1", …)
    curves: TrainingCurves


@st.cache_resource(max_entries=2, show_spinner="Reading the training series …")
def _training_data(folder: str, stamp: int) -> TrainingData:
    """One series, read and analysed once per process (`stamp`: the manifest's mtime, so a series that grows is
    read again)."""
    path = Path(folder)
    series = load_series(path)
    names = text_names((read_manifest(path) or {}).get("texts", []))
    return TrainingData(series, names, training_curves(series, names))


def _data(model_id: str) -> TrainingData | None:
    """The model's series, analysed; None (and one sentence on the page) where it has none or it is damaged."""
    folder = _folder(model_id)
    if folder is None:
        return None
    try:
        return _training_data(str(folder), (folder / "series.json").stat().st_mtime_ns)
    except (OSError, ValueError) as error:
        st.warning(f"The training series cannot be read: {md_text(str(error).splitlines()[0])}")
        return None


def _snapshot_text(data: TrainingData, step: int, layer_row: int, text: int) -> str:
    """One text of the series coloured by its first choices at `step` (escaped token spans in their box)."""
    routing = data.series.traces[data.series.steps.index(step)]
    frame = token_frame(routing, layer_row)
    rows = (routing.tokens.sequence == text).nonzero()[0]
    window = slice(int(rows[0]), int(rows[-1]) + 1)
    return text_box(routed_text(frame, routing.model.num_experts, window=window), len(rows))


def _settle_choices(steps: tuple[int, ...], names: tuple[str, ...]) -> None:
    """A step or text from a link that this series lacks moves to the nearest one (a select_slider raises on a
    value outside its options)."""
    step = st.session_state.get("series_step", steps[0])
    if step not in steps:
        st.session_state.series_step = min(steps, key=lambda s: (abs(s - step), s))
    if not 0 <= st.session_state.get("series_text", 0) < len(names):
        st.session_state.series_text = 0


def _stepper(data: TrainingData, layer: int, layer_row: int) -> None:
    """The step slider, the text picker and Play, over one text coloured by its first choices."""
    steps = data.series.steps
    _settle_choices(steps, data.names)
    st.subheader(f"First choice of each token at layer {layer}, step by step")
    picker, slider, play = st.columns([2, 4, 1], vertical_alignment="bottom")
    label = [name.capitalize() for name in data.names]
    picker.selectbox("Text", range(len(data.names)), key="series_text", format_func=label.__getitem__)
    slider.select_slider("Training step", options=list(steps), key="series_step")
    playing = play.button("▶ Play", help="Step through training, from the first checkpoint to the last")
    html_block(legend(data.series.traces[-1].model.num_experts))
    caption, text = st.empty(), st.empty()
    text_index = st.session_state.series_text
    frames = [st.session_state.series_step]
    if playing:
        count = min(PLAY_FRAMES, len(steps))
        frames = [steps[round(i * (len(steps) - 1) / max(1, count - 1))] for i in range(count)]
    for number, step in enumerate(frames):
        caption.markdown(f"**step {step:,}** of {steps[-1]:,}")
        with text.container():
            html_block(_snapshot_text(data, step, layer_row, text_index))
        if number < len(frames) - 1:
            time.sleep(PLAY_SECONDS)


def draw(context: ViewContext) -> None:
    data = _data(context.model_id) if context.model_id else None
    if data is None:
        if context.model_id and _folder(context.model_id) is not None:
            return  # damaged: _data said why
        st.info("This model has no training series: trace its checkpoints with `python -m moe_core "
                "trace-checkpoints --out MODEL_FOLDER/series`, or open the demo model.")  # fmt: skip
        return
    curves = data.curves
    explainer(what_training_shows(curves), EXPLAINER)  # = page_notice, from the data already read
    final = data.series.traces[-1]
    if context.layer not in final.model.moe_layers:
        st.info("The series was traced from another model's layers: pick one of its layers.")
        return
    layer, layer_row = context.layer, final.layer_index(context.layer)
    st.caption(f"{len(data.series.steps)} checkpoints, steps {data.series.steps[0]:,}–{data.series.steps[-1]:,}; "
               f"{len(final.tokens):,} held-out tokens in {len(data.names)} texts.")  # fmt: skip
    left, right = st.columns(2)
    with left:
        show_chart(layer_lines_chart(curves.saturation, "top1_match_final", "tokens with the final first choice",
                                     "Router saturation: first choice (top-1)", percent=True, floor=0),
                   "training-saturation-top1")  # fmt: skip
    with right:
        show_chart(layer_lines_chart(curves.saturation, "set_match_final", "experts shared with the final model",
                                     "Router saturation: all top-k", percent=True, floor=0),
                   "training-saturation-topk")  # fmt: skip
    _stepper(data, layer, layer_row)
    show_chart(token_id_chart(curves.token_ids, "Early routing learning: token ids already on their final expert"),
               "training-token-ids")  # fmt: skip
    left, right = st.columns(2)
    with left:
        show_chart(layer_lines_chart(curves.balance, "max_over_mean", "busiest expert / mean (1 = even)",
                                     "Load balance: max/mean"), "training-balance")  # fmt: skip
    with right:
        show_chart(layer_lines_chart(curves.specialization, "domain_specialization", "distance from pooled use",
                                     "Domain specialization"), "training-domains")  # fmt: skip
    with st.expander("Load balance: coefficient of variation"):
        show_chart(layer_lines_chart(curves.balance, "cv", "std / mean of the experts' slots",
                                     "Load balance: CV"), "training-cv")  # fmt: skip
