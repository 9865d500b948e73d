"""`verify` proves capture on a loaded model: every family's tiny model, the CLI's contract and exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from moe_core.proof.tiny_models import build_tiny_model
from moe_core.proof.verification import verify_model
from tests.cli_runner import run_cli as _run

SHORT_TEXT = ("def add(a, b):\n    return a + b  # the quick brown fox, 12 + 30 = 42",)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3", "switch_transformers"])
def test_the_bounded_proof_checks_only_its_layers(family: str, demo_tokenizer: Any) -> None:
    """The bounded proof (first MoE layer, one short text) passes and proves one layer; every family's full
    proof is test_capture_exact's (run once per family)."""
    verdict = verify_model(build_tiny_model(family), demo_tokenizer, SHORT_TEXT, max_layers=1)
    assert verdict.passed, verdict.detail
    assert len(verdict.layers) == 1


def test_verify_command_prints_pass_per_layer(capsys: pytest.CaptureFixture[str], tiny_model_dir: Path) -> None:
    """verify --layers 1 on a saved tiny Mixtral: one JSON line, one passing layer, exit 0."""
    code, out, _ = _run(capsys, "verify", "--model", str(tiny_model_dir), "--layers", "1", "--text", SHORT_TEXT[0])
    assert code == 0
    data = json.loads(out)
    assert data["passed"] is True
    assert [(entry["layer"], entry["passed"]) for entry in data["layers"]] == [(0, True)]


def test_verify_command_fails_on_a_wrong_capture(
    capsys: pytest.CaptureFixture[str], tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Negative control: a capture that reports the wrong experts makes verify fail that layer and exit 1."""
    import moe_core.proof.verification as verification

    real = verification.trace

    def shifted(*args: Any, **kwargs: Any) -> Any:
        routing = real(*args, **kwargs)
        routing.experts[:] = (routing.experts + 1) % routing.model.num_experts
        return routing

    monkeypatch.setattr(verification, "trace", shifted)
    code, out, _ = _run(capsys, "verify", "--model", str(tiny_model_dir), "--layers", "1")
    assert code == 1
    data = json.loads(out)
    assert data["passed"] is False and "tokens differ" in data["layers"][0]["detail"]


def test_verify_command_refuses_bad_input(capsys: pytest.CaptureFixture[str], tiny_model_dir: Path) -> None:
    """Bad --layers or an empty text end in one line and exit 2."""
    for argv in (("--layers", "0"), ("--text", "  ")):
        code, _, err = _run(capsys, "verify", "--model", str(tiny_model_dir), *argv)
        assert code == 2 and err.count("\n") == 1
