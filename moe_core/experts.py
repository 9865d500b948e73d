"""The experts themselves, beyond the routing trace: their weights, and what each outputs for a token.

Used by the exactness proof (zeroing one expert's weights) and by "A Closer Look into Mixture-of-Experts in
Large Language Models" (Lo et al. 2024, arXiv 2406.18219), which compares experts by their weights and finds
that routers prefer the experts whose outputs have larger norms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from moe_core.capture import context_length, forward_text
from moe_core.hooks import hooks_active
from moe_core.routers import EXPERTS_CALL_CHOICES, MoeBlock, adapter_for, find_moe_blocks
from moe_core.tokens import tokenize


class ExpertsCallUnsupported(ValueError):
    """The family's experts are not called as experts(hidden, top_k_index, top_k_weights)."""


def expert_weights(experts: nn.Module, expert: int, num_experts: int) -> list[torch.Tensor]:
    """Views of every weight of one routed expert, whatever the layout.

    A module per expert (ModuleList/ModuleDict: Switch, older checkpoints); fused tensors with a leading
    [E, ...] axis (most families); or experts flattened along the first axis, [E·F, ...] (DBRX).
    """
    children = list(experts.children())
    own = list(experts.parameters(recurse=False))
    if len(children) == num_experts and not own:
        return list(children[expert].parameters())
    views = []
    for parameter in experts.parameters():
        if parameter.shape[0] == num_experts:
            views.append(parameter[expert])
        elif parameter.shape[0] % num_experts == 0:
            views.append(parameter.view(num_experts, -1, *parameter.shape[1:])[expert])
    if not views:
        raise RuntimeError(f"cannot find the weights of expert {expert} in {type(experts).__name__}")
    return views


SIMILARITY_CHUNK = 1 << 22  # weights per expert multiplied at once: bounds memory on 8×7B-sized experts


@torch.no_grad()
def weight_similarity(experts: nn.Module, num_experts: int) -> np.ndarray:
    """[E, E] cosine similarity of the experts' weights, each expert's tensors read as one long vector.

    Closer Look §3 compares experts this way: values near 0 mean the experts learned unrelated functions;
    values near 1 mean near-copies (as when experts are initialised from one dense FFN and barely diverge).
    The dot products are summed tensor by tensor and chunk by chunk, never concatenating whole experts.
    """
    per_expert = [expert_weights(experts, e, num_experts) for e in range(num_experts)]
    gram = torch.zeros(num_experts, num_experts, dtype=torch.float64)
    for tensors in zip(*per_expert, strict=True):  # the same tensor (gate, up, down, ...) of every expert
        flat = [t.reshape(-1) for t in tensors]
        for start in range(0, flat[0].numel(), SIMILARITY_CHUNK):
            chunk = torch.stack([f[start : start + SIMILARITY_CHUNK] for f in flat]).double()
            gram += (chunk @ chunk.T).cpu()
    norms = gram.diagonal().sqrt().clamp_min(1e-12)
    return (gram / norms[:, None] / norms[None, :]).numpy()


def _require_experts_call(model: nn.Module) -> None:
    """Running one expert on given tokens needs the common experts(hidden [T, H], index, weights) call."""
    if adapter_for(model.config.model_type).choice not in EXPERTS_CALL_CHOICES:
        raise ExpertsCallUnsupported(
            f"{model.config.model_type}: its experts are not called as experts(hidden, index, weights)"
        )


@torch.inference_mode()
def experts_input(model: nn.Module, tokenizer: Any, texts: Sequence[str], block: MoeBlock) -> torch.Tensor:
    """[tokens, H] the hidden states `block`'s experts receive for `texts`, padding rows dropped: one forward."""
    _require_experts_call(model)
    _, batch, _ = tokenize(tokenizer, list(texts), context_length(model))  # truncated as trace() truncates
    seen: list[torch.Tensor] = []
    with hooks_active([(block.experts, "pre", lambda _module, args, _kwargs: seen.append(args[0]))]):
        forward_text(model, batch)
    hidden = seen[0].reshape(-1, seen[0].shape[-1])
    return hidden[batch["attention_mask"].reshape(-1).bool().to(hidden.device)]


@torch.inference_mode()
def output_norms(model: nn.Module, block: MoeBlock, hidden: torch.Tensor, num_experts: int, top_k: int) -> np.ndarray:
    """[tokens, num_experts] the L2 norm of what each expert would output for each token, with a combine weight of 1.

    Pass the number of real experts (computed_experts): a zero-computation class has no expert to run, and an
    index past the real experts reads past the weights in the fused experts implementations.

    Runs the experts module the way the model does, experts(hidden, index [T, k], weights [T, k]), once per
    expert with every slot of every token sent to it and weights (1, 0, ..., 0): the other slots add exact
    zeros, and k stays the model's own (LongCat's experts break on a single slot). E times the work of the
    layer's experts, so a few seconds on large models.
    """
    _require_experts_call(model)
    num_tokens = hidden.shape[0]
    weights = torch.zeros(num_tokens, top_k, dtype=hidden.dtype, device=hidden.device)
    weights[:, 0] = 1
    norms = []
    for expert in range(num_experts):
        index = torch.full((num_tokens, top_k), expert, dtype=torch.long, device=hidden.device)
        output = block.experts(hidden, index, weights)
        norms.append(output.float().reshape(num_tokens, -1).norm(dim=-1))  # DBRX returns [T, 1, H]
    return torch.stack(norms, dim=1).cpu().numpy()


def computed_experts(model: nn.Module, num_classes: int) -> int:
    """How many of the router's classes are real experts with weights; the rest are zero-computation classes
    (LongCat's identity experts, Zaya's skip), per the adapter table."""
    adapter = adapter_for(model.config.model_type)
    return getattr(model.config, adapter.computed_experts) if adapter.computed_experts else num_classes


def moe_block(model: nn.Module, layer_row: int) -> MoeBlock:
    """The MoE block at row `layer_row` of a trace of this model."""
    return find_moe_blocks(model, model.config.model_type)[0][layer_row]
