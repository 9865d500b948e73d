"""Model and trace caches: a model loads once per process for all sessions; traces are cached by input."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import streamlit as st

from app.operator import operator_options
from moe_core.capture import trace
from moe_core.models import ASSETS, BUNDLED_MODELS, DEMO_MODEL, LoadedModel, load_model
from moe_core.trace import RoutingTrace

PRESETS_FILE = ASSETS / "presets" / "prompts.json"
HELD_OUT_MARKER = "@held_out"  # a preset made of the demo model's held-out excerpts, one per domain


@st.cache_resource(show_spinner=False, max_entries=2)
def get_model(model_id: str) -> LoadedModel:
    """Load with a visible status; cached per process, so every session shares one copy.

    Device and remote code are the operator's choice (app/operator.py), never a visitor's.
    """
    options = operator_options()
    with st.sidebar.status(f"Loading {model_id} …", expanded=True) as status:
        bar = st.progress(0.0)

        def report(stage: str, fraction: float) -> None:
            bar.progress(fraction, text=stage)

        loaded = load_model(
            model_id, device=options.device, trust_remote_code=options.trust_remote_code, progress=report
        )
        status.update(label=f"Loaded {model_id} on {loaded.placement.device}", state="complete", expanded=False)
    return loaded


@st.cache_data(show_spinner="Routing the text …", max_entries=64)
def get_trace(_loaded: LoadedModel, model_id: str, texts: tuple[str, ...]) -> RoutingTrace:
    """Cached by (model_id, texts); the model itself is not hashed (leading underscore)."""
    return trace(_loaded.model, _loaded.tokenizer, texts, name=model_id)


def held_out_folder() -> Path:
    return BUNDLED_MODELS[DEMO_MODEL] / "held_out"


@lru_cache(maxsize=1)
def domain_batch() -> tuple[str, ...]:
    """The built-in multi-domain batch of longer texts (held-out excerpts the demo model never saw)."""
    return tuple(p.read_text(encoding="utf-8") for p in sorted(held_out_folder().glob("*.txt")))


@lru_cache(maxsize=1)
def presets() -> dict[str, str]:
    raw: dict[str, str] = json.loads(PRESETS_FILE.read_text(encoding="utf-8"))
    return {
        name: ("\n\n".join(t[:1200] for t in domain_batch()) if text == HELD_OUT_MARKER else text)
        for name, text in raw.items()
    }
