"""The seed papers' own models through remote code: four look-alike model folders (tests/fixtures/remote_code),
loaded exactly as a hub checkpoint's custom code would be, traced by generic capture and proven by ablation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from moe_core import models
from moe_core.capture.generic import GENERIC_NOTE, RECOMPUTED_NOTE, WEIGHTS_RECOMPUTED_NOTE
from moe_core.capture.record import trace
from moe_core.models import ModelLoadError, load_model
from moe_core.proof.verification import VERIFY_TEXTS, RemoteCodeRow, remote_code_table, verify_model
from moe_core.traces.types import DROPPED
from tests.lookalikes import LOOKALIKES, NOTES, build_checkpoint

LONG_TEXT = " ".join(VERIFY_TEXTS) * 3  # long enough that OpenMoE's capacity binds toward the end


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, demo_tokenizer: Any) -> dict[str, Path]:
    target = tmp_path_factory.mktemp("remote-code")
    return {name: build_checkpoint(name, target, demo_tokenizer) for name in LOOKALIKES}


@pytest.fixture(scope="module")
def loaded(checkpoints: dict[str, Path]) -> dict[str, models.LoadedModel]:
    return {name: load_model(str(folder), device="cpu", trust_remote_code=True) for name, folder in checkpoints.items()}


@pytest.mark.parametrize("name", LOOKALIKES)
def test_lookalike_loads_through_remote_code_and_traces(name: str, loaded: dict[str, models.LoadedModel]) -> None:
    """load_model with trust_remote_code runs the folder's own code (auto_map); the trace reads the consumed choice."""
    model_type, num_experts, top_k, moe_layers = LOOKALIKES[name]
    model = loaded[name].model
    assert type(model).__module__.startswith("transformers_modules.")
    routing = trace(model, loaded[name].tokenizer, VERIFY_TEXTS)
    info = routing.model
    assert (info.architecture, info.num_experts, info.top_k, info.moe_layers) == (
        model_type, num_experts, top_k, moe_layers
    )  # fmt: skip
    assert GENERIC_NOTE in info.notes
    assert RECOMPUTED_NOTE not in info.notes and WEIGHTS_RECOMPUTED_NOTE not in info.notes
    assert info.scoring == "softmax"


@pytest.mark.parametrize("name", LOOKALIKES)
def test_lookalike_passes_verify(name: str, loaded: dict[str, models.LoadedModel]) -> None:
    """The ablation proof on every MoE layer: captured experts are exactly those whose zeroing changes the token."""
    verdict = verify_model(loaded[name].model, loaded[name].tokenizer, (LONG_TEXT, *VERIFY_TEXTS))
    assert verdict.passed, verdict.detail
    assert verdict.probs_match is True


@pytest.mark.parametrize("name", LOOKALIKES)
def test_lookalike_is_refused_without_trust_remote_code(name: str, checkpoints: dict[str, Path]) -> None:
    """Without the operator's flag the folder's code never runs: one sentence says what would turn it on."""
    with pytest.raises(ModelLoadError, match="trust_remote_code, which the operator must turn on"):
        load_model(str(checkpoints[name]))


def test_allow_list_still_applies_to_remote_code(monkeypatch: pytest.MonkeyPatch, checkpoints: dict[str, Path]) -> None:
    """trust_remote_code does not open the allow-list: a folder the operator did not list is refused first."""
    monkeypatch.setenv(models.ALLOWED_MODELS_ENV, models.DEMO_MODEL)
    with pytest.raises(ModelLoadError, match="not allowed here"):
        load_model(str(checkpoints["grok1"]), trust_remote_code=True)


def test_openmoe_drops_appear_as_dropped_and_respect_its_capacity(loaded: dict[str, models.LoadedModel]) -> None:
    """OpenMoE's own capacity drops slots (DROPPED in the trace); no expert takes more than C slots per text,
    and drops pile up toward the end of the text."""
    lm = loaded["openmoe"]
    routing = trace(lm.model, lm.tokenizer, (LONG_TEXT, VERIFY_TEXTS[1]))
    dropped = routing.experts == DROPPED
    assert dropped.any()
    block = lm.model.layers[1].mlp
    for sequence in range(2):
        rows = routing.tokens.sequence == sequence
        capacity = block.capacity(int(rows.sum()))
        for layer in range(len(routing.model.moe_layers)):
            served = routing.experts[layer, rows][~dropped[layer, rows]]
            assert np.bincount(served, minlength=8).max() <= capacity
    first = routing.tokens.sequence == 0
    halves = np.array_split(dropped[:, first].any(axis=(0, 2)), 2)
    assert halves[1].mean() > halves[0].mean()


def test_deepseek_shared_experts_and_unreturned_scores(loaded: dict[str, models.LoadedModel]) -> None:
    """DeepSeekMoE's shared experts serve every token outside the routing: the model info counts them. Its gate
    returns only the top-k: the scores are its weight applied to its input, flagged, and their softmax top-k are
    exactly the consumed experts."""
    from moe_core.capture.generic import SCORES_RECOMPUTED_NOTE

    lm = loaded["deepseek_moe"]
    routing = trace(lm.model, lm.tokenizer, VERIFY_TEXTS)
    assert routing.model.num_shared_experts == 2
    assert SCORES_RECOMPUTED_NOTE in routing.model.notes
    naive = np.sort(np.argsort(-routing.probs, axis=-1)[..., :4], axis=-1)
    np.testing.assert_array_equal(naive, np.sort(routing.experts, axis=-1))


def test_llama_moe_gate_noise_is_off_in_eval(loaded: dict[str, models.LoadedModel]) -> None:
    """Noisy top-k gating adds noise in training only: in eval two traces agree bit for bit, in training the
    gate's logits move."""
    lm = loaded["llama_moe"]
    first, second = (trace(lm.model, lm.tokenizer, VERIFY_TEXTS) for _ in range(2))
    np.testing.assert_array_equal(first.logits, second.logits)
    gate = lm.model.layers[0].mlp.gate
    rows = torch.randn(4, lm.model.config.hidden_size)
    try:
        gate.train()
        noisy = gate(rows)["logits"]
    finally:
        gate.eval()
    assert not torch.equal(noisy, gate(rows)["logits"])


def test_readme_remote_code_table_is_measured(loaded: dict[str, models.LoadedModel]) -> None:
    """The README's remote-code table is remote_code_table of verify on the four look-alikes, as measured now."""
    rows = []
    for name, (model_type, _, _, _) in LOOKALIKES.items():
        verdict = verify_model(loaded[name].model, loaded[name].tokenizer, VERIFY_TEXTS)
        rows.append(RemoteCodeRow(name, model_type, verdict, len(verdict.layers), NOTES[name]))
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert remote_code_table(rows) in readme


@pytest.mark.parametrize("name", ["openmoe", "deepseek_moe", "llama_moe"])
def test_per_module_experts_refuse_what_needs_a_fused_call(name: str, loaded: dict[str, models.LoadedModel]) -> None:
    """The capacity-bound forward and the Closer Look call experts(hidden, index, weights); experts that are one
    module each cannot be called so, and both say it in a sentence (a ValueError the views show) before any pass."""
    from moe_core.capacity.forward import counterfactual
    from moe_core.experts import expert_study

    lm = loaded[name]
    routing = trace(lm.model, lm.tokenizer, VERIFY_TEXTS[0])
    with pytest.raises(ValueError, match="not called as experts"):
        counterfactual(lm.model, lm.tokenizer, [VERIFY_TEXTS[0]], 1.0, "position", "sequence")
    with pytest.raises(ValueError, match="not called as experts"):
        expert_study(lm.model, lm.tokenizer, routing, 0)


def test_fused_remote_code_experts_run_capacity_bound(loaded: dict[str, models.LoadedModel]) -> None:
    """Grok-1's fused experts are called as experts(hidden, index, weights): the capacity-bound forward runs, and
    with capacity to spare its losses equal the plain pass's."""
    from moe_core.capacity.forward import counterfactual

    lm = loaded["grok1"]
    result = counterfactual(lm.model, lm.tokenizer, [VERIFY_TEXTS[0]], 64.0, "position", "sequence")
    np.testing.assert_allclose(result.capped_loss, result.plain_loss, atol=1e-5, equal_nan=True)


def test_verify_command_on_remote_code(checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """verify --trust-remote-code proves OpenMoE's layers; without the flag it is one line and exit 2."""
    import json

    from moe_core.cli.main import main

    folder = str(checkpoints["openmoe"])
    assert main(["verify", "--model", folder, "--trust-remote-code", "--device", "cpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] and [entry["layer"] for entry in data["layers"]] == [1, 3]
    assert main(["verify", "--model", folder]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "trust_remote_code" in error
