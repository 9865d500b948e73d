"""Tiny random-weight models of every MoE family, for proving capture exact without real weights.

Each row is the smallest config that builds on CPU. Routers are sharpened (weights scaled up) so routing
is far from uniform, and bias buffers are randomised so bias-aware selection differs from top-k of logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

VOCAB_SIZE = 4096  # the demo tokenizer's, so every tiny model can read the same tokens
ROUTER_SHARPNESS = 8.0

COMMON: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}


@dataclass(frozen=True)
class TinyModel:
    config: dict[str, Any] = field(default_factory=dict)  # overrides on top of COMMON
    seq2seq: bool = False
    note: str = ""


TINY_MODELS: dict[str, TinyModel] = {
    "mixtral": TinyModel({"num_local_experts": 8, "num_experts_per_tok": 2}),
    "deepseek_v3": TinyModel(
        {
            "n_routed_experts": 8,
            "num_experts_per_tok": 2,
            "n_group": 2,
            "topk_group": 1,
            "n_shared_experts": 1,
            "moe_intermediate_size": 32,
            "first_k_dense_replace": 1,
            "num_hidden_layers": 3,
            "q_lora_rank": 16,
            "kv_lora_rank": 16,
            "qk_rope_head_dim": 8,
            "qk_nope_head_dim": 8,
            "v_head_dim": 16,
        },
        note="sigmoid, bias + group-limited selection: captured experts differ from top-k of logits",
    ),
}


def _sharpen(model: nn.Module) -> None:
    """Scale router weights up and randomise router bias buffers (seeded by the caller)."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if not name.endswith((".gate", ".router")):
                continue
            for parameter_name, parameter in module.named_parameters(recurse=False):
                if parameter.ndim == 2:
                    parameter.mul_(ROUTER_SHARPNESS)
                elif "bias" in parameter_name:
                    parameter.normal_(0.0, 0.5)
            for buffer_name, buffer in module.named_buffers(recurse=False):
                if "bias" in buffer_name and buffer.is_floating_point():
                    buffer.normal_(0.0, 0.5)


def build_tiny_model(family: str, seed: int = 0) -> nn.Module:
    """A randomly initialised, sharpened tiny model of `family`, in eval mode."""
    spec = TINY_MODELS[family]
    config = AutoConfig.for_model(family, **{**COMMON, **spec.config})
    torch.manual_seed(seed)
    auto = AutoModelForSeq2SeqLM if spec.seq2seq else AutoModelForCausalLM
    model = auto.from_config(config)
    _sharpen(model)
    return model.eval()
