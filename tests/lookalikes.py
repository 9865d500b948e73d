"""The remote-code look-alike folders (tests/fixtures/remote_code) made into checkpoints, for any test tier."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "remote_code"
# folder -> (model_type, E, k, MoE layers)
LOOKALIKES = {
    "openmoe": ("openmoe", 8, 2, (1, 3)),
    "deepseek_moe": ("deepseek", 16, 4, (1, 2)),
    "llama_moe": ("llama_moe", 8, 2, (0, 1)),
    "grok1": ("grok-1", 8, 2, (0, 1)),
}


def build_checkpoint(name: str, target: Path, tokenizer: Any) -> Path:
    """The fixture folder plus tiny random weights and the demo tokenizer: a checkpoint as the hub would hold it."""
    folder = target / name
    shutil.copytree(FIXTURES / name, folder)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, trust_remote_code=True).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
