"""Shared fixtures. Unit tests never load a real model; integration tests use tiny configs or the demo model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from moe_core.models import BUNDLED_MODELS, DEMO_MODEL


@pytest.fixture(scope="session")
def demo_tokenizer() -> Any:
    """The bundled demo model's BPE tokenizer (4096 ids), shared by every tiny architecture."""
    return AutoTokenizer.from_pretrained(BUNDLED_MODELS[DEMO_MODEL])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, demo_tokenizer: Any) -> Path:
    """A tiny random Mixtral saved like a real checkpoint (safetensors + tokenizer) in a local folder."""
    from moe_core.proof.tiny_models import build_tiny_model

    folder = tmp_path_factory.mktemp("tiny-mixtral")
    build_tiny_model("mixtral").save_pretrained(folder)
    demo_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def dense_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny dense Llama (no routers) saved in a local folder: what 'not an MoE model' looks like."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=4096, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder
