"""Model and trace caches: a model loads once per process for all sessions; traces are cached by input."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import streamlit as st

from app import background
from app.memo import BytesLRU
from app.operator import operator_options
from moe_core.batches import LabBatch, held_out_texts, trace_equal_windows
from moe_core.capacity.forward import Counterfactual, counterfactual
from moe_core.capture.record import retrace, trace
from moe_core.experts import ExpertStudy, expert_study
from moe_core.models import ASSETS, LoadedModel, load_model, weight_bars_on_a_terminal_only
from moe_core.traces.types import RoutingTrace

PRESETS_FILE = ASSETS / "presets" / "prompts.json"
HELD_OUT_MARKER = "@held_out"  # a preset made of the demo model's held-out excerpts, one per domain


_MODELS: dict[str, LoadedModel] = {}  # process-wide: every session shares one copy of each model
_MODELS_LOCK = threading.Lock()  # one load at a time; a second session waits for the first one's load
MAX_MODELS = 2
MODEL_CACHE_GB_ENV = "MOE_EXPLORER_MODEL_CACHE_GB"  # the operator's bound on loaded weights, in GB (default 32)
DEFAULT_MODEL_CACHE_GB = 32.0


def model_cache_bytes() -> int:
    """The most bytes of weights the process keeps loaded at once (the operator's MOE_EXPLORER_MODEL_CACHE_GB)."""
    try:
        gigabytes = float(os.environ.get(MODEL_CACHE_GB_ENV, DEFAULT_MODEL_CACHE_GB))
    except ValueError:
        gigabytes = DEFAULT_MODEL_CACHE_GB
    return int(max(gigabytes, 0.0) * 2**30)


def weight_bytes(loaded: Any) -> int:
    """Bytes of a loaded model's parameters and buffers (what keeping it in the cache costs)."""
    model = getattr(loaded, "model", None)
    if model is None:
        return 0
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def evictions(sizes: dict[str, int], new_size: int, max_count: int, max_bytes: int) -> list[str]:
    """Which cached models (oldest first, as `sizes` is ordered) to drop so that one more of `new_size` fits
    within `max_count` models and `max_bytes` bytes. A model larger than the budget still loads, alone."""
    kept, dropped = dict(sizes), []
    while kept and (len(kept) >= max_count or sum(kept.values()) + new_size > max_bytes):
        oldest = next(iter(kept))
        dropped.append(oldest)
        del kept[oldest]
    return dropped


def variant_key(model_id: str, revision: str | None = None, dtype: str | None = None) -> str:
    """The cache key of a model at a revision or in a dtype (the Compare view's side B); the plain id otherwise."""
    return model_id + (f"@{revision}" if revision else "") + (f" ({dtype})" if dtype else "")


def get_model(model_id: str, revision: str | None = None, dtype: str | None = None) -> LoadedModel:
    """The loaded model, loading it (with a status and a progress bar in the sidebar) only the first time.

    A plain process-wide dict rather than st.cache_resource: a status drawn inside a cached function is
    replayed, half-finished, on every later run. Device and remote code are the operator's choice
    (app/operator.py), never a visitor's.
    """
    key = variant_key(model_id, revision, dtype)
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        with st.sidebar.status(f"Loading {key} …", expanded=True) as status:
            bar = st.progress(0.0)
            progress = lambda stage, fraction: bar.progress(fraction, text=stage)  # noqa: E731
            loaded = _load(model_id, progress, revision, dtype)
            status.update(label=f"Loaded {key} on {loaded.placement.device}", state="complete", expanded=False)
        return loaded


def _load(
    model_id: str, progress: Callable[[str, float], None] | None, revision: str | None = None,
    dtype: str | None = None,
) -> LoadedModel:  # fmt: skip
    """Load with the operator's device and remote-code choice and keep it in _MODELS (caller holds the lock)."""
    options = operator_options()
    weight_bars_on_a_terminal_only()  # the sidebar shows the stages; the server's log gets no carriage returns
    loaded = load_model(model_id, device=options.device, trust_remote_code=options.trust_remote_code,
                        progress=progress, revision=revision, dtype=dtype)  # fmt: skip
    sizes = {key: weight_bytes(cached) for key, cached in _MODELS.items()}
    for key in evictions(sizes, weight_bytes(loaded), MAX_MODELS, model_cache_bytes()):
        del _MODELS[key]  # the memory is freed once no session still holds it
    _MODELS[variant_key(model_id, revision, dtype)] = loaded
    return loaded


def get_retrace(loaded: LoadedModel, key: str, routing: RoutingTrace) -> RoutingTrace:
    """`routing`'s very tokens routed by another model, revision or dtype (the Compare view's side B), cached in
    TRACES by (key, the tokens) like every trace."""
    tokens = (tuple(routing.tokens.ids.tolist()), tuple(routing.tokens.sequence.tolist()))

    def routed() -> RoutingTrace:
        with st.spinner(f"Routing the same tokens through {key} …"):
            return retrace(loaded.model, loaded.tokenizer, routing, name=key)

    return TRACES.get((key, "retrace", tokens), routed)


@st.cache_data(show_spinner="Running every expert on every token …", max_entries=16)
def get_expert_study(_loaded: LoadedModel, model_id: str, texts: tuple[str, ...], layer_row: int) -> ExpertStudy:
    """Cached by (model_id, texts, layer): a pass up to that layer, then every expert on every token of it."""
    return expert_study(_loaded.model, _loaded.tokenizer, get_trace(_loaded, model_id, texts), layer_row)


TRACE_CACHE_MB_ENV = "MOE_EXPLORER_TRACE_CACHE_MB"  # the operator's bound on cached traces (default 1024 MB)
TRACES: BytesLRU[RoutingTrace] = BytesLRU(int(float(os.environ.get(TRACE_CACHE_MB_ENV, "1024")) * 2**20))


def get_trace(loaded: LoadedModel, model_id: str, texts: tuple[str, ...]) -> RoutingTrace:
    """Cached by (model_id, texts) in TRACES: one read-only object shared by every session, bounded by bytes."""

    def routed() -> RoutingTrace:
        with st.spinner("Routing the text …"):
            return trace(loaded.model, loaded.tokenizer, texts, name=model_id)

    return TRACES.get((model_id, texts), routed)


def domain_batch() -> tuple[str, ...]:
    """The built-in multi-domain batch of longer texts (held-out excerpts the demo model never saw)."""
    return tuple(held_out_texts().values())


@lru_cache(maxsize=1)
def presets() -> dict[str, str]:
    raw: dict[str, str] = json.loads(PRESETS_FILE.read_text(encoding="utf-8"))
    return {
        name: ("\n\n".join(t[:1200] for t in domain_batch()) if text == HELD_OUT_MARKER else text)
        for name, text in raw.items()
    }


LABS: BytesLRU[LabBatch] = BytesLRU(256 * 2**20)  # equal-window batches: about 8 MB each for the demo model


def get_lab_batch(loaded: LoadedModel, model_id: str) -> LabBatch:
    """Traced once per process and model (usually ahead of time, by warm_up), shared by every session."""

    def traced() -> LabBatch:
        with st.spinner("Routing the built-in batch of equal-length windows …"):
            return trace_equal_windows(loaded.model, loaded.tokenizer, name=model_id)

    return LABS.get(model_id, traced)


_WARMED: set[str] = set()
_WARMED_LOCK = threading.Lock()


def preload(model_id: str, text: str) -> LoadedModel:
    """At server start (python -m app): load the operator's model, trace the page's default text and the built-in
    batches, so the first visitor finds everything ready instead of waiting for the load (about 10 s cold)."""
    with _MODELS_LOCK:
        loaded = _MODELS.get(model_id) or _load(model_id, None)
    TRACES.get((model_id, (text,)), lambda: trace(loaded.model, loaded.tokenizer, (text,), name=model_id))
    thread = warm_up(loaded, model_id)
    if thread is not None:
        thread.join()
    return loaded


def warm_up(loaded: LoadedModel, model_id: str) -> threading.Thread | None:
    """Trace the built-in batches of `model_id` once per process, in a background thread, so that the first visit
    to the expert load and capacity views finds them ready (tracing them then took ~20 s on 2 cores). Started
    after a visitor's own first trace, so it never delays that visitor's first chart. None if already started."""
    with _WARMED_LOCK:
        if model_id in _WARMED:
            return None
        _WARMED.add(model_id)

    def run() -> None:
        texts = domain_batch()
        TRACES.get((model_id, texts), lambda: trace(loaded.model, loaded.tokenizer, texts, name=model_id))
        if not background.STOPPING.is_set():  # the process is exiting: do not start the next forward
            LABS.get(model_id, lambda: trace_equal_windows(loaded.model, loaded.tokenizer, name=model_id))

    return background.start(run, f"warm-up {model_id}")


COUNTERFACTUAL_ENTRIES = 16  # at 4,096 tokens and a 4096-word vocabulary about 2 MB each (no logits kept)


@st.cache_resource(show_spinner="Running the model capacity-bound …", max_entries=COUNTERFACTUAL_ENTRIES)
def get_counterfactual(
    _loaded: LoadedModel, model_id: str, texts: tuple[str, ...], capacity_factor: float, policy: str, group: str,
    max_tokens: int | None = None,
) -> Counterfactual:  # fmt: skip
    """The plain and the capacity-bound pass of `texts`, shared by every session that asks for the same run."""
    return counterfactual(_loaded.model, _loaded.tokenizer, texts, capacity_factor, policy, group, name=model_id,
                          max_tokens=max_tokens)  # fmt: skip
