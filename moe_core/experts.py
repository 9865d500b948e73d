"""The experts themselves, beyond the routing trace: their weights, and what each outputs for a token.

Used by the exactness proof (zeroing one expert's weights) and by "A Closer Look into Mixture-of-Experts in
Large Language Models" (Lo et al. 2024, arXiv 2406.18219), which compares experts by their weights and finds
that routers prefer the experts whose outputs have larger norms.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from transformers.integrations import moe as transformers_moe

from moe_core.capture.hooks import forward_lock, hooks_active
from moe_core.capture.record import context_length, forward_text
from moe_core.capture.routers import EXPERTS_CALL_CHOICES, MoeBlock, adapter_of, find_moe_blocks
from moe_core.capture.tokens import tokenize
from moe_core.traces.types import RoutingTrace

DEFAULT_GATE = getattr(transformers_moe, "_default_apply_gate", None)  # act(gate) * up of a [gate; up] output


class ExpertsCallUnsupported(ValueError):
    """The family's experts are not called as experts(hidden, top_k_index, top_k_weights)."""


def named_expert_weights(experts: nn.Module, expert: int, num_experts: int) -> list[tuple[str, torch.Tensor]]:
    """(parameter name, view) for every weight of one routed expert, whatever the layout.

    A module per expert (ModuleList/ModuleDict: Switch, older checkpoints); fused tensors with a leading
    [E, ...] axis (most families); or experts flattened along the first axis, [E·F, ...] (DBRX).
    """
    children = list(experts.children())
    own = list(experts.parameters(recurse=False))
    if len(children) == num_experts and not own:
        return list(children[expert].named_parameters())
    views = []
    for name, parameter in experts.named_parameters():
        if parameter.shape[0] == num_experts:
            views.append((name, parameter[expert]))
        elif parameter.shape[0] % num_experts == 0:
            views.append((name, parameter.view(num_experts, -1, *parameter.shape[1:])[expert]))
    if not views:
        raise RuntimeError(f"cannot find the weights of expert {expert} in {type(experts).__name__}")
    return views


def expert_weights(experts: nn.Module, expert: int, num_experts: int) -> list[torch.Tensor]:
    """Views of every weight of one routed expert (named_expert_weights without the names)."""
    return [view for _, view in named_expert_weights(experts, expert, num_experts)]


def _splits_gate_up(experts: nn.Module) -> bool:
    """Is a fused gate_up_proj [gate; up], split by transformers' default gate? Then its halves are the gate and
    up matrices. Interleaved (GPT-OSS) or custom gates keep the fused matrix whole rather than guess."""
    return bool(
        DEFAULT_GATE is not None
        and getattr(experts, "is_concatenated", False)
        and getattr(experts, "has_gate", False)
        and getattr(type(experts), "_apply_gate", None) is DEFAULT_GATE
    )


def expert_matrices(experts: nn.Module, expert: int, num_experts: int) -> list[tuple[str, torch.Tensor]]:
    """(name, matrix) for each weight matrix of one routed expert, biases left out.

    Names are the stored ones without ".weight" or a module path (down_proj, wi, w1, ...), except that a fused
    gate_up_proj is split into gate_proj and up_proj where the layout is known (_splits_gate_up): its output
    axis is the first of the expert's matrix, or the last when the experts store it transposed.
    """
    matrices = []
    for name, view in named_expert_weights(experts, expert, num_experts):
        if view.dim() < 2:
            continue
        label = name.removesuffix(".weight").rsplit(".", 1)[-1]
        if label == "gate_up_proj" and _splits_gate_up(experts):
            gate, up = view.chunk(2, dim=-1 if getattr(experts, "is_transposed", False) else 0)
            matrices += [("gate_proj", gate), ("up_proj", up)]
        else:
            matrices.append((label, view))
    return matrices


SIMILARITY_CHUNK = 1 << 22  # weights per expert multiplied at once: bounds memory on 8×7B-sized experts
RANDOM_CHUNK = 1 << 24  # random weights drawn at once, all experts together, for the baseline


def _cosine(gram: torch.Tensor) -> np.ndarray:
    norms = gram.diagonal().sqrt().clamp_min(1e-12)
    return (gram / norms[:, None] / norms[None, :]).numpy()


def _gram(groups: Sequence[Sequence[torch.Tensor]], num_experts: int) -> torch.Tensor:
    """[E, E] dot products of the experts' weights, summed over groups (one tensor per expert in each), tensor by
    tensor and chunk by chunk, never concatenating whole experts."""
    gram = torch.zeros(num_experts, num_experts, dtype=torch.float64)
    for tensors in groups:
        flat = [t.reshape(-1) for t in tensors]
        for start in range(0, flat[0].numel(), SIMILARITY_CHUNK):
            chunk = torch.stack([f[start : start + SIMILARITY_CHUNK] for f in flat]).double()
            gram += (chunk @ chunk.T).cpu()
    return gram


@torch.no_grad()
def weight_similarity(experts: nn.Module, num_experts: int) -> np.ndarray:
    """[E, E] cosine similarity of the experts' weights, each expert's tensors read as one long vector.

    Closer Look §4.1 compares experts by the cosine similarity of their weights: values near 0 mean the experts
    learned unrelated functions; values near 1 mean near-copies (as when experts are initialised from one dense
    FFN and barely diverge). matrix_similarities gives it per matrix, with a random-init baseline.
    """
    per_expert = [expert_weights(experts, e, num_experts) for e in range(num_experts)]
    return _cosine(_gram(list(zip(*per_expert, strict=True)), num_experts))


@torch.no_grad()
def random_similarity(shape: Sequence[int], num_experts: int, seed: int = 0, device: str = "cpu") -> np.ndarray:
    """[E, E] cosine similarity of E seeded random matrices of `shape`: what unrelated experts look like.

    Entries are independent N(0, 1). Cosine is scale-free, so any zero-mean independent init of this shape (the
    config's normal(0, initializer_range), or a normal with the matrix's own std) gives the same spread, about
    1/sqrt(weights per matrix): the yardstick for reading a similarity of 0.01.
    """
    numel = math.prod(shape)
    generator = torch.Generator(device=device).manual_seed(seed)
    step = max(1, RANDOM_CHUNK // num_experts)
    gram = torch.zeros(num_experts, num_experts, dtype=torch.float64)
    for start in range(0, numel, step):
        draw = torch.randn(num_experts, min(step, numel - start), generator=generator, device=device).double()
        gram += (draw @ draw.T).cpu()
    return _cosine(gram)


@dataclass(frozen=True)
class MatrixSimilarity:
    """One weight matrix of every expert: its cosine similarity across experts, and a random-init baseline."""

    name: str  # gate_proj, up_proj, down_proj, or the stored name
    shape: tuple[int, ...]  # one expert's matrix
    similarity: np.ndarray  # [E, E]
    random: np.ndarray  # [E, E], random_similarity of the same shape


@torch.no_grad()
def matrix_similarities(experts: nn.Module, num_experts: int, seed: int = 0) -> list[MatrixSimilarity]:
    """Closer Look §4.1 per matrix (gate, up, down where the experts have them), each beside random matrices of
    its shape (seed + the matrix's index), drawn on the weights' device."""
    per_expert = [expert_matrices(experts, e, num_experts) for e in range(num_experts)]
    found = []
    for index, named in enumerate(zip(*per_expert, strict=True)):
        name, first = named[0]
        device = "cpu" if first.device.type == "meta" else str(first.device)
        real = _cosine(_gram([[matrix for _, matrix in named]], num_experts))
        baseline = random_similarity(tuple(first.shape), num_experts, seed + index, device)
        found.append(MatrixSimilarity(name, tuple(first.shape), real, baseline))
    return found


def _require_experts_call(model: nn.Module) -> None:
    """Running one expert on given tokens needs the common experts(hidden [T, H], index, weights) call."""
    if adapter_of(model).choice not in EXPERTS_CALL_CHOICES:
        raise ExpertsCallUnsupported(
            f"{model.config.model_type}: its experts are not called as experts(hidden, index, weights)"
        )


class _InputSeen(Exception):
    """Raised by the hook once the block's experts input is read: nothing after that layer needs to run."""


@torch.inference_mode()
def experts_input(
    model: nn.Module, tokenizer: Any, texts: Sequence[str], block: MoeBlock, max_tokens: int | None = None
) -> torch.Tensor:
    """[tokens, H] the hidden states `block`'s experts receive for `texts`, padding rows dropped.

    The pass stops at that block (the layers after it are never run), so reading layer 0's input costs one
    embedding and one attention, not a whole forward. Texts are cut as trace() cuts them: to the context, or to
    `max_tokens` (a trace made with max_tokens).
    """
    _require_experts_call(model)
    limits = [limit for limit in (max_tokens, context_length(model)) if limit]
    _, batch, _ = tokenize(tokenizer, list(texts), min(limits) if limits else None)
    seen: list[torch.Tensor] = []

    def keep(_module: nn.Module, args: tuple[Any, ...], _kwargs: dict[str, Any]) -> None:
        seen.append(args[0])
        raise _InputSeen

    with contextlib.suppress(_InputSeen), hooks_active([(block.experts, "pre", keep)]):
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
    adapter = adapter_of(model)
    return getattr(model.config, adapter.computed_experts) if adapter.computed_experts else num_classes


def moe_block(model: nn.Module, layer_row: int) -> MoeBlock:
    """The MoE block at row `layer_row` of a trace of this model."""
    return find_moe_blocks(model, model.config.model_type)[0][layer_row]


@dataclass(frozen=True)
class ExpertStudy:
    """A Closer Look at one layer: the router's preference for large outputs, and the experts' weight similarity,
    all weights at once ([E, E]) and per matrix beside a random-init baseline (matrix_similarity_frame)."""

    preference: pd.DataFrame
    similarity: np.ndarray
    matrices: pd.DataFrame


def expert_study(model: nn.Module, tokenizer: Any, routing: RoutingTrace, layer_row: int) -> ExpertStudy:
    """A Closer Look (arXiv 2406.18219) on the model itself at one layer of `routing`: the layer's experts input
    (a pass that stops at that layer), every real expert run on every token, and the weight similarities."""
    from moe_core.analyses.experts import matrix_similarity_frame, norm_preference

    block = moe_block(model, layer_row)
    num_weighted = computed_experts(model, routing.model.num_experts)  # zero-computation classes left out
    with forward_lock(model):  # the expert weights are read here, and the ablation proof zeroes them in place
        longest = int(np.bincount(routing.tokens.sequence).max())  # every text cut to the trace's own length
        hidden = experts_input(model, tokenizer, routing.texts, block, longest)
        if len(hidden) != len(routing.tokens):
            raise ValueError(f"the model reads {len(hidden)} tokens where the trace has {len(routing.tokens)}: "
                             "was the trace made with another tokenizer?")  # fmt: skip
        norms = output_norms(model, block, hidden, num_weighted, routing.model.top_k)
        similarity = weight_similarity(block.experts, num_weighted)
        matrices = matrix_similarities(block.experts, num_weighted)
    return ExpertStudy(norm_preference(routing, layer_row, norms), similarity, matrix_similarity_frame(matrices))
