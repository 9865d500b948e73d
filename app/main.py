"""MoE Routing Explorer: type text, see how a Mixture-of-Experts model routes every token, layer by layer.

Run from the repository root: `python -m streamlit run app/main.py`.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run app/main.py` puts only app/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402
from streamlit.delta_generator import DeltaGenerator  # noqa: E402
from streamlit.runtime.uploaded_file_manager import UploadedFile  # noqa: E402

from app.components import PAGE_CSS, PRESENTATION_CSS, html_block, sentence, set_chart_settings  # noqa: E402
from app.continuation import (  # noqa: E402
    CONTINUE_TOKENS,
    ERROR_KEY,
    PENDING_KEY,
    generated_trace,
    generation_caption,
    request_continuation,
    stream_if_requested,
)
from app.corpus import corpus_page  # noqa: E402
from app.export import ChartStamp  # noqa: E402
from app.loading import (  # noqa: E402
    ExpertStudy,
    domain_batch,
    get_counterfactual,
    get_expert_study,
    get_lab_batch,
    get_model,
    get_retrace,
    get_trace,
    presets,
    variant_key,
    warm_up,
)
from app.operator import operator_options  # noqa: E402
from app.safe_text import md_code, md_text  # noqa: E402
from app.session import keep_settings  # noqa: E402
from app.state import (  # noqa: E402
    CF_SLIDER_MAX,
    CF_SLIDER_MIN,
    CF_SLIDER_STEP,
    MAX_PROMPT_CHARS,
    URL_KEYS,
    Settings,
    from_query,
    prompt_cut_notice,
    to_query,
)
from app.verify_badge import draw_badge  # noqa: E402
from app.view_registry import VIEWS, view_module  # noqa: E402
from app.views import ViewContext  # noqa: E402
from moe_core.capacity.forward import Counterfactual  # noqa: E402
from moe_core.capacity.simulate import GROUPS, POLICIES, policy_help  # noqa: E402
from moe_core.engines import UPLOAD_TYPES, ModelHints, Payload, read_payloads  # noqa: E402
from moe_core.engines.megatron import MAX_PIPELINE_STAGES  # noqa: E402
from moe_core.models import ModelLoadError, allowed_models, bundled_vocabulary_size, model_key  # noqa: E402
from moe_core.traces.checks import check_vocabulary  # noqa: E402
from moe_core.traces.io import MAX_TRACE_MB, TraceFormatError, to_json_text, to_parquet_bytes  # noqa: E402
from moe_core.traces.types import MissingRouting, RoutingTrace  # noqa: E402

VIEW_MODULES = {view: view_module(view) for view in VIEWS}  # imported once, in the registry's order
APP_TITLE = "MoE Routing Explorer"
SOURCES = {"upload": "the uploaded trace", "text": "the text above"}  # what the page shows when a file is uploaded
# The presentation bar's sliders (layer, capacity factor): with the view picker and the order, one row at 1280 px.
BAR_SLIDER_PX = {"layer": 100, "factor": 168}  # seven view buttons, both sliders and the order fit 1280 px
CAPACITY_VIEWS = ("capacity",)  # the views that read the capacity factor and the slot order


def _seed_session_from_url() -> None:
    """On a session's first run, fill every widget from the link (bad values -> defaults + notices)."""
    if "seeded" in st.session_state:
        return
    settings, notices = from_query(st.query_params.to_dict(), Settings(model=operator_options().model))
    if not settings.prompt:
        settings = replace(settings, prompt=next(iter(presets().values())))
    allowed = allowed_models()
    if allowed and settings.model not in allowed:
        if "model" in st.query_params:
            notices.append(f"Model {md_code(settings.model[:60])} is not offered here; showing {md_text(allowed[0])}.")
        settings = replace(settings, model=allowed[0])
    for name, value in settings.__dict__.items():
        st.session_state[name] = value
    st.session_state.notices = notices
    st.session_state.seeded = True


def _apply_preset() -> None:
    st.session_state.prompt = presets()[st.session_state.preset]
    st.session_state.source = "text"  # a visitor who picks a preset wants to see it, not an uploaded trace


def _set_prompt(prompt: str, where: str) -> None:
    """The text to trace, cut to MAX_PROMPT_CHARS with a notice (the box's own limit dropped long pastes silently)."""
    if len(prompt) > MAX_PROMPT_CHARS:
        prompt = prompt[:MAX_PROMPT_CHARS]
        st.session_state.prompt_notice = prompt_cut_notice(where)
    st.session_state.prompt = prompt


def _typed_text() -> None:
    _set_prompt(st.session_state.prompt, "in the box")
    st.session_state.source = "text"


def _new_upload() -> None:
    st.session_state.source = "upload" if st.session_state.upload else "text"


def _shows_upload() -> bool:
    """Whether the page shows the uploaded trace (not the text): a file is there and Show says so."""
    return bool(st.session_state.get("upload")) and st.session_state.get("source", "upload") == "upload"


def _continued_at(model_id: str | None) -> int | None:
    """The character where the model's own writing begins in the shown text, while it is exactly what it wrote."""
    if model_id is None or st.session_state.get("continued_text") != st.session_state.prompt:
        return None
    return st.session_state.get("continued_at")


def _sidebar_inputs() -> list[UploadedFile]:
    """Model, prompt and trace-upload widgets; returns the uploaded trace files (none: an empty list)."""
    sidebar = st.sidebar
    sidebar.header("Input")
    allowed = allowed_models()
    if allowed:
        sidebar.selectbox("Model", allowed, key="model", help="This deployment offers these models.")
    else:
        sidebar.text_input("Model", key="model", help="Bundled name, local folder, or Hugging Face hub id.")
    sidebar.selectbox(
        "Teaching presets",
        list(presets()),
        key="preset",
        index=None,
        on_change=_apply_preset,
        placeholder="Choose a preset …",
    )
    sidebar.text_area("Text", key="prompt", height=180, on_change=_typed_text)
    if notice := st.session_state.pop("prompt_notice", None):
        sidebar.warning(notice)
    sidebar.button(
        f"Let the model continue ({CONTINUE_TOKENS} tokens)",
        key="continue",
        on_click=request_continuation,
        disabled=_shows_upload(),
        help="Appends what the model writes next (greedy, so the same text always gets the same continuation), each "
        "token shown as it is written; the views then show the routing the model used while writing.",
    )
    if error := st.session_state.pop(ERROR_KEY, None):
        sidebar.warning(f"Cannot continue the text: {md_text(error)}")
    # In a popover, which the browser mounts when it is opened: the upload widget's scripts are no longer part of
    # every new visitor's first page, and the sidebar is shorter (see components.show_chart).
    with sidebar.popover("…or open a saved trace or engine dump", width="stretch"):
        uploads = st.file_uploader(
            f"A saved trace or an engine's routing dump (vLLM, SGLang, Megatron-Core), up to {MAX_TRACE_MB} MB",
            type=UPLOAD_TYPES,
            key="upload",
            max_upload_size=MAX_TRACE_MB,
            accept_multiple_files=True,
            on_change=_new_upload,
            help="One file, or every router_trace_rank*.jsonl of one Megatron-Core run (they are merged).",
        )
    if uploads:
        sidebar.radio("Show", list(SOURCES), key="source", format_func=SOURCES.get, horizontal=True)
        if any(_is_megatron(upload.name) for upload in uploads):
            sidebar.number_input(
                "Pipeline stages",
                min_value=1,
                max_value=MAX_PIPELINE_STAGES,
                key="pipeline_stages",
                help="Megatron-Core: each pipeline stage numbers its layers from 0; say how many the run had so "
                "their layers are put back in order (the CLI's --pipeline-stages).",
            )
    return list(uploads or ())


def _is_megatron(name: str) -> bool:
    return name.endswith(".jsonl")  # Megatron-Core's router_trace_rank*.jsonl: the one format with stages


def _moe_layers(routing: RoutingTrace) -> list[int]:
    """The trace's MoE layers; a layer from the link that is not one of them becomes the first, with a notice."""
    layers = list(routing.model.moe_layers)
    if st.session_state.layer not in layers:
        if "layer" in st.query_params and "layer_notice" not in st.session_state:
            st.session_state.notices.append(f"Layer {st.session_state.layer} is not an MoE layer; showing {layers[0]}.")
            st.session_state.layer_notice = True
        st.session_state.layer = layers[0]
    return layers


def _layer_slider(where: DeltaGenerator, layers: list[int]) -> None:
    where.select_slider("Layer", options=layers, key="layer")


def _capacity_factor_slider(where: DeltaGenerator) -> None:
    where.slider(
        "Capacity factor",
        CF_SLIDER_MIN,
        CF_SLIDER_MAX,
        step=CF_SLIDER_STEP,
        key="capacity_factor",
        help="C = ceil(factor · k · tokens / experts) slots per expert and sequence.",
    )


def _policy_radio(where: DeltaGenerator) -> None:
    where.radio(
        "Slot order",
        POLICIES,
        key="policy",
        horizontal=True,
        width="content",
        help=policy_help(POLICIES),
    )


def offered_views(model_id: str | None) -> tuple[str, ...]:
    """The views this page offers: every view, less those whose module says the model lacks what they need
    (the Training view without a training series)."""
    return tuple(v for v in VIEWS if getattr(VIEW_MODULES[v], "offered", lambda _: True)(model_id))


def _settle_view(views: tuple[str, ...]) -> None:
    """A view this page does not offer (a link's view=training for a model without a series) falls back to the
    first, and the page says so."""
    if st.session_state.view not in views:
        missing = VIEW_MODULES[st.session_state.view].TITLE
        st.session_state.notices.append(f"This model has no {md_text(missing)} view: showing "
                                        f"{md_text(VIEW_MODULES[views[0]].TITLE)}.")  # fmt: skip
        st.session_state.view = views[0]


def _view_selector(where: DeltaGenerator, views: tuple[str, ...], short: bool = False) -> None:
    where.segmented_control(
        "View",
        views,
        key="view",
        format_func=lambda v: VIEW_MODULES[v].SHORT_TITLE if short else VIEW_MODULES[v].TITLE,
        required=True,
        label_visibility="collapsed",
        width="content",
    )


def _sidebar_settings(layers: list[int]) -> None:
    """The sidebar's view settings. In presentation mode the sidebar is hidden, so layer, capacity factor and
    policy move to the control bar (a widget can be drawn only once per run)."""
    sidebar = st.sidebar
    if not st.session_state.present:
        sidebar.header("View")
        _layer_slider(sidebar, layers)
        sidebar.header("Capacity")
        _capacity_factor_slider(sidebar)
        _policy_radio(sidebar)
    sidebar.radio(
        "Capacity group",
        GROUPS,
        key="group",
        horizontal=True,
        help="sequence: each text has its own C. batch: all texts share one. steps: as a model serves while it "
        "writes, the prompt in one prefill group and each token the model wrote in its own decode step.",
    )
    sidebar.toggle("Presentation mode", key="present", help="Hide the chrome, large type: for projectors.")


def _leave_presentation() -> None:
    st.session_state.present = False


def _view_controls(layers: list[int], views: tuple[str, ...]) -> None:
    """The view picker; in presentation mode a compact bar that also holds layer, capacity factor and policy,
    so a teacher can drive the page without leaving the mode."""
    if not st.session_state.present:
        _view_selector(st.container(), views)
        return
    with st.container(border=True, key="control-bar", horizontal=True, vertical_alignment="bottom", gap="xsmall"):
        _view_selector(st, views, short=True)
        with st.container(key="bar-layer", width=BAR_SLIDER_PX["layer"]):
            _layer_slider(st, layers)
        if st.session_state.view in CAPACITY_VIEWS:  # the capacity factor and the order matter to this view alone
            with st.container(key="bar-factor", width=BAR_SLIDER_PX["factor"]):
                _capacity_factor_slider(st)
            _policy_radio(st)
        st.button("✕", key="exit_present", on_click=_leave_presentation, help="Exit presentation mode")


def _current_settings() -> Settings:
    return Settings(**{name: st.session_state[name] for name in URL_KEYS})


def _uploaded_trace(uploads: list[UploadedFile]) -> RoutingTrace:
    """The uploaded trace, parsed once per set of files (a 131 MB trace was re-parsed in 9-14 s on every rerun).
    Several files are one dump where the format merges them (Megatron-Core's ranks)."""
    payloads = [Payload(upload.name, upload.getvalue()) for upload in uploads]
    key = tuple((p.name, hashlib.blake2b(p.data, digest_size=16).hexdigest()) for p in payloads)
    key += (st.session_state.get("pipeline_stages", 1),)
    parsed = st.session_state.get("parsed_upload")
    if parsed is None or parsed[0] != key:
        try:
            hints = ModelHints(pipeline_stages=st.session_state.get("pipeline_stages", 1))
            result: RoutingTrace | str = read_payloads(payloads, hints=hints)  # the format sniffed (engines.FORMATS)
            if (vocabulary := bundled_vocabulary_size(result.model.name)) is not None:
                check_vocabulary(result.tokens, vocabulary, result.model.name)
        except TraceFormatError as error:
            result = str(error)
        parsed = st.session_state.parsed_upload = (key, result)
    if isinstance(parsed[1], str):
        st.error(f"That file is not a routing trace this app can read: {md_text(parsed[1])}")
        st.stop()
    return parsed[1]


def _routing(uploads: list[UploadedFile]) -> tuple[RoutingTrace, str | None]:
    """The trace to show, and the model behind it (None for an uploaded trace)."""
    if uploads and _shows_upload():
        return _uploaded_trace(uploads), None
    prompt = st.session_state.prompt
    if not prompt.strip():
        st.info("Type some text in the sidebar (or pick a preset) to see how it is routed.")
        st.stop()
    try:
        model_id = model_key(st.session_state.model)  # one key per model, whatever the spelling of its folder
        loaded = get_model(model_id)
        routing = generated_trace(model_id, prompt) or get_trace(loaded, model_id, (prompt,))
        warm_up(loaded, model_id)  # the built-in batches, in the background, once per process
        return routing, model_id
    except ModelLoadError as error:
        st.error(f"Cannot use this model: {md_text(error)}")
        st.stop()


def _source_note(uploads: list[UploadedFile], model_id: str | None) -> None:
    """Say plainly which input the page shows when a file is uploaded (the text box stays visible beside it)."""
    if not uploads:
        return
    names = md_code(uploads[0].name) + (f" and {len(uploads) - 1} more files" if len(uploads) > 1 else "")
    if model_id is None:
        st.info(
            f"Showing the uploaded trace {names}, not the text in the sidebar. A link cannot carry "
            "a file, so this page's link keeps only the view settings."
        )
    else:
        st.info(f"Showing the text in the sidebar; the uploaded trace {names} is set aside (Show).")


def _domain_batch_trace(model_id: str) -> Callable[[], RoutingTrace]:
    """The built-in multi-domain batch, traced only when a view asks for it."""
    return lambda: get_trace(get_model(model_id), model_id, domain_batch())


def _counterfactual(model_id: str) -> Callable[..., Counterfactual]:
    """The capacity-bound forward of some texts, run only when the capacity view's toggle asks for it."""
    return lambda texts, factor, policy, group, max_tokens=None: get_counterfactual(
        get_model(model_id), model_id, texts, factor, policy, group, max_tokens
    )


def _other_run(routing: RoutingTrace) -> Callable[[str, str | None, str | None], RoutingTrace]:
    """The Compare view's side B: the trace's very tokens routed by a model, at a revision, in a dtype (the
    model id goes through the operator's allow-list, as every model a visitor names)."""

    def run(model: str, revision: str | None, dtype: str | None) -> RoutingTrace:
        model_id = model_key(model)
        loaded = get_model(model_id, revision, dtype)
        return get_retrace(loaded, variant_key(model_id, revision, dtype), routing)

    return run


def _expert_study(model_id: str, texts: tuple[str, ...], layer_row: int) -> Callable[[], ExpertStudy]:
    """A Closer Look at the chosen layer of the current text, run only when a view asks for it."""
    return lambda: get_expert_study(get_model(model_id), model_id, texts, layer_row)


TRACE_DOWNLOADS = (
    ("JSON", to_json_text, "routing-trace.json", "application/json"),
    ("Parquet", to_parquet_bytes, "routing-trace.parquet", "application/octet-stream"),
)


def _trace_downloads(routing: RoutingTrace) -> None:
    """The trace as files, made only when a button is clicked."""
    with st.sidebar.popover("Download the trace", width="stretch"):
        for kind, render, file_name, mime in TRACE_DOWNLOADS:
            st.download_button(
                f"Download trace ({kind})",
                data=lambda render=render: render(routing),
                file_name=file_name,
                mime=mime,
                on_click="ignore",
            )


def main() -> None:
    st.set_page_config(page_title="MoE Routing Explorer", page_icon="🔀", layout="wide")
    html_block(PAGE_CSS)
    _seed_session_from_url()
    keep_settings()  # a view's own widgets (token, side B) keep their values while other views are shown
    if (longer := st.session_state.pop(PENDING_KEY, None)) is not None:  # the model's continuation, last run
        _set_prompt(longer, "with its continuation")
        st.session_state.source = "text"
    present = st.session_state.present
    if not present:  # presentation mode: the name goes into the one-line header below, to leave room for the chart
        st.title(APP_TITLE)  # at once, before any model work: a first visit never sees a blank page
    header = st.empty()
    header.caption("Loading the model and routing the text …")
    uploads = _sidebar_inputs()
    if corpus_page(header):  # a corpus from the operator's --corpus-dir, drawn from its summary alone
        return
    routing, model_id = _routing(uploads)
    has_model = model_id is not None
    layers = _moe_layers(routing)
    _sidebar_settings(layers)
    settings = _current_settings()
    if settings.present:
        html_block(PRESENTATION_CSS)
    info = routing.model
    named = f"**{APP_TITLE}** · " if present else ""
    header.caption(
        f"{named}**{md_text(info.name)}** · {md_text(info.architecture)} · {info.num_experts} experts, top-"
        f"{info.top_k} ({md_text(info.scoring)}) · {len(info.moe_layers)} MoE layers · {len(routing.tokens)} tokens · "
        f"{md_text(info.device)}, {md_text(info.dtype)}" + (" · uploaded trace" if not has_model else "")
    )
    for note in info.notes:  # "recomputed, not captured" (generic capture's fallback) must not be missed
        shown, mark = (st.warning, "⚠") if "not captured" in note else (st.caption, "ⓘ")
        shown(f"{mark} {md_text(note)}")
    _source_note(uploads, model_id)
    if model_id is not None:
        draw_badge(get_model(model_id), model_id)
    views = offered_views(model_id)
    _settle_view(views)
    for notice in st.session_state.notices:  # escaped where they were written (app/state.py)
        st.warning(notice)
    if any(routing.truncated):
        st.warning(
            f"The text is longer than the model's context: only the first {info.context_length} tokens are shown."
        )
    _view_controls(layers, views)
    settings = _current_settings()
    stamp = ChartStamp(info.name, settings.layer, settings.capacity_factor, settings.policy)  # on downloads
    set_chart_settings(stamp, settings.present)
    layer_row = routing.layer_index(settings.layer)
    if model_id is not None:
        stream_if_requested(get_model(model_id), model_id, settings.layer, layer_row, info.num_experts)
        generation_caption(routing)
    context = ViewContext(
        trace=routing,
        settings=settings,
        layer_row=layer_row,
        domain_batch=_domain_batch_trace(model_id) if model_id else (lambda: None),
        expert_study=_expert_study(model_id, routing.texts, layer_row) if model_id else (lambda: None),
        lab_batch=(lambda: get_lab_batch(get_model(model_id), model_id)) if model_id else (lambda: None),
        counterfactual=_counterfactual(model_id) if model_id else None,
        continued_at=_continued_at(model_id),
        model_id=model_id,
        other_run=_other_run(routing),
    )
    try:
        VIEW_MODULES[settings.view].draw(context)
    except MissingRouting as error:  # a compact trace (an engine dump) lacks what the rest of this view reads
        st.info(sentence(str(error)))
    _trace_downloads(routing)
    # the settings as the view left them (a link's step between checkpoints moved to one): no text or model
    # for an upload
    st.query_params.from_dict(to_query(_current_settings(), with_input=has_model))


main()
