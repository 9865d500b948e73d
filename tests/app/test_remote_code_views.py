"""Remote-code models in the app: OpenMoE's own drops in the capacity view, the "recomputed" notice on every view."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from app.view_registry import VIEWS
from moe_core.capture.generic import RECOMPUTED_NOTE
from moe_core.capture.record import trace
from moe_core.models import load_model
from moe_core.proof.verification import VERIFY_TEXTS
from moe_core.traces.io import to_json_text
from tests.app.conftest import run_app
from tests.lookalikes import build_checkpoint

pytestmark = pytest.mark.slow


def _upload(payload: str):
    return lambda at: at.file_uploader(key="upload").set_value(("trace.json", payload.encode(), "application/json"))


@pytest.fixture(scope="module")
def openmoe_trace(tmp_path_factory: pytest.TempPathFactory, demo_tokenizer: Any):
    folder = build_checkpoint("openmoe", tmp_path_factory.mktemp("openmoe"), demo_tokenizer)
    loaded = load_model(str(folder), device="cpu", trust_remote_code=True)
    return trace(loaded.model, loaded.tokenizer, " ".join(VERIFY_TEXTS) * 3)


def test_capacity_view_shows_the_models_own_drops_beside_the_simulation(openmoe_trace) -> None:
    """OpenMoE drops slots itself: the capacity view says how many, at the chosen layer, above the simulation."""
    dropped = int((openmoe_trace.experts[0] == -1).sum())
    assert dropped
    at = run_app({"view": "capacity", "layer": "1"}, setup=_upload(to_json_text(openmoe_trace)))
    assert not at.exception
    assert any(f"The model itself dropped {dropped} of" in m.value for m in at.markdown)


@pytest.mark.parametrize("view", VIEWS)
def test_recomputed_notice_is_a_warning_on_every_view(openmoe_trace, view: str) -> None:
    """A trace whose choice was recomputed carries the notice, and every view shows it as a warning."""
    info = dataclasses.replace(openmoe_trace.model, notes=(*openmoe_trace.model.notes, RECOMPUTED_NOTE))
    payload = to_json_text(dataclasses.replace(openmoe_trace, model=info))
    at = run_app({"view": view, "layer": "1"}, setup=_upload(payload))
    assert not at.exception
    assert any("recomputed, not captured" in w.value for w in at.warning)
