"""Proof that capture is exact: compare captured experts with ablation ground truth on tiny models.

Ground truth for one MoE block: replay its recorded input with one routed expert's weights zeroed at a
time; the tokens whose output changes are exactly the tokens that expert served. Run for every family
in `moe_core.tiny_models` by `python -m moe_core architectures` and by tests/architectures.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from moe_core.capture import trace
from moe_core.routers import MoeBlock, find_moe_blocks
from moe_core.tiny_models import NOT_COVERED, all_families, build_tiny_model, family_spec
from moe_core.tokens import tokenize
from moe_core.trace import DROPPED, RoutingTrace

VERIFY_TEXTS = (
    "The quick brown fox jumps over the lazy dog, then 12 + 30 = 42.",
    "def add(a, b):\n    return a + b  # Python",
)


@dataclass(frozen=True)
class FamilyResult:
    family: str
    passed: bool
    layers: int
    num_experts: int
    top_k: int
    logits_match: bool | None  # None where the model offers no output_router_logits to compare with
    detail: str


@contextlib.contextmanager
def recording_block_inputs(blocks: Sequence[MoeBlock]) -> Iterator[list[list[tuple[tuple, dict]]]]:
    """Keep each block's call arguments so the block can be replayed in isolation."""
    calls: list[list[tuple[tuple, dict]]] = [[] for _ in blocks]
    handles = []
    try:
        for block, store in zip(blocks, calls, strict=True):

            def keep(_module: nn.Module, args: tuple, kwargs: dict, store: list = store) -> None:
                store.append((tuple(a.clone() if torch.is_tensor(a) else a for a in args), dict(kwargs)))

            handles.append(block.block.register_forward_pre_hook(keep, with_kwargs=True))
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _output_rows(output: Any) -> torch.Tensor:
    tensor = output[0] if isinstance(output, tuple | list) else output
    return tensor.reshape(-1, tensor.shape[-1])


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


@contextlib.contextmanager
def expert_zeroed(experts: nn.Module, expert: int, num_experts: int) -> Iterator[None]:
    """Temporarily zero every weight of one routed expert."""
    with torch.no_grad():
        saved = [(view, view.clone()) for view in expert_weights(experts, expert, num_experts)]
        try:
            for view, _ in saved:
                view.zero_()
            yield
        finally:
            for view, original in saved:
                view.copy_(original)


@torch.inference_mode()
def ablation_experts(block: MoeBlock, call: tuple[tuple, dict], num_experts: int) -> np.ndarray:
    """[rows, E] bool: which experts really served each row of the block's input."""
    args, kwargs = call
    full = _output_rows(block.block(*args, **kwargs))
    scale = full.abs().amax().item() + 1e-12
    served = []
    for expert in range(num_experts):
        with expert_zeroed(block.experts, expert, num_experts):
            ablated = _output_rows(block.block(*args, **kwargs))
        served.append(((ablated - full).abs().amax(dim=-1) > 1e-6 * scale).cpu().numpy())
    return np.stack(served, axis=1)


def captured_sets(routing: RoutingTrace, layer: int) -> np.ndarray:
    """[T, E] bool: experts in the captured top-k of each token at one MoE layer (dropped slots excluded)."""
    chosen = np.zeros((len(routing.tokens), routing.model.num_experts), dtype=bool)
    experts = routing.experts[layer]
    rows, ranks = np.nonzero(experts != DROPPED)
    chosen[rows, experts[rows, ranks]] = True
    return chosen


def _kept_rows(routing: RoutingTrace) -> np.ndarray:
    """Indices of real (unpadded) tokens in the flattened, right-padded batch."""
    width = int(routing.tokens.position.max()) + 1
    return routing.tokens.sequence * width + routing.tokens.position


def verify_family(family: str, tokenizer: Any) -> FamilyResult:
    """Build the tiny model of `family`, trace two texts and check every layer against ablation."""
    model = build_tiny_model(family)
    blocks, _ = find_moe_blocks(model, model.config.model_type)
    with recording_block_inputs(blocks) as calls:
        routing = trace(model, tokenizer, VERIFY_TEXTS, name=f"tiny-{family}")
    rows = _kept_rows(routing)
    mismatches = []
    for layer, (block, block_calls) in enumerate(zip(blocks, calls, strict=True)):
        truth = ablation_experts(block, block_calls[0], routing.model.num_experts)[rows]
        captured = captured_sets(routing, layer)
        if not np.array_equal(truth, captured):
            wrong = int((truth != captured).any(axis=1).sum())
            mismatches.append(f"layer {block.layer}: {wrong}/{len(rows)} tokens differ")
    logits_match = compare_with_router_logits(model, tokenizer, routing, rows)
    passed = not mismatches and logits_match is not False
    detail = "; ".join(mismatches) or (
        "router logits differ from output_router_logits" if logits_match is False else ""
    )
    return FamilyResult(
        family, passed, len(blocks), routing.model.num_experts, routing.model.top_k, logits_match, detail
    )


@torch.inference_mode()
def compare_with_router_logits(
    model: nn.Module, tokenizer: Any, routing: RoutingTrace, rows: np.ndarray
) -> bool | None:
    """Do the captured logits equal what the model returns with output_router_logits=True?"""
    _, inputs, _ = tokenize(tokenizer, routing.texts, None)
    try:
        if getattr(model.config, "is_encoder_decoder", False):
            returned = model.get_encoder()(**inputs, output_router_logits=True).router_logits
        else:
            returned = model(**inputs, output_router_logits=True, use_cache=False).router_logits
    except TypeError:
        return None
    if not returned:
        return None
    layers = [r[0] if isinstance(r, tuple | list) else r for r in returned]
    if len(layers) != len(routing.model.moe_layers):
        return False
    reference = np.stack([layer.reshape(-1, layer.shape[-1]).float().numpy()[rows] for layer in layers])
    return bool(np.allclose(reference, routing.logits, atol=1e-5, rtol=1e-4))


def verify_all(tokenizer: Any, families: Sequence[str] | None = None) -> list[FamilyResult]:
    results = []
    for family in families or all_families():
        try:
            results.append(verify_family(family, tokenizer))
        except Exception as error:  # a failing family is a row in the table, not a crash
            last = traceback.format_exception_only(error)[-1].strip()
            results.append(FamilyResult(family, False, 0, 0, 0, None, last[:200]))
    return results


def support_table(results: Sequence[FamilyResult]) -> str:
    """The README's supported-architectures table, in Markdown, with the families not covered and why."""
    lines = [
        "| family | capture = ablation | logits = output_router_logits | MoE layers | E | k | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        logits = {True: "yes", False: "NO", None: "n/a"}[r.logits_match]
        note = r.detail or family_spec(r.family).note
        verdict = "pass" if r.passed else "FAIL"
        lines.append(f"| {r.family} | {verdict} | {logits} | {r.layers} | {r.num_experts} | {r.top_k} | {note} |")
    for families, reason in NOT_COVERED.items():
        lines.append(f"| {families} | not covered | | | | | {reason} |")
    return "\n".join(lines)
