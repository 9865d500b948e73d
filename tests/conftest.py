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
    from moe_core.tiny_models import build_tiny_model

    folder = tmp_path_factory.mktemp("tiny-mixtral")
    build_tiny_model("mixtral").save_pretrained(folder)
    demo_tokenizer.save_pretrained(folder)
    return folder
