"""`python -m moe_core counterfactual`: the documented JSON, checked against the library, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moe_core.cli.main import main
from tests.cli_runner import run_cli

TEXTS = ("The quick brown fox jumps over the lazy dog again and again.", "def f(x):\n    return x")


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def _args(model: Path, *extra: str) -> list[str]:
    return ["counterfactual", "--model", str(model), "--text", TEXTS[0], "--text", TEXTS[1], *extra]


@pytest.mark.parametrize("policy", ["position", "score"])
def test_json_contract_and_layer0_equals_the_static_simulation(
    capsys: pytest.CaptureFixture[str], tiny_model_dir: Path, policy: str
) -> None:
    """Every documented key; per-token lists align with tokens; losses null exactly at each text's last token;
    delta = capped - plain; layer 0's kept mask is the `capacity` command's (same input, same rule)."""
    data = _json(capsys, *_args(tiny_model_dir, "--capacity-factor", "0.5", "--policy", policy, "--format", "json"))
    assert set(data) >= {"model", "tokens", "plain", "capped", "delta_loss", "kl", "top1_changed", "summary"}
    assert set(data["summary"]) == {"mean_delta_loss", "dropped_slot_rate", "fully_dropped_token_rate",
                                    "mean_experts_per_token"}  # fmt: skip
    tokens = data["tokens"]
    assert set(tokens[0]) == {"id", "text", "sequence", "position"}
    last = [i == len(tokens) - 1 or tokens[i + 1]["sequence"] != t["sequence"] for i, t in enumerate(tokens)]
    for key in ("delta_loss", "kl", "top1_changed"):
        assert [v is None for v in data[key]] == last
    assert [v is None for v in data["plain"]["loss"]] == last
    plain, capped = (np.array([np.nan if v is None else v for v in d["loss"]]) for d in (data["plain"], data["capped"]))
    delta = np.array([np.nan if v is None else v for v in data["delta_loss"]])
    np.testing.assert_allclose(delta[~np.array(last)], (capped - plain)[~np.array(last)], atol=2e-6)
    capacity = _json(capsys, "capacity", "--model", str(tiny_model_dir), "--text", TEXTS[0], "--text", TEXTS[1],
                     "--capacity-factor", "0.5", "--policy", policy)  # fmt: skip
    assert data["capped"]["layers"][0]["kept"] == capacity["layers"][0]["kept"]
    assert data["capped"]["layers"][0]["capacity"] == capacity["layers"][0]["capacity"]
    kept = [k for layer in data["capped"]["layers"] for row in layer["kept"] for k in row]
    assert data["summary"]["dropped_slot_rate"] == pytest.approx(1 - np.mean(kept), abs=1e-6)
    top_k = data["model"]["top_k"]
    assert data["summary"]["mean_experts_per_token"] == pytest.approx(top_k * np.mean(kept), abs=1e-6)


def test_expert_choice_rows_list_the_experts_that_took_each_token(
    capsys: pytest.CaptureFixture[str], tiny_model_dir: Path
) -> None:
    """Under expert-choice each expert takes exactly C tokens per text, so the rows differ in length."""
    data = _json(capsys, *_args(tiny_model_dir, "--capacity-factor", "1.0", "--policy", "expert-choice"))
    layer = data["capped"]["layers"][0]
    sequences = np.array([t["sequence"] for t in data["tokens"]])
    for s, capacity in enumerate(layer["capacity"]):
        rows = [layer["experts"][i] for i in np.flatnonzero(sequences == s)]
        counts = np.bincount([e for row in rows for e in row], minlength=data["model"]["num_experts"])
        assert (counts == min(capacity, len(rows))).all()
    assert all(all(row) for row in layer["kept"])
    assert len({len(row) for row in layer["experts"]}) > 1
    # no slot is turned away under expert-choice: the rate is undefined; what it costs is tokens no expert took
    summary = data["summary"]
    assert summary["dropped_slot_rate"] is None
    rows = [row for layer in data["capped"]["layers"] for row in layer["experts"]]
    assert summary["mean_experts_per_token"] == pytest.approx(np.mean([len(row) for row in rows]), abs=1e-6)
    assert summary["fully_dropped_token_rate"] == pytest.approx(np.mean([not row for row in rows]), abs=1e-6)


def test_top_k_what_if_is_reported(capsys: pytest.CaptureFixture[str], tiny_model_dir: Path) -> None:
    data = _json(capsys, *_args(tiny_model_dir, "--capacity-factor", "64", "--top-k", "1"))
    assert data["settings"]["top_k"] == 1
    assert all(len(row) == 1 for row in data["capped"]["layers"][0]["experts"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--capacity-factor", "0"], "capacity_factor must be"),
        (["--policy", "random"], "invalid choice"),
        (["--top-k", "0"], "must be at least 1"),
        (["--top-k", "99"], "top_k must be between 1"),
        (["--text", "   "], "empty text"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tiny_model_dir: Path, extra: list[str], message: str
) -> None:
    """In process (the entry point's own exit code is test_cli's one real process): exit 2, one line."""
    code, out, err = run_cli(capsys, *_args(tiny_model_dir, *extra))
    assert code == 2 and not out
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_text_that_is_not_utf8_is_one_line(tiny_model_dir: Path) -> None:
    """Bytes the shell passes that are not UTF-8 (`$'caf\\xe9'`) are refused in one line, not a traceback."""
    run = subprocess.run(
        [sys.executable.encode(), b"-m", b"moe_core", b"counterfactual", b"--model", str(tiny_model_dir).encode(),
         b"--text", b"caf\xe9"], capture_output=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.decode().strip() == "error: text 1 is not valid UTF-8"
