"""The CLI's JSON contract, and one-line errors with exit status 2 for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moe_core.traces.io import load_trace_bytes
from tests.cli_runner import run_cli as _run


def test_trace_prints_the_documented_json(capsys: pytest.CaptureFixture[str], tiny_model_dir: Path) -> None:
    """trace --format json prints model, tokens and layers; two --text give two sequences."""
    code, out, _ = _run(
        capsys, "trace", "--model", str(tiny_model_dir), "--text", "a b", "--text", "c", "--format", "json"
    )
    assert code == 0
    data = json.loads(out)
    assert data["model"]["architecture"] == "mixtral" and data["model"]["moe_layers"] == [0, 1]
    assert {t["sequence"] for t in data["tokens"]} == {0, 1}
    layer = data["layers"][0]
    assert np.asarray(layer["experts"]).shape == (len(data["tokens"]), data["model"]["top_k"])
    np.testing.assert_allclose(np.asarray(layer["probs"]).sum(axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_trace_out_writes_a_loadable_file(
    capsys: pytest.CaptureFixture[str], tiny_model_dir: Path, tmp_path: Path, suffix: str
) -> None:
    """--out writes the trace (and prints no JSON), in a file load_trace_bytes reads back."""
    target = tmp_path / f"trace{suffix}"
    code, out, _ = _run(capsys, "trace", "--model", str(tiny_model_dir), "--text", "hello", "--out", str(target))
    assert code == 0 and out == ""
    assert load_trace_bytes(target.read_bytes(), target.name).texts == ("hello",)


def test_trace_scores_option_writes_compact_traces(
    capsys: pytest.CaptureFixture[str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """--scores none drops the [L, T, E] scores (JSON null) and keeps experts and weights; --scores float16 stores
    them in half precision, within fp16 rounding of the full trace."""
    base = ("trace", "--model", str(tiny_model_dir), "--text", "hello there")
    _, full_out, _ = _run(capsys, *base)
    _, none_out, _ = _run(capsys, *base, "--scores", "none")
    full, compact = json.loads(full_out), json.loads(none_out)
    assert all(layer["logits"] is None and layer["probs"] is None for layer in compact["layers"])
    assert [layer["experts"] for layer in compact["layers"]] == [layer["experts"] for layer in full["layers"]]
    assert [layer["weights"] for layer in compact["layers"]] == [layer["weights"] for layer in full["layers"]]
    target = tmp_path / "half.parquet"
    assert _run(capsys, *base, "--scores", "float16", "--out", str(target))[0] == 0
    half = load_trace_bytes(target.read_bytes(), target.name)
    np.testing.assert_allclose(half.probs[0], np.asarray(full["layers"][0]["probs"]), rtol=1e-3, atol=1e-4)


def test_capacity_json(capsys: pytest.CaptureFixture[str], tiny_model_dir: Path) -> None:
    """capacity prints per layer C, the kept mask [T][k] and fill [E], consistent with each other."""
    text = "one two three four five six seven eight nine ten"
    code, out, _ = _run(
        capsys,
        "capacity",
        "--model",
        str(tiny_model_dir),
        "--text",
        text,
        "--capacity-factor",
        "0.5",
        "--policy",
        "position",
        "--group",
        "sequence",
    )
    assert code == 0
    data = json.loads(out)
    for layer in data["layers"]:
        kept = np.asarray(layer["kept"])
        assert kept.shape[1] == 2 and sum(layer["fill"]) == int(kept.sum())
        assert max(layer["fill"]) <= layer["capacity"][0]
    assert len(data["drop_rate_by_position"]) == kept.shape[0]
    # drops can be matched to tokens, and each expert's demand against what it kept (recounted from the trace)
    routing = json.loads(_run(capsys, "trace", "--model", str(tiny_model_dir), "--text", text)[1])
    assert data["tokens"] == [{k: t[k] for k in ("id", "text", "sequence", "position")} for t in routing["tokens"]]
    assert data["model"]["name"] == str(tiny_model_dir) and data["slots_ranked"] is True
    for layer, traced in zip(data["layers"], routing["layers"], strict=True):
        experts, kept = np.asarray(traced["experts"]), np.asarray(layer["kept"])
        num_experts = data["model"]["num_experts"]
        assert layer["demand"] == np.bincount(experts.ravel(), minlength=num_experts).tolist()
        assert layer["kept_slots"] == np.bincount(experts[kept], minlength=num_experts).tolist() == layer["fill"]
        assert sum(layer["demand"]) > sum(layer["kept_slots"])  # CF 0.5 drops


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["trace", "--text", "   "], "empty text"),
        (["trace", "--model", "/no/such/model", "--text", "hi"], "no model folder"),
        (["capacity", "--text", "hi", "--capacity-factor", "0"], "must be a number in (0, 64]"),
        (["capacity", "--text", "hi", "--capacity-factor", "nan"], "must be a number in (0, 64]"),
        (["capacity", "--text", "hi", "--capacity-factor", "abc"], "not a number"),
        (["trace", "--model", "not-a-bundled-model", "--text", "hi"], "error:"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    """Each bad input ends with exit status 2 and a single 'error:' line, no traceback."""
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err


def test_long_text_is_truncated_with_a_warning(capsys: pytest.CaptureFixture[str], tiny_model_dir: Path) -> None:
    """Text beyond the context (256 for the tiny model) is cut, with a warning; --refuse-long refuses it."""
    long_text = "token " * 400
    code, out, err = _run(capsys, "trace", "--model", str(tiny_model_dir), "--text", long_text)
    assert code == 0 and "truncated to 256 tokens" in err
    assert len(json.loads(out)["tokens"]) == 256
    code, _, err = _run(capsys, "trace", "--model", str(tiny_model_dir), "--text", long_text, "--refuse-long")
    assert code == 2 and "longer than the model's context" in err


def test_module_entry_point_exit_code(tiny_model_dir: Path) -> None:
    """`python -m moe_core` as a real process: exit 2, one line, no traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "moe_core", "trace", "--text", ""], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("error: empty text")


def test_architectures_reports_each_family_as_it_goes(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line per family on stderr while the table is built (it ran 24 minutes in silence); the table on stdout
    has the same rows."""
    import moe_core.proof.verification as verification

    monkeypatch.setattr(verification, "all_families", lambda: ["mixtral", "qwen2_moe"])
    code, out, err = _run(capsys, "architectures")
    assert code == 0
    lines = [line for line in err.splitlines() if line.startswith("[")]
    assert [line.split(":")[0] for line in lines] == ["[1/2] mixtral", "[2/2] qwen2_moe"]
    assert all(": pass (" in line and line.endswith(" s)") for line in lines)
    assert "| mixtral | pass |" in out and "| qwen2_moe | pass |" in out
