"""ModelHints from --model (config and tokenizer, no weights) or --tokenizer alone.

transformers and torch are imported here only, and only when a model or tokenizer is named: importing a dump
without either stays as light as reading a trace file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moe_core.engines.common import ModelHints

EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts", "num_routed_experts")
SHARED_EXPERT_KEYS = ("n_shared_experts", "num_shared_experts")
GROUPED_TOP_K_KEYS = ("n_group", "topk_group")  # DeepSeek-style group-limited routing (vLLM/SGLang: grouped top-k)
TOP_K_KEYS = ("num_experts_per_tok", "moe_top_k", "num_selected_experts", "top_k", "moe_k")


def _first_int(config: Any, keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _source(model_id: str) -> tuple[str, bool]:
    """(folder or hub id, local files only), by moe_core.models' rules (allow-list, bundled names)."""
    from moe_core.models import hub_reachable, resolve

    source = resolve(model_id)
    return source, Path(source).exists() or not hub_reachable()


def _moe_layers(config: Any, name: str, trust_remote_code: bool) -> tuple[int, ...]:
    """The model's MoE layer indices, from a skeleton on the meta device (no memory, no weights)."""
    import torch

    from moe_core.capture.routers import find_moe_blocks
    from moe_core.models import _model_class

    with torch.device("meta"):
        skeleton = _model_class(config, name).from_config(config, trust_remote_code=trust_remote_code)
    blocks, _ = find_moe_blocks(skeleton, config.model_type)
    return tuple(block.layer for block in blocks)


def _decoder(tokenizer: Any) -> Any:
    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    return decode


def load_tokenizer(name: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a bundled name, folder or hub id; ModelLoadError (a ValueError) in one line if not."""
    from transformers import AutoTokenizer

    from moe_core.models import ModelLoadError

    source, local_only = _source(name)
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=local_only, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as error:
        raise ModelLoadError(f"cannot load the tokenizer of {name}: {str(error).splitlines()[0]}") from error


def model_hints(model: str | None = None, tokenizer: str | None = None, trust_remote_code: bool = False) -> ModelHints:
    """What --model (config: E, k, MoE layers, architecture; and its tokenizer) or --tokenizer (text only) say."""
    if model is None:
        if tokenizer is None:
            return ModelHints()
        return ModelHints(decode=_decoder(load_tokenizer(tokenizer, trust_remote_code)))
    from moe_core.capture.routers import adapter_for
    from moe_core.models import _load_config

    source, local_only = _source(model)
    config = _load_config(source, local_only, trust_remote_code)
    return ModelHints(
        name=model,
        architecture=config.model_type,
        num_experts=_first_int(config, EXPERT_COUNT_KEYS),
        top_k=_first_int(config, TOP_K_KEYS),
        num_layers=_first_int(config, ("num_hidden_layers", "num_layers")),
        moe_layers=_moe_layers(config, model, trust_remote_code),
        num_shared_experts=_first_int(config, SHARED_EXPERT_KEYS) or 0,
        grouped_top_k=all(getattr(config, key, None) is not None for key in GROUPED_TOP_K_KEYS),
        scoring=adapter_for(config.model_type).scoring,
        context_length=_first_int(config, ("max_position_embeddings", "n_positions", "max_seq_len")),
        decode=_decoder(load_tokenizer(tokenizer or model, trust_remote_code)),
        source=f"the config of {model}",
    )
