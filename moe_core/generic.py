"""Capture for families with no adapter (remote code, hand-built models): read what the experts consumed.

The blocks come from `routers.structural_blocks` (a router scoring E experts beside E experts). During the pass:

- the router's output gives the scores (its first float tensor with E on the last axis) and, where it returns
  them, the top-k (index, weights) pair the block may use;
- a ModuleList of experts shows which expert modules ran on which rows: each expert's input rows are matched,
  bit for bit, to the rows of the block's input;
- a fused experts module called as experts(hidden, index, weights) shows both directly.

A slot the router chose whose expert did not run is DROPPED (the model's own capacity). Where the experts that
ran cannot be read, experts and weights are top-k of the scores, and the trace says so (RECOMPUTED_NOTE): that
is a guess about the model, not a record of it.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from moe_core.hooks import Hook, hooks_active
from moe_core.routers import SCORINGS, MoeBlock
from moe_core.trace import DROPPED

RECOMPUTED_NOTE = (
    "recomputed, not captured: the experts that ran could not be read from this model's experts, so the experts "
    "and weights shown are top-k of the router scores"
)
WEIGHTS_RECOMPUTED_NOTE = (
    "weights recomputed, not captured: the experts that ran are read from the experts' calls, but the model applies "
    "its combine weights where capture cannot see them; the weights shown are the chosen experts' scores"
)
GENERIC_NOTE = "no adapter for this family: MoE layers found by structure, experts read from the experts' own calls"
TOP_K_KEYS = ("num_experts_per_tok", "moe_top_k", "top_k", "num_selected_experts", "moe_k")


@dataclass
class GenericRecord:
    """One block's tensors from one forward pass."""

    inputs: list[torch.Tensor] = field(default_factory=list)  # the block's input rows [T, H]
    router_outputs: list[tuple[torch.Tensor, ...]] = field(default_factory=list)
    calls: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (expert, its input rows) per call
    fused: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (index, weights) as consumed


def _tensors(output: Any) -> tuple[torch.Tensor, ...]:
    """The tensors of a router's output: a tensor, a tuple or list, or a dict (LLaMA-MoE's gate returns one)."""
    items = output.values() if isinstance(output, dict) else output if isinstance(output, tuple | list) else (output,)
    return tuple(item for item in items if torch.is_tensor(item))


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().reshape(-1, tensor.shape[-1])


def _hidden_argument(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    first = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
    return first if torch.is_tensor(first) else None


def _fused_choice(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(index, weights) from experts(hidden, index [.., k] int, weights [.., k] float), in any argument order."""
    tensors = [value for value in (*args[1:], *kwargs.values()) if torch.is_tensor(value)]
    index = next((t for t in tensors if not t.is_floating_point() and t.dtype != torch.bool), None)
    weights = next((t for t in tensors if t.is_floating_point() and index is not None and t.shape == index.shape), None)
    return (_rows(index), _rows(weights)) if weights is not None else None


def _block_hooks(block: MoeBlock, record: GenericRecord) -> list[Hook]:
    """The hooks that fill `record`: block input, router output, and each expert call."""

    def before_block(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = _hidden_argument(args, kwargs)
        if hidden is not None:
            record.inputs.append(_rows(hidden).clone())

    def after_router(_module: nn.Module, _args: Any, output: Any) -> None:
        record.router_outputs.append(tuple(t.detach() for t in _tensors(output)))

    def before_fused(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        choice = _fused_choice(args, kwargs)
        if choice is not None:
            record.fused.append(choice)

    hooks: list[Hook] = [(block.block, "pre", before_block), (block.router, "forward", after_router)]
    if isinstance(block.experts, nn.ModuleList | nn.ModuleDict):
        for number, expert in enumerate(block.experts.children()):

            def before_expert(_m: nn.Module, args: tuple, kwargs: dict, number: int = number) -> None:
                hidden = _hidden_argument(args, kwargs)
                if hidden is not None:
                    record.calls.append((number, _rows(hidden)))

            hooks.append((expert, "pre", before_expert))
    else:
        hooks.append((block.experts, "pre", before_fused))
    return hooks


@contextlib.contextmanager
def generic_recording(blocks: Sequence[MoeBlock]) -> Iterator[list[GenericRecord]]:
    """Record each block's input, router output and expert calls for the passes inside the `with` (this thread's
    passes only, through moe_core.hooks)."""
    records = [GenericRecord() for _ in blocks]
    with hooks_active(
        [hook for block, record in zip(blocks, records, strict=True) for hook in _block_hooks(block, record)]
    ):
        yield records


@dataclass(frozen=True)
class RouterOutput:
    """What a router's output holds: the scores [T, E], and the top-k it returned, where it did."""

    logits: torch.Tensor
    index: torch.Tensor | None
    weights: torch.Tensor | None


def read_router(tensors: Sequence[torch.Tensor], num_experts: int) -> RouterOutput:
    """The first float tensor with E on its last axis is the scores; an integer [.., k] tensor (k < E) is the
    index, and a float tensor of the index's shape beside it the weights."""
    logits = next((t for t in tensors if t.is_floating_point() and t.ndim >= 1 and t.shape[-1] == num_experts), None)
    if logits is None:
        raise RuntimeError(f"the router's output has no tensor with {num_experts} experts on its last axis")
    index = next((t for t in tensors if not t.is_floating_point() and t.ndim >= 1 and t.dtype != torch.bool), None)
    weights = None
    if index is not None:
        weights = next((t for t in tensors if t.is_floating_point() and t.shape == index.shape), None)
    return RouterOutput(
        _rows(logits), None if index is None else _rows(index), None if weights is None else _rows(weights)
    )


def _row_keys(rows: torch.Tensor) -> list[bytes]:
    """Each row's bytes (any dtype, bf16 included): equal rows, equal keys."""
    flat = rows.contiguous().cpu()
    return [row.tobytes() for row in flat.view(torch.uint8).reshape(len(flat), -1).numpy()]


def served_by_calls(
    inputs: torch.Tensor, calls: Sequence[tuple[int, torch.Tensor]], num_experts: int
) -> np.ndarray | None:
    """[T, E] bool: which experts ran on which rows of the block's input, or None where an expert's input row is
    no row of the block's input (the block transforms the rows before its experts: not readable this way).

    Rows repeated in the input (the same first token of two texts) are given to an expert in order.
    """
    where: dict[bytes, list[int]] = defaultdict(list)
    for row, key in enumerate(_row_keys(inputs)):
        where[key].append(row)
    taken: dict[tuple[int, bytes], int] = defaultdict(int)
    served = np.zeros((len(inputs), num_experts), dtype=bool)
    for expert, rows in calls:
        if rows.shape[-1] != inputs.shape[-1]:
            return None
        for key in _row_keys(rows):
            seen = where.get(key, [])
            if taken[expert, key] >= len(seen):
                return None
            served[seen[taken[expert, key]], expert] = True
            taken[expert, key] += 1
    return served


@dataclass(frozen=True)
class LayerChoice:
    """One layer's consumed choice, and how much of it was read rather than recomputed."""

    logits: torch.Tensor  # [T, E]
    experts: torch.Tensor  # [T, k] long, DROPPED where the model dropped the slot
    weights: torch.Tensor  # [T, k] float
    status: str  # "captured", "weights recomputed" or "recomputed"


def _top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    probs = SCORINGS["softmax"](logits)
    weights, index = probs.topk(k, dim=-1)
    return index, weights


def _slots_from_served(router: RouterOutput, served: np.ndarray, k: int) -> LayerChoice:
    """The router's own slots where it returned them (a slot whose expert did not run is DROPPED); else the served
    experts in order of score, with their scores as weights (flagged)."""
    mask = torch.from_numpy(served)
    if router.index is not None and router.index.shape[-1] == k:
        index = router.index.long().cpu()
        chosen = torch.zeros_like(mask)
        rows, ranks = (index >= 0).nonzero(as_tuple=True)
        chosen[rows, index[rows, ranks]] = True
        if not (mask & ~chosen).any():  # every expert that ran is one the router chose
            ran = mask.gather(1, index.clamp_min(0)) & (index >= 0)
            experts = torch.where(ran, index, DROPPED)
            if router.weights is not None:
                return LayerChoice(router.logits, experts, router.weights.float().cpu(), "captured")
            return LayerChoice(router.logits, experts, _scores_at(router.logits, experts), "weights recomputed")
    order = torch.where(mask, router.logits.float().cpu(), -torch.inf).argsort(dim=1, descending=True)[:, :k]
    experts = torch.where(mask.gather(1, order), order, DROPPED)
    return LayerChoice(router.logits, experts, _scores_at(router.logits, experts), "weights recomputed")


def _scores_at(logits: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Softmax scores of the given experts (0 at dropped slots): a stand-in for weights the trace cannot read."""
    picked = SCORINGS["softmax"](logits.cpu()).gather(1, experts.clamp_min(0))
    return torch.where(experts == DROPPED, 0.0, picked)


def top_k_of(model: nn.Module, router: RouterOutput) -> int:
    """k: the router's own top-k width where it returns one, else the config's."""
    if router.index is not None:
        return int(router.index.shape[-1])
    for key in TOP_K_KEYS:
        value = getattr(model.config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1


def resolve(model: nn.Module, block: MoeBlock, record: GenericRecord) -> LayerChoice:
    """The layer's consumed choice from one pass's record (see the module docstring)."""
    if len(record.router_outputs) != 1:
        raise RuntimeError(f"expected one router call at layer {block.layer}, got {len(record.router_outputs)}")
    router = read_router(record.router_outputs[0], block.num_experts)
    k = top_k_of(model, router)
    if record.fused:
        index, weights = record.fused[0]
        return LayerChoice(router.logits, index.long().cpu(), weights.float().cpu(), "captured")
    served = (
        served_by_calls(record.inputs[0], record.calls, block.num_experts) if record.inputs and record.calls else None
    )
    if served is None:
        index, weights = _top_k(router.logits.cpu(), k)
        return LayerChoice(router.logits, index, weights, "recomputed")
    return _slots_from_served(router, served, k)


STATUS_NOTES = {"recomputed": RECOMPUTED_NOTE, "weights recomputed": WEIGHTS_RECOMPUTED_NOTE}


def status_notes(choices: Sequence[LayerChoice]) -> tuple[str, ...]:
    """The notes a reader must see: how the layers were found, and every way some layer was not captured."""
    statuses = {choice.status for choice in choices}
    return (GENERIC_NOTE, *(note for status, note in STATUS_NOTES.items() if status in statuses))


def infer_scoring(logits: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor) -> str:
    """The scoring under which the consumed weights are proportional to the chosen experts' scores.

    [L, T, E] logits, [L, T, k] experts and weights. Scores that are already probabilities (non-negative rows
    summing to 1) are kept as they are; otherwise softmax, unless only sigmoid explains the weights.
    """
    if (logits >= 0).all() and torch.allclose(logits.sum(-1), torch.ones(()), atol=1e-4):
        return "probabilities"
    for scoring in ("softmax", "sigmoid"):
        if _weights_follow(SCORINGS[scoring](logits), experts, weights):
            return scoring
    return "softmax"


def _weights_follow(probs: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor) -> bool:
    chosen = (experts != DROPPED) & (weights > 0)
    rows = chosen.sum(-1) >= 2
    if not rows.any():
        return False
    picked = probs.gather(-1, experts.clamp_min(0))
    w, p = torch.where(chosen, weights, 0.0)[rows], torch.where(chosen, picked, 0.0)[rows]
    return bool(torch.allclose(w / w.sum(-1, keepdim=True), p / p.sum(-1, keepdim=True), rtol=1e-4, atol=1e-5))
