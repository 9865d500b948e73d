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
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from moe_core.capture.hooks import Hook, hooks_active
from moe_core.capture.routers import SCORINGS, MoeBlock
from moe_core.traces.types import DROPPED

RECOMPUTED_NOTE = (
    "recomputed, not captured: the experts that ran could not be read from this model's experts, so the experts "
    "and weights shown are top-k of the router scores"
)
WEIGHTS_RECOMPUTED_NOTE = (
    "weights recomputed, not captured: the experts that ran are read from the experts' calls, but the model applies "
    "its combine weights where capture cannot see them; the weights shown are the chosen experts' scores"
)
SCORES_RECOMPUTED_NOTE = (
    "router scores recomputed from the router's weight (its output holds only the top-k); the experts and weights "
    "are as consumed"
)
GENERIC_NOTE = "no adapter for this family: MoE layers found by structure, experts read from the experts' own calls"
TOP_K_KEYS = ("num_experts_per_tok", "moe_top_k", "top_k", "num_selected_experts", "moe_k")


@dataclass
class GenericRecord:
    """One block's tensors from one forward pass."""

    inputs: list[torch.Tensor] = field(default_factory=list)  # row_hashes of the block's input [T]
    router_outputs: list[tuple[torch.Tensor, ...]] = field(default_factory=list)
    scores_recomputed: bool = False  # the router returned no [T, E] scores: they were recomputed from its weight
    calls: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (expert, row_hashes of its input) per call
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
            record.inputs.append(row_hashes(_rows(hidden)))

    def after_router(module: nn.Module, args: Any, output: Any) -> None:
        tensors = tuple(t.detach() for t in _tensors(output))
        rows = _hidden_argument(tuple(args), {})
        if rows is not None and _scores_in(tensors, len(_rows(rows)), block.num_experts) is None:
            recomputed = linear_scores(module, _rows(rows), block.num_experts)
            if recomputed is not None:
                tensors, record.scores_recomputed = (*tensors, recomputed), True
        record.router_outputs.append(tensors)

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
                    record.calls.append((number, row_hashes(_rows(hidden))))

            hooks.append((expert, "pre", before_expert))
    else:
        hooks.append((block.experts, "pre", before_fused))
    return hooks


@contextlib.contextmanager
def generic_recording(blocks: Sequence[MoeBlock]) -> Iterator[list[GenericRecord]]:
    """Record each block's input, router output and expert calls for the passes inside the `with` (this thread's
    passes only, through moe_core.capture.hooks)."""
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


def _scores_in(tensors: Sequence[torch.Tensor], num_rows: int, num_experts: int) -> torch.Tensor | None:
    """The first float tensor holding one row of E scores per token ([T, E] or [B, S, E]), if any: per-batch [E]
    statistics (LLaMA-MoE's load and importance) are not scores."""
    return next(
        (
            t
            for t in tensors
            if t.is_floating_point() and t.shape[-1] == num_experts and t.numel() == num_rows * num_experts
        ),
        None,
    )


def linear_scores(router: nn.Module, rows: torch.Tensor, num_experts: int) -> torch.Tensor | None:
    """rows @ W.T (+ b) where the router holds exactly one [E, H] matrix (DeepSeekMoE's MoEGate keeps a bare weight
    and returns only its top-k): the scores it computed and did not return. None for any other router."""
    matrices = [p for p in router.parameters() if p.ndim == 2 and p.shape == (num_experts, rows.shape[-1])]
    if len(matrices) != 1 or any(p.ndim == 2 for p in router.parameters() if p is not matrices[0]):
        return None
    biases = [p for p in router.parameters() if p.ndim == 1 and p.shape == (num_experts,)]
    return torch.nn.functional.linear(rows, matrices[0], biases[0] if len(biases) == 1 else None).detach()


def read_router(tensors: Sequence[torch.Tensor], num_rows: int, num_experts: int) -> RouterOutput:
    """The router's [T, E] scores; an integer [T, k] tensor (k < E) is the index, and a float tensor of the index's
    shape beside it the weights."""
    logits = _scores_in(tensors, num_rows, num_experts)
    if logits is None:
        raise RuntimeError(f"the router's output has no [{num_rows}, {num_experts}] scores, nor one [E, H] matrix")
    index = next(
        (t for t in tensors if not t.is_floating_point() and t.dtype != torch.bool and t.numel() % num_rows == 0
         and 0 < t.numel() // num_rows < num_experts), None
    )  # fmt: skip
    weights = None
    if index is not None:
        weights = next((t for t in tensors if t.is_floating_point() and t.shape == index.shape), None)
    return RouterOutput(
        _rows(logits), None if index is None else _rows(index), None if weights is None else _rows(weights)
    )


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # element size -> integer view
_HASH_SEED = 20240207


@functools.lru_cache(maxsize=16)
def _hash_weights(width: int, device: str) -> torch.Tensor:
    """Odd random int64 weights, one per column; the same for every row, call and pass."""
    generator = torch.Generator().manual_seed(_HASH_SEED + width)
    return (torch.randint(-(2**62), 2**62, (width,), generator=generator) | 1).to(device)


def row_hashes(rows: torch.Tensor) -> torch.Tensor:
    """[n] int64: a hash of each row's exact bits (integer arithmetic, so equal rows give equal hashes whatever the
    batch or device; distinct rows collide with probability ~2^-49). Computed where the rows are, GPU included,
    so capture keeps 8 bytes per row instead of the rows themselves. The row width is folded in: rows of another
    width never match."""
    bits = rows.contiguous().view(_BITS[rows.element_size()]).long()
    return (bits * _hash_weights(bits.shape[-1], str(bits.device))).sum(-1) + bits.shape[-1]


def _rank_among_equal(keys: torch.Tensor) -> torch.Tensor:
    """[n]: how many earlier entries of `keys` are equal to each entry (0 for the first of each value)."""
    ordered, where = keys.sort(stable=True)
    index = torch.arange(len(keys))
    starts = torch.ones(len(keys), dtype=torch.bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    run_start = torch.cummax(torch.where(starts, index, 0), dim=0).values
    rank = torch.empty_like(index)
    rank[where] = index - run_start
    return rank


def served_by_calls(
    inputs: torch.Tensor, calls: Sequence[tuple[int, torch.Tensor]], num_experts: int
) -> np.ndarray | None:
    """[T, E] bool: which experts ran on which rows of the block's input (both as row_hashes), or None where an
    expert's input row is no row of the block's input (the block transforms rows before its experts).

    Rows repeated in the input (the same first token of two texts) are given to an expert in row order.
    """
    keys, order = inputs.cpu().sort(stable=True)
    served = np.zeros((len(keys), num_experts), dtype=bool)
    per_expert: dict[int, list[torch.Tensor]] = {}
    for expert, hashes in calls:
        per_expert.setdefault(expert, []).append(hashes.cpu())
    for expert, parts in per_expert.items():
        wanted = torch.cat(parts)
        position = torch.searchsorted(keys, wanted) + _rank_among_equal(wanted)
        if len(keys) == 0 or (position >= len(keys)).any() or not torch.equal(keys[position], wanted):
            return None
        served[order[position].numpy(), expert] = True
    return served


@dataclass(frozen=True)
class LayerChoice:
    """One layer's consumed choice, and how much of it was read rather than recomputed."""

    logits: torch.Tensor  # [T, E]
    experts: torch.Tensor  # [T, k] long, DROPPED where the model dropped the slot
    weights: torch.Tensor  # [T, k] float
    status: str  # "captured", "weights recomputed" or "recomputed"
    scores_recomputed: bool = False  # the scores come from the router's weight, not its output


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
    if (mask.sum(dim=1) > k).any():  # more experts ran than a token has slots: the choice is in unseen weights
        index, weights = _top_k(router.logits.cpu(), k)
        return LayerChoice(router.logits, index, weights, "recomputed")
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
    return replace(_resolve(model, block, record), scores_recomputed=record.scores_recomputed)


def _resolve(model: nn.Module, block: MoeBlock, record: GenericRecord) -> LayerChoice:
    if len(record.router_outputs) != 1:
        raise RuntimeError(f"expected one router call at layer {block.layer}, got {len(record.router_outputs)}")
    num_rows = len(record.inputs[0]) if record.inputs else _rows(record.router_outputs[0][0]).shape[0]
    router = read_router(record.router_outputs[0], num_rows, block.num_experts)
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
    scores = (SCORES_RECOMPUTED_NOTE,) if any(choice.scores_recomputed for choice in choices) else ()
    return (GENERIC_NOTE, *(note for status, note in STATUS_NOTES.items() if status in statuses), *scores)


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
