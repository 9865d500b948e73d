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

# folder -> how it routes, for the README's remote-code table (moe_core.proof.verification.remote_code_table)
NOTES = {
    "openmoe": "OpenMoE: ST-MoE top-2, capacity inside the model (its own drops traced as -1); MoE every 2nd layer",
    "deepseek_moe": "DeepSeekMoE: 16 fine-grained experts top-4 + 2 shared, softmax without renormalisation; "
    "layer 0 dense; the gate returns only its top-k (scores recomputed from its weight, flagged)",
    "llama_moe": "LLaMA-MoE: split LLaMA FFNs, noisy top-k gate (noise off in eval), dict router output",
    "grok1": "Grok-1: 8 experts top-2, fused experts called as experts(hidden, index, weights)",
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
