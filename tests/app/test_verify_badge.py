"""The "capture verified on this model" badge: on demand for any model, in the background for remote code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import app.loading
import app.verify_badge as badge
from app.operator import OperatorOptions
from moe_core.cli.main import build_parser
from moe_core.defaults import VERIFY_LAYERS
from moe_core.proof.verification import LayerVerdict, ModelVerdict
from tests.app.conftest import run_app
from tests.lookalikes import build_checkpoint

pytestmark = pytest.mark.slow


def _badges(at: Any) -> list[str]:
    return [e.value for e in (*at.sidebar.success, *at.sidebar.error)]


@pytest.fixture(scope="module")
def grok_folder(tmp_path_factory: pytest.TempPathFactory, demo_tokenizer: Any) -> Path:
    return build_checkpoint("grok1", tmp_path_factory.mktemp("grok1"), demo_tokenizer)


def test_the_button_verifies_a_model_with_an_adapter() -> None:
    """The demo model has an adapter: no background proof; the button runs it and the badge appears."""
    badge._VERDICTS.pop("demo-mixtral", None)
    at = run_app()
    assert not at.exception and not _badges(at)
    at.sidebar.button(key="verify_capture").click().run()
    assert not at.exception
    assert any(badge.VERIFIED in text for text in _badges(at)), _badges(at)
    # the demo model's 4 MoE layers, all proven: the app checks what `verify` checks by default
    assert VERIFY_LAYERS == 4 and any("MoE layer 0, 1, 2, 3:" in text for text in _badges(at)), _badges(at)
    assert build_parser().parse_args(["verify"]).layers == VERIFY_LAYERS


def test_a_remote_code_model_is_verified_in_the_background(monkeypatch: pytest.MonkeyPatch, grok_folder: Path) -> None:
    """With the operator's flag, a Grok-1 look-alike (no adapter) loads; its proof runs after load, unasked."""
    monkeypatch.setattr(app.loading, "operator_options", lambda: OperatorOptions(trust_remote_code=True))
    model_id = str(grok_folder)
    at = run_app({"model": model_id, "text": "Hello experts, 12 + 30 = 42."})
    assert not at.exception and not at.error, [e.value for e in at.error]
    thread = badge._RUNNING.get(next(key for key in badge._RUNNING if key.endswith("grok1")))
    thread.join(timeout=120)
    at.run()
    assert any(badge.VERIFIED in text for text in _badges(at)), _badges(at)


def test_visitors_cannot_turn_on_remote_code(grok_folder: Path) -> None:
    """Without the operator's flag, no URL parameter runs the folder's code: the page says who can turn it on."""
    for key in [key for key in app.loading._MODELS if key.endswith("grok1")]:  # loaded with the flag above
        del app.loading._MODELS[key]
    at = run_app({"model": str(grok_folder), "trust_remote_code": "1", "trust-remote-code": "1"})
    assert at.error and "the operator must turn on" in at.error[0].value


def test_badge_sentences() -> None:
    """Passed, failed, could not run, running and not yet run each read differently."""
    passed = ModelVerdict((LayerVerdict(0, True, ""),), 8, 2, None, True, ())
    failed = ModelVerdict((LayerVerdict(0, False, "3/20 tokens differ"),), 8, 2, None, True, ())
    assert badge.badge_text(passed, False)[0] == "success"
    assert badge.badge_text(failed, False) == (
        "error",
        "✗ capture NOT verified on this model: layer 0: 3/20 tokens differ",
    )
    assert badge.badge_text("RuntimeError: boom", False)[0] == "error"
    assert "background" in badge.badge_text(None, True)[1]
    assert "not yet verified" in badge.badge_text(None, False)[1]
