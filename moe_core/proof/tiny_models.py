"""Tiny random-weight models of every MoE family, for proving capture exact without real weights.

Each row is the smallest config that builds on CPU. Each router's output weight is scaled so its logits
spread by ROUTER_LOGIT_STD (routing varies from token to token instead of being near-uniform or saturated),
and router biases are randomised so bias-aware selection differs from top-k of the logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

from moe_core.capture.record import forward_text, recording
from moe_core.capture.routers import MoeBlock, adapter_for, find_moe_blocks

VOCAB_SIZE = 4096  # the demo tokenizer's, so every tiny model can read the same tokens
ROUTER_LOGIT_STD = 2.0  # router logits' spread after calibration: routing varies, sigmoids do not saturate
ROUTER_BIAS_STD = 0.1  # about a third of the spread of sigmoid scores: moves some choices, not all

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


MLA = {  # DeepSeek-style multi-head latent attention, tiny
    "q_lora_rank": 16,
    "kv_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 16,
    "head_dim": 8,
    "num_key_value_heads": 4,  # MLA has no grouped-query attention
}
DEEPSEEK_STYLE = {  # fine-grained routed experts in groups, one shared expert, first layer dense
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "n_group": 2,
    "topk_group": 1,
    "n_shared_experts": 1,
    "moe_intermediate_size": 32,
    "first_k_dense_replace": 1,
    "num_hidden_layers": 3,
}
SIGMOID_NOTE = "sigmoid, bias + group-limited selection: captured experts differ from top-k of the logits"

TINY_MODELS: dict[str, TinyModel] = {
    "mixtral": TinyModel({"num_local_experts": 8, "num_experts_per_tok": 2}),
    "qwen2_moe": TinyModel(
        {
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 32,
            "num_hidden_layers": 3,
            "mlp_only_layers": [1],
        },
        note="shared expert with a sigmoid gate; layer 1 dense (mlp_only_layers)",
    ),
    "qwen3_moe": TinyModel(
        {
            "num_local_experts": 8,
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "norm_topk_prob": True,
            "num_hidden_layers": 3,
            "mlp_only_layers": [0],
            "head_dim": 16,
        },
        note="layer 0 dense (mlp_only_layers)",
    ),
    "olmoe": TinyModel({"num_experts": 16, "num_experts_per_tok": 4}, note="16 fine-grained experts, top-4"),
    "deepseek_v2": TinyModel(
        {
            **MLA,
            **DEEPSEEK_STYLE,
            "topk_method": "group_limited_greedy",
            "routed_scaling_factor": 2.0,
        },
        note="group-limited greedy selection, shared expert, weights scaled",
    ),
    "deepseek_v3": TinyModel(
        {
            **MLA,
            **DEEPSEEK_STYLE,
        },
        note=SIGMOID_NOTE,
    ),
    "glm4_moe": TinyModel(
        {
            **DEEPSEEK_STYLE,
            "head_dim": 16,
        },
        note=SIGMOID_NOTE,
    ),
    "gpt_oss": TinyModel(
        {"num_local_experts": 8, "num_experts_per_tok": 2, "head_dim": 16, "layer_types": None},
        note="top-k of logits, softmax over the chosen; router and experts have biases",
    ),
    "granitemoe": TinyModel({"num_local_experts": 8, "num_experts_per_tok": 2}, note="top-k logits, then softmax"),
    "dbrx": TinyModel(
        {
            "d_model": 64,
            "n_layers": 2,
            "n_heads": 4,
            "max_seq_len": 256,
            "attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
            "ffn_config": {"ffn_hidden_size": 64, "moe_num_experts": 8, "moe_top_k": 2, "hidden_size": 64},
        },
        note="the router returns logits only; softmax, top-k and renormalisation happen in the FFN",
    ),
    "phimoe": TinyModel(
        {"num_local_experts": 8, "num_experts_per_tok": 2, "router_jitter_noise": 0.0},
        note="sparsemixer top-2: weights do not sum to 1",
    ),
    "llama4_text": TinyModel(
        {
            "num_local_experts": 8,
            "num_experts_per_tok": 1,
            "intermediate_size_mlp": 64,
            "head_dim": 16,
            "moe_layers": [1],
            "layer_types": None,
            "no_rope_layers": None,
        },
        note="sigmoid of the top-k logit scales the expert input; shared expert; layer 0 dense",
    ),
    "qwen3_next": TinyModel(
        {
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 32,
            "head_dim": 16,
            "linear_key_head_dim": 16,
            "linear_value_head_dim": 16,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,
            "layer_types": ["linear_attention", "full_attention"],
        },
        note="hybrid linear/full attention; shared expert",
    ),
    "hunyuan_v1_moe": TinyModel({"num_experts": 8, "moe_topk": 2, "head_dim": 16}),
    "ernie4_5_moe": TinyModel(
        {
            "moe_num_experts": 8,
            "moe_k": 2,
            "moe_intermediate_size": 32,
            "moe_num_shared_experts": 1,
            "moe_layer_start_index": 1,
            "moe_layer_end_index": 2,
            "num_hidden_layers": 3,
        },
        note="layer 0 dense; shared expert",
    ),
    "switch_transformers": TinyModel(
        {
            "d_model": 64,
            "d_kv": 16,
            "d_ff": 64,
            "num_layers": 2,
            "num_decoder_layers": 2,
            "num_heads": 4,
            "num_experts": 8,
            "expert_capacity": 4,
            "encoder_sparse_step": 1,
            "decoder_sparse_step": 1,
            "router_jitter_noise": 0.0,
        },
        seq2seq=True,
        note="top-1 with real expert capacity (slots past capacity are DROPPED); encoder layers traced",
    ),
    "lfm2_moe": TinyModel(
        {
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "num_hidden_layers": 3,
            "num_dense_layers": 1,
            "layer_types": ["conv", "full_attention", "conv"],
        },
        note="short-convolution/attention hybrid; sigmoid with expert bias; layer 0 dense",
    ),
    "bailing_hybrid": TinyModel(
        {
            **MLA,
            "q_lora_rank": None,
            "num_attention_heads": 4,
            "qk_head_dim": 16,
            "num_experts": 8,
            "num_experts_per_token": 2,
            "num_expert_group": 2,
            "topk_group": 1,
            "moe_intermediate_size": 32,
            "num_hidden_layers": 3,
            "first_k_dense_replace": 1,
            "linear_head_dim": 16,
            "linear_num_heads": 4,
            "layer_group_size": 2,
            "pad_token_id": 0,
            "eos_token_id": 0,
        },
        note=SIGMOID_NOTE + "; linear/MLA attention hybrid",
    ),
    "deepseek_v4": TinyModel(
        {
            "n_routed_experts": 8,
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "num_hidden_layers": 3,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "q_lora_rank": 16,
            "qk_rope_head_dim": 8,
            "o_groups": 2,
            "o_lora_rank": 16,
            "index_n_heads": 2,
            "index_head_dim": 16,
            "index_topk": 8,
            "sliding_window": 8,
            "hc_mult": 2,
            "mlp_layer_types": ["hash_moe", "moe", "moe"],
            "num_nextn_predict_layers": 0,
        },
        note="layer 0 hash-routed (token-id table); sqrt(softplus) scores with a selection bias",
    ),
    "gemma4_text": TinyModel(
        {
            "enable_moe_block": True,
            "num_experts": 8,
            "top_k_experts": 2,
            "moe_intermediate_size": 32,
            "head_dim": 16,
            "global_head_dim": 16,
        },
        note="MoE beside a dense MLP in every layer (enable_moe_block); off in the default config",
    ),
    "beam": TinyModel(
        {
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "head_dim": 16,
            "n_group": 2,
            "topk_group": 1,
            "num_hidden_layers": 3,
            "mlp_layer_types": ["dense", "sparse", "sparse"],
        },
        note="group-limited selection; layer 0 dense",
    ),
    "jetmoe": TinyModel(
        {"num_local_experts": 8, "num_experts_per_tok": 2, "kv_channels": 16},
        note="FFN experts traced; attention-head experts (MoA) not",
    ),
    "zaya": TinyModel(
        {
            "num_experts": 8,
            "num_experts_per_tok": 1,
            "moe_intermediate_size": 32,
            "head_dim": 16,
            "router_hidden_size": 16,
        },
        note="E = 8 experts + 1 skip class (expert 8): a skip is served by no expert",
    ),
    "longcat_flash": TinyModel(
        {
            **MLA,
            "num_attention_heads": 4,
            "qk_head_dim": 16,
            "num_layers": 2,
            "ffn_hidden_size": 64,
            "expert_ffn_hidden_size": 32,
            "n_routed_experts": 8,
            "zero_expert_num": 4,
            "moe_topk": 2,
            "pad_token_id": 0,
        },
        note="E = 8 experts + 4 zero-computation (identity) experts 8-11",
    ),
}


# The routing shapes of released models (from their config.json), for build_tiny_model's overrides: the app's
# charts and benchmarks at real sizes with a tiny hidden size.
REAL_SHAPES: dict[str, dict[str, Any]] = {
    "deepseek_v3": {  # deepseek-ai/DeepSeek-V3: 256 routed experts in 8 groups, top-8 from 4 groups, 3 dense layers
        "n_routed_experts": 256, "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4, "n_shared_experts": 1,
        "first_k_dense_replace": 3, "num_hidden_layers": 61, "routed_scaling_factor": 2.5,
    },
    "qwen3_moe": {  # Qwen/Qwen3-30B-A3B: 128 experts, top-8, 48 layers
        "num_experts": 128, "num_experts_per_tok": 8, "num_hidden_layers": 48, "mlp_only_layers": [],
    },
    "olmoe": {"num_experts": 64, "num_experts_per_tok": 8, "num_hidden_layers": 16},  # allenai/OLMoE-1B-7B-0924
}  # fmt: skip

# Families that build tiny from the generic overrides below alone (checked by the same ablation test).
GENERIC_OVERRIDES: dict[str, Any] = {
    "num_experts": 8,
    "num_local_experts": 8,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "num_experts_per_token": 2,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "head_dim": 16,
    "first_k_dense_replace": 1,
    "num_hidden_layers": 3,
    "n_group": 2,
    "topk_group": 1,
    "n_shared_experts": 1,
    "pad_token_id": 0,
    "bos_token_id": 0,
    "eos_token_id": 0,
}
GENERIC_FAMILIES = (
    "afmoe", "axk1", "axk2", "cohere2_moe", "deepseek_v32", "dots1", "exaone_moe", "flex_olmo", "flint",
    "glm4_moe_lite", "glm_moe_dsa", "granitemoe_swa", "granitemoehybrid", "granitemoeshared", "hy_v3", "hy_v4",
    "jamba", "kimi_linear", "kolibri1", "laguna", "lara_mini", "mellum", "mimo_v2_flash", "minimax", "minimax_m2",
    "nemotron_h", "solar_open", "qwen3_5_moe_text", "qwen4_exp_text", "dots3_note_text",
)  # fmt: skip

# MoE architectures in transformers 5.24 that are not in the table, and why.
NOT_COVERED: dict[str, str] = {
    "doge": "product-key retrieval over single-neuron experts: the experts' indices and weights are computed "
    "inline (no module receives them) and its logits are two [T, sqrt(E)] key halves, not [T, E]: not traced",
    "nllb-moe": "transformers bug, checked on 5.24: NllbMoeSparseMLP passes the router's [T, E] 0/1 mask to "
    "experts that read it as expert indices, so only experts 0 and 1 ever run, whatever the router chose",
    "qwen3_5_moe, qwen4_exp, dots3_note, llama4": "multimodal checkpoints: loading one gives its text decoder "
    "(the *_text rows above) with the checkpoint's weights, tested on a saved qwen3_5_moe",
    "aria, deepseek_ocr2, diffusion_gemma, ernie4_5_vl_moe, glm4v_moe, glm5_next, granite_docling, hy_v4_vl, "
    "inkling2, inkling2_loop, kimi_k25, minimax_m3_vl, mistral4, mistral_large4, muse_spark, openai_privacy_filter, "
    "qwen3_omni_moe, qwen3_vl_moe, step3p7, unlimited_ocr": "vision/audio/multimodal or non-causal-LM models with "
    "no text-model class to load them as: loading one says so in a sentence",
    "gemma4_unified": "no MoE option in its text config",
}


def family_spec(family: str) -> TinyModel:
    """The tiny model of a family: hand-written, or the generic overrides that apply to its config."""
    if family in TINY_MODELS:
        return TINY_MODELS[family]
    if family not in GENERIC_FAMILIES:
        raise KeyError(f"no tiny model for {family!r}")
    keys = set(AutoConfig.for_model(family).to_dict())
    overrides = {key: value for key, value in GENERIC_OVERRIDES.items() if key in keys}
    if "kv_lora_rank" in keys:
        overrides.update(MLA)
    return TinyModel(overrides)


def all_families() -> list[str]:
    return [*TINY_MODELS, *GENERIC_FAMILIES]


def _router_output_weight(block: MoeBlock) -> nn.Parameter:
    """The router's last weight matrix: its rows score the experts (one row per routing class). Matrices named
    "bias" are left out: ERNIE keeps its correction bias as a [1, E] matrix."""
    return [p for name, p in block.router.named_parameters() if p.ndim == 2 and "bias" not in name][-1]


@torch.no_grad()
def _randomise_router_biases(blocks: Sequence[MoeBlock], generator: torch.Generator) -> None:
    """Give every per-expert bias of a router (any depth) or of its block random values, so bias-aware selection
    (DeepSeek-V3's correction bias, AFMoE's expert bias, ERNIE's statics, Zaya's balancing) differs from top-k
    of the logits. Per-expert: as many entries as the router has rows."""
    for block in blocks:
        classes = _router_output_weight(block).shape[0]
        named = (
            *block.router.named_parameters(),
            *block.router.named_buffers(),
            *block.block.named_parameters(recurse=False),
            *block.block.named_buffers(recurse=False),
        )
        for name, tensor in named:
            if "bias" in name and tensor.numel() == classes and tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * ROUTER_BIAS_STD)


@torch.no_grad()
def _randomise_hash_tables(blocks: Sequence[MoeBlock], generator: torch.Generator) -> None:
    """Fill token-id -> experts tables (DeepSeek-V4's hash routers) with k distinct random experts per token.

    A checkpoint loads the real table; a freshly built model has all zeros, every token sent k times to expert 0.
    """
    for block in blocks:
        num_experts = _router_output_weight(block).shape[0]
        for table in block.router.buffers():
            if table.ndim == 2 and not table.is_floating_point():
                vocab, top_k = table.shape
                table.copy_(torch.rand(vocab, num_experts, generator=generator).argsort(dim=1)[:, :top_k])


@torch.no_grad()
def _calibrate_routers(model: nn.Module, blocks: Sequence[MoeBlock], generator: torch.Generator) -> None:
    """Scale each router's output weight so its logits on random tokens spread by ROUTER_LOGIT_STD.

    Why: random init leaves routing near-uniform, and a fixed scale-up saturates sigmoid routers on some
    families (every score 1.0, ties won by experts 0 and 1). Either way few experts serve any token and
    the ablation proof says little. Layer by layer, since each scale changes the inputs of later routers.
    """
    logits_index = find_moe_blocks(model, model.config.model_type)[1]
    adapter = adapter_for(model.config.model_type)
    batch = {"input_ids": torch.randint(0, VOCAB_SIZE, (2, 32), generator=generator)}
    for block in blocks:
        output_weight = _router_output_weight(block)
        if not output_weight.any():  # zero-initialised routers (AFMoE) send every token to the same experts
            output_weight.copy_(torch.randn(output_weight.shape, generator=generator))
        with recording([block], logits_index, adapter.choice) as records:
            forward_text(model, batch)
        scores = records[0].logits[0].float()
        logits = scores.clamp_min(1e-30).log() if adapter.scoring == "probabilities" else scores
        # Spread from token to token and expert to expert, what routing depends on: remove each token's and
        # each expert's mean (a log-softmax differs from the logits by a per-token constant).
        centred = logits - logits.mean(dim=1, keepdim=True) - logits.mean(dim=0) + logits.mean()
        spread = centred.std().item()
        output_weight.mul_(ROUTER_LOGIT_STD / max(spread, 1e-6))


def build_tiny_model(family: str, seed: int = 0, overrides: dict[str, Any] | None = None) -> nn.Module:
    """A randomly initialised tiny model of `family` with calibrated routers and random router biases, in eval mode.

    `overrides` go on top of the tiny config: a real model's routing shape (experts, top-k, layers, groups) with
    the tiny hidden size, e.g. REAL_SHAPES["deepseek_v3"].
    """
    spec = family_spec(family)
    config = AutoConfig.for_model(family, **{**COMMON, **spec.config, **(overrides or {})})
    torch.manual_seed(seed)
    auto = AutoModelForSeq2SeqLM if spec.seq2seq else AutoModelForCausalLM
    model = auto.from_config(config).eval()
    blocks, _ = find_moe_blocks(model, config.model_type)
    generator = torch.Generator().manual_seed(seed)
    _randomise_router_biases(blocks, generator)
    _randomise_hash_tables(blocks, generator)
    _calibrate_routers(model, blocks, generator)
    return model
