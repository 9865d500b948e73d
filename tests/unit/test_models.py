"""Loading by bundled name, local folder or hub id, and a plain error for each way it can fail."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import moe_core.models as models
from moe_core.models import ModelLoadError, load_model, resolve


def test_bundled_name_resolves_to_assets() -> None:
    """The demo model's name maps to its folder under assets/."""
    assert Path(resolve(models.DEMO_MODEL)) == models.ASSETS / "models" / models.DEMO_MODEL


def test_local_folder_loads_with_progress(tiny_model_dir: Path) -> None:
    """A saved local folder loads, and progress rises monotonically to 1.0."""
    seen: list[float] = []
    loaded = load_model(str(tiny_model_dir), progress=lambda _stage, fraction: seen.append(fraction))
    assert loaded.model.config.model_type == "mixtral"
    assert loaded.placement.device in {"cpu", "cuda"}
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) >= 4


def test_missing_path_is_not_available(tmp_path: Path) -> None:
    """A path that does not exist is 'not available' (the same words as an existing non-model folder)."""
    with pytest.raises(ModelLoadError, match="is not available: not a model here"):
        load_model(str(tmp_path / "nowhere" / "model"))


def test_folder_without_config_is_not_available(tmp_path: Path) -> None:
    """An existing folder that is not a model is 'not available', without saying that it exists."""
    with pytest.raises(ModelLoadError, match="is not available: not a model here"):
        load_model(str(tmp_path))


def test_hub_id_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id with no network and nothing cached fails fast with what to do next."""
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelLoadError, match="cannot reach the Hugging Face hub"):
        load_model("someone/not-cached-moe")


def test_offline_flag_means_hub_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1 is honoured without trying the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.hub_reachable() is False


def test_dense_model_is_refused(dense_model_dir: Path) -> None:
    """A model without routers: 'X is a dense model: no routers found'."""
    with pytest.raises(ModelLoadError, match=r"is a dense model: no routers found"):
        load_model(str(dense_model_dir))


def _copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(tiny_model_dir, target)
    return target


def test_truncated_checkpoint_is_corrupt(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A safetensors file cut short is reported as corrupt, not as a traceback."""
    folder = _copy(tiny_model_dir, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="corrupt or incomplete"):
        load_model(str(folder))


def test_partial_checkpoint_is_incomplete(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Weights missing from the checkpoint are an error, not silently random-initialised."""
    folder = _copy(tiny_model_dir, tmp_path)
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    dropped = next(name for name in tensors if "input_layernorm" in name)
    del tensors[dropped]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="incomplete: 1 weights missing"):
        load_model(str(folder))


def test_invalid_config_json(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A config.json that is not JSON is named."""
    folder = _copy(tiny_model_dir, tmp_path)
    (folder / "config.json").write_text("{ not json")
    with pytest.raises(ModelLoadError, match="not a valid JSON"):
        load_model(str(folder))


def test_custom_code_needs_the_operator(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A model that needs its own code is refused while trust_remote_code is off (the default)."""
    folder = _copy(tiny_model_dir, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="my_custom_moe", auto_map={"AutoConfig": "modeling.MyConfig"})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        load_model(str(folder))


def test_allow_list_restricts_models(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    """On a public deployment, only the operator's models load."""
    monkeypatch.setenv(models.ALLOWED_MODELS_ENV, f"{models.DEMO_MODEL}, org/other")
    assert models.allowed_models() == (models.DEMO_MODEL, "org/other")
    with pytest.raises(ModelLoadError, match="not allowed here"):
        resolve(str(tiny_model_dir))
    assert resolve(models.DEMO_MODEL)


def test_empty_model_id() -> None:
    """A blank model id asks for one."""
    with pytest.raises(ModelLoadError, match="no model given"):
        resolve("  ")


def test_multimodal_checkpoint_loads_and_traces_its_text_decoder(tmp_path: Path, demo_tokenizer: Any) -> None:
    """Hub ids of multimodal MoE models (Qwen3.5-MoE, Llama 4, ...) hold a vision+text checkpoint. Loading one
    gives its text decoder with the checkpoint's own weights: it routes exactly like the full model does."""
    from transformers import AutoConfig, Qwen3_5MoeForConditionalGeneration

    from moe_core.capture.record import trace
    from moe_core.proof.tiny_models import COMMON, family_spec

    vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 64}
    config = AutoConfig.for_model(
        "qwen3_5_moe", text_config={**COMMON, **family_spec("qwen3_5_moe_text").config}, vision_config=vision
    )
    torch.manual_seed(0)
    full = Qwen3_5MoeForConditionalGeneration(config).eval()
    full.save_pretrained(tmp_path)
    demo_tokenizer.save_pretrained(tmp_path)

    loaded = load_model(str(tmp_path))
    assert type(loaded.model).__name__ == "Qwen3_5MoeForCausalLM"
    text = "Routing is decided per token: 12 + 30 = 42."
    # One tokenizer for both: beside a Qwen config, transformers reads the saved demo tokenizer Qwen's way.
    expected, actual = trace(full, loaded.tokenizer, text), trace(loaded.model, loaded.tokenizer, text)
    np.testing.assert_array_equal(actual.experts, expected.experts)
    np.testing.assert_allclose(actual.logits, expected.logits, atol=1e-5)


def test_model_with_no_text_class_is_named(tmp_path: Path) -> None:
    """A vision-language wrapper with no text-only class (qwen3_vl_moe) gets one plain sentence, not
    transformers' list of every supported config."""
    from transformers import AutoConfig

    AutoConfig.for_model("qwen3_vl_moe").save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=r"\(qwen3_vl_moe\) has no text-model class") as caught:
        load_model(str(tmp_path))
    assert "\n" not in str(caught.value)
