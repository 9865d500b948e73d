"""The "capture verified on this model" badge: the ablation proof (moe_core.proof.verification) run on the loaded model.

Exactness should not rest on the adapter table: for a model with no adapter (remote code) the proof starts in a
background thread right after load, and any model can be proven on demand with the sidebar's button. The cost
is bounded (the first VERIFY_LAYERS MoE layers, as `verify` checks by default; two short texts) and the verdict
is kept per model for the whole process.
"""

from __future__ import annotations

import threading
import traceback

import streamlit as st

from app import background
from moe_core.capture.routers import is_generic
from moe_core.defaults import VERIFY_LAYERS
from moe_core.models import LoadedModel
from moe_core.proof.verification import VERIFY_TEXTS, ModelVerdict, verify_model

VERIFIED = "capture verified on this model"

_VERDICTS: dict[str, ModelVerdict | str] = {}  # model id -> its verdict, or why the proof could not run
_RUNNING: dict[str, threading.Thread] = {}
_LOCK = threading.Lock()


def verify_now(loaded: LoadedModel, model_id: str) -> ModelVerdict | str:
    """Run the bounded proof and keep its verdict (a failure to run is kept as one sentence)."""
    try:
        result: ModelVerdict | str = verify_model(
            loaded.model, loaded.tokenizer, VERIFY_TEXTS, max_layers=VERIFY_LAYERS, name=model_id
        )
    except Exception as error:  # a model the proof cannot replay gets a sentence, not a broken page
        result = traceback.format_exception_only(error)[-1].strip()[:300]
    with _LOCK:
        _VERDICTS[model_id] = result
    return result


def start_in_background(loaded: LoadedModel, model_id: str) -> threading.Thread | None:
    """Start the proof once per process and model; None when it has run or is running."""
    with _LOCK:
        if model_id in _VERDICTS or model_id in _RUNNING:
            return None
        thread = _RUNNING[model_id] = background.start(lambda: verify_now(loaded, model_id), f"verify {model_id}")
    return thread


def verdict(model_id: str) -> ModelVerdict | str | None:
    with _LOCK:
        return _VERDICTS.get(model_id)


def badge_text(result: ModelVerdict | str | None, running: bool) -> tuple[str, str]:
    """(kind, sentence) for the badge: kind is a streamlit element name ("success", "error", "caption")."""
    if isinstance(result, ModelVerdict) and result.passed:
        layers = ", ".join(str(v.layer) for v in result.layers)
        return "success", f"✓ {VERIFIED} (ablation on MoE layer {layers}: captured experts = the experts that ran)"
    if isinstance(result, ModelVerdict):
        return "error", f"✗ capture NOT verified on this model: {result.detail}"
    if isinstance(result, str):
        return "error", f"capture could not be verified on this model: {result}"
    if running:
        return "caption", "Verifying capture on this model in the background …"
    return "caption", "Capture not yet verified on this model (the button runs the ablation proof)."


def draw_badge(loaded: LoadedModel, model_id: str) -> None:
    """The badge and the button, in the sidebar; starts the background proof for models with no adapter."""
    if is_generic(loaded.model):
        start_in_background(loaded, model_id)
    what = f"Proves the first {VERIFY_LAYERS} MoE layers by ablation, as `python -m moe_core verify` does."
    if st.sidebar.button("Verify capture on this model", key="verify_capture", help=what):
        with st.spinner("Proving capture by ablation …"):
            verify_now(loaded, model_id)
    with _LOCK:
        thread = _RUNNING.get(model_id)
    kind, text = badge_text(verdict(model_id), thread is not None and thread.is_alive())
    getattr(st.sidebar, kind)(text)
