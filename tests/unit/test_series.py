"""Routing across training (issue 16 §2): a folder of tiny saved checkpoints traced at every step, resumably;
router saturation and early routing learning against independent computations and hand cases."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from moe_core.analyses.compare import compare
from moe_core.analyses.series import Series, series_json, token_id_match, usual_experts
from moe_core.capture.record import trace
from moe_core.capture.routers import find_moe_blocks
from moe_core.proof.tiny_models import build_tiny_model
from moe_core.series.runner import Checkpoint, trace_checkpoints
from moe_core.series.store import (
    checkpoint_folders,
    load_series,
    open_series,
    record_step,
    revision_steps,
    step_file,
    write_manifest,
)
from moe_core.traces.io import save_trace
from moe_core.traces.synthetic import trace_from_choices
from tests.cli_runner import run_cli

TEXTS = ("the cat sat on the mat and the cat sat again " * 3, "def f(x):\n    return x + 1\n" * 3)
STEPS = (10, 200, 3000)  # the folders' names sort 10, 200, 3000 by step, not as strings


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, demo_tokenizer: Any) -> Path:
    """Three checkpoints of one tiny Mixtral: the last is the final model; earlier ones have router noise that
    shrinks with the step (routing settles over training)."""
    root = tmp_path_factory.mktemp("run")
    final = build_tiny_model("mixtral", seed=3)
    generator = torch.Generator().manual_seed(0)
    for step, noise in zip(STEPS, (2.0, 0.5, 0.0), strict=True):
        model = build_tiny_model("mixtral", seed=3)
        model.load_state_dict(final.state_dict())
        with torch.no_grad():
            for block in find_moe_blocks(model, "mixtral")[0]:
                weight = block.router.weight
                weight.add_(noise * weight.std() * torch.randn(weight.shape, generator=generator))
        folder = root / f"checkpoint-{step}"
        model.save_pretrained(folder)
        demo_tokenizer.save_pretrained(folder)
    (root / "logs").mkdir()  # not a checkpoint: no config.json
    return root


def test_checkpoint_folders_sort_by_step(checkpoints: Path) -> None:
    assert [step for step, _ in checkpoint_folders(checkpoints)] == list(STEPS)
    assert revision_steps(["step5000-tokens20B", "step100-tokens1B", "main-step900"]) == [
        (100, "step100-tokens1B"), (900, "main-step900"), (5000, "step5000-tokens20B")]  # fmt: skip


def test_series_is_resumable_and_equals_each_checkpoints_own_trace(
    checkpoints: Path, tmp_path: Path, demo_tokenizer: Any
) -> None:
    """Two steps first, then all three: the second run traces only the missing step; every stored trace is the
    checkpoint's own routing of the texts (traced here independently); training-series' curves are compare()
    of each step against the last, and the last step agrees with itself exactly."""
    from transformers import AutoModelForCausalLM

    folders = checkpoint_folders(checkpoints)
    all_steps = [Checkpoint(step, str(folder)) for step, folder in folders]
    lines: list[str] = []
    trace_checkpoints(all_steps[:2], tmp_path, TEXTS, max_tokens=32, device="cpu", report=lines.append)
    first_file = tmp_path / "step-000010.npz"  # the tokens once (tokens.parquet), each step its arrays
    stamp = first_file.stat().st_mtime_ns
    lines.clear()
    trace_checkpoints(all_steps, tmp_path, TEXTS, max_tokens=32, device="cpu", report=lines.append)
    assert ["already traced" in line for line in lines] == [True, True, False]
    assert first_file.stat().st_mtime_ns == stamp
    series = load_series(tmp_path)
    assert series.steps == STEPS
    own = [trace(AutoModelForCausalLM.from_pretrained(f).eval(), demo_tokenizer, TEXTS, max_tokens=32)
           for _, f in folders]  # fmt: skip
    assert (tmp_path / "tokens.parquet").is_file()
    for stored, expected in zip(series.traces, own, strict=True):
        np.testing.assert_array_equal(stored.experts, expected.experts)
        np.testing.assert_allclose(stored.weights, expected.weights, atol=5e-4)  # stored as float16
        assert stored.tokens.text == expected.tokens.text
    data = series_json(series)
    assert data["steps"] == list(STEPS)
    for layer in data["layers"]:
        row = own[0].layer_index(layer["layer"])
        for step_row, (top1, sets) in enumerate(zip(layer["top1_match_final"], layer["set_match_final"], strict=True)):
            reference = compare(own[step_row], own[-1]).layers.iloc[row]
            assert top1 == pytest.approx(reference.top1_agreement, abs=1e-6)
            assert sets == pytest.approx(reference.set_agreement, abs=1e-6)
        assert layer["top1_match_final"][-1] == layer["set_match_final"][-1] == 1.0
    assert data["token_id_match_final"][-1] == 1.0
    assert data["layers"][0]["set_match_final"][0] < 1.0  # the noisiest checkpoint routes differently


def test_a_folder_of_other_texts_is_refused(checkpoints: Path, tmp_path: Path) -> None:
    step = [Checkpoint(10, str(checkpoints / "checkpoint-10"))]
    trace_checkpoints(step, tmp_path, TEXTS, max_tokens=16, device="cpu", report=lambda _: None)
    with pytest.raises(ValueError, match="other texts or another token limit"):
        trace_checkpoints(step, tmp_path, ("another text",), max_tokens=16, device="cpu", report=lambda _: None)


def test_usual_expert_and_token_id_match_hand_case() -> None:
    """Id 7 appears 5 times: first choices 1,1,1,2,2 (usual 1); at the final step 2,2,2,2,1 (usual 2); id 9
    appears 5 times on expert 0 both times. Of the two frequent ids, one keeps its usual expert: 0.5. With
    min_count 6 no id is frequent enough: NaN."""
    ids = [7, 7, 7, 7, 7, 9, 9, 9, 9, 9]
    early = _with_ids(trace_from_choices([[1], [1], [1], [2], [2], [0], [0], [0], [0], [0]], num_experts=3), ids)
    final = _with_ids(trace_from_choices([[2], [2], [2], [2], [1], [0], [0], [0], [0], [0]], num_experts=3), ids)
    assert usual_experts(early) == {(0, 7): 1, (0, 9): 0}
    assert token_id_match(early, final) == 0.5 and token_id_match(final, final) == 1.0
    assert np.isnan(token_id_match(early, final, min_count=6))


def _with_ids(routing: Any, ids: list[int]) -> Any:
    return replace(routing, tokens=replace(routing.tokens, ids=np.asarray(ids)))


def test_training_series_command(checkpoints: Path, tmp_path: Path, capsys: Any) -> None:
    """The CLI end to end: trace-checkpoints, training-series (JSON), and --step/--out exports one snapshot."""
    out = tmp_path / "series"
    code, printed, err = run_cli(capsys, "trace-checkpoints", "--checkpoints", str(checkpoints), "--out", str(out),
                                 "--text", TEXTS[0], "--max-tokens", "16", "--device", "cpu")  # fmt: skip
    assert code == 0, err
    assert "Loading weights" not in err and "\r" not in err  # captured stderr: no weight-loading bar in the log
    assert json.loads(printed)["steps"] == list(STEPS)
    code, printed, _ = run_cli(capsys, "training-series", str(out))
    data = json.loads(printed)
    assert code == 0 and data["steps"] == list(STEPS) and len(data["layers"]) == 2
    assert data == series_json(load_series(out))
    code, printed, _ = run_cli(capsys, "training-series", str(out), "--step", "200", "--out", str(tmp_path / "s.json"))
    assert code == 0 and (tmp_path / "s.json").is_file()
    code, _, err = run_cli(capsys, "training-series", str(out), "--step", "7", "--out", str(tmp_path / "x.json"))
    assert code == 2 and "step 7 is not in the series" in err
    code, printed, _ = run_cli(capsys, "training-series", str(tmp_path))  # a folder with series/ inside
    assert code == 0 and json.loads(printed) == data
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "training-series", str(tmp_path / "empty"))
    assert code == 2 and "holds no series" in err


def test_series_steps_must_increase() -> None:
    routing = trace_from_choices([[0], [1]], num_experts=2)
    with pytest.raises(ValueError, match="must increase"):
        Series((5, 5), (routing, routing))


def test_a_step_with_other_tokens_is_kept_whole_and_moe_series_1_still_reads(tmp_path: Path) -> None:
    """Steps with the stored tokens keep only their arrays; a step whose token ids differ is stored as a whole
    trace and reads back as itself; a moe-series/1 folder (whole traces, no tokens file) still loads."""
    a = trace_from_choices([[0, 1], [1, 2], [2, 0]], num_experts=3)
    b = trace_from_choices([[2, 1], [1, 0], [0, 2]], num_experts=3)
    other = _with_ids(b, [5, 6, 7])
    manifest = open_series(tmp_path, "m", ("t",), 8)
    for step, routing in ((0, a), (10, b), (20, other)):
        record_step(tmp_path, manifest, step, f"step {step}", routing)
    assert [r["file"] for r in manifest["steps"]] == ["step-000000.npz", "step-000010.npz", "step-000020.parquet"]
    series = load_series(tmp_path)
    for stored, expected in zip(series.traces, (a, b, other), strict=True):
        np.testing.assert_array_equal(stored.experts, expected.experts)
        np.testing.assert_array_equal(stored.tokens.ids, expected.tokens.ids)
    assert series.traces[1].model.name == "step 10"

    old = tmp_path / "v1"
    old.mkdir()
    for step, routing in ((0, a), (10, b)):
        save_trace(routing, old / step_file(step, whole=True))
    write_manifest(
        old,
        {
            "format": "moe-series/1",
            "model": "m",
            "texts": ["t"],
            "max_tokens": 8,
            "steps": [{"step": s, "source": str(s), "file": step_file(s, whole=True)} for s in (0, 10)],
        },
    )
    assert [t.experts.tolist() for t in load_series(old).traces] == [a.experts.tolist(), b.experts.tolist()]


def test_training_snapshots_record_the_model_as_it_is_and_do_not_change_training(
    tmp_path: Path, demo_tokenizer: Any
) -> None:
    """The demo model's training hook: due at step 0, every `every` steps and the last; a snapshot is the model's
    own trace of the bundled held-out texts at that moment; two optimiser steps with a snapshot between them end
    at exactly the weights of two steps without one."""
    from moe_core.series.runner import SERIES_TOKENS, default_texts
    from moe_core.train.loop import Snapshots

    snapshots = Snapshots(tmp_path, demo_tokenizer, every=20, last=50)
    assert [s for s in range(51) if snapshots.due(s)] == [0, 20, 40, 50]

    def two_steps(take: bool) -> dict[str, torch.Tensor]:
        model = build_tiny_model("mixtral", seed=5).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        ids = torch.tensor(demo_tokenizer("the cat sat on the mat " * 4)["input_ids"])[None, :24]
        for step in range(2):
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if take and step == 0:
                snapshots.take(model, 20)
                assert model.training
                expected = trace(model.eval(), demo_tokenizer, default_texts(), max_tokens=SERIES_TOKENS)
                model.train()
                stored = load_series(tmp_path).traces[-1]
                np.testing.assert_array_equal(stored.experts, expected.experts)
        return {name: value.detach().clone() for name, value in model.state_dict().items()}

    with_snapshot, without = two_steps(True), two_steps(False)
    assert not snapshots.due(20) and load_series(tmp_path).steps == (20,)
    for name, value in without.items():
        assert torch.equal(with_snapshot[name], value), name


def test_domain_distance_hand_case() -> None:
    """Two domains of 4 slots each on 2 experts: A all on expert 0, B split 2/2. Pooled: 6/8 on 0, 2/8 on 1.
    TV(A, pooled) = 0.5(|1-.75| + |0-.25|) = 0.25; TV(B, pooled) = 0.5(|.5-.75| + |.5-.25|) = 0.25; mean 0.25.
    Both domains alike: 0."""
    from moe_core.analyses.series import domain_distance

    frame = pd.DataFrame({"domain": ["A", "A", "B", "B"], "expert": [0, 1, 0, 1], "share": [1.0, 0.0, 0.5, 0.5],
                          "slots": [4, 4, 4, 4]})  # fmt: skip
    assert domain_distance(frame) == pytest.approx(0.25)
    alike = frame.assign(share=[0.5, 0.5, 0.5, 0.5])
    assert domain_distance(alike) == 0.0


def test_settling_step_and_the_sentence_follow_the_numbers() -> None:
    """first_step_reaching: the step from which the mean over layers stays at or above the level (a dip after
    reaching it resets it); the teacher's sentence says 'fixed early' only where that step is within the first
    quarter of the run, 'most … early' within the first half, 'keeps changing' past it."""
    from moe_core.analyses.series import TrainingCurves, first_step_reaching, what_training_shows

    def curves(values: list[float]) -> TrainingCurves:
        steps = [0, 100, 200, 300, 400]
        saturation = pd.DataFrame({"step": steps, "layer": 0, "top1_match_final": values, "set_match_final": values})
        empty = pd.DataFrame()
        return TrainingCurves(saturation, empty, empty, empty)

    late = curves([0.1, 0.85, 0.7, 0.9, 1.0])
    assert first_step_reaching(late.saturation, "top1_match_final", 0.8) == 300
    assert "keeps changing" in what_training_shows(late) and "step 300 (75%)" in what_training_shows(late)
    halfway = curves([0.1, 0.7, 0.85, 0.9, 1.0])
    assert first_step_reaching(halfway.saturation, "top1_match_final", 0.8) == 200
    assert what_training_shows(halfway).startswith("Most routing is fixed early") and "(50%)" in what_training_shows(
        halfway
    )
    early = curves([0.1, 0.85, 0.9, 0.95, 1.0])
    assert first_step_reaching(early.saturation, "top1_match_final", 0.8) == 100
    assert what_training_shows(early).startswith("Routing is fixed early") and "85% of tokens" in what_training_shows(
        early
    )
    assert first_step_reaching(curves([0.1, 0.2, 0.3, 0.4, 0.5]).saturation, "top1_match_final", 0.8) is None
