"""Proof that capture is exact: compare captured experts with ablation ground truth on tiny models.

Ground truth for one MoE block: replay its recorded input with one routed expert's weights zeroed at a
time; the tokens whose output changes (by any amount) are exactly the tokens that expert served. Run for every family
in `moe_core.proof.tiny_models` by `python -m moe_core architectures` and by tests/architectures.
"""

from __future__ import annotations

import contextlib
import functools
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from moe_core.capture.hooks import Hook, forward_lock, hooks_active
from moe_core.capture.record import forward_text, tokenize_texts, trace
from moe_core.capture.routers import MoeBlock, adapter_of, find_moe_blocks
from moe_core.capture.tokens import tokenize
from moe_core.experts import computed_experts, expert_weights
from moe_core.proof.tiny_models import NOT_COVERED, all_families, build_tiny_model, family_spec
from moe_core.traces.types import DROPPED, RoutingTrace

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
    probs_match: bool | None  # weights follow the captured probs; None where that cannot be told
    detail: str
    capped: str = ""  # verify_capped: the capacity-bound forward's verdict on this family


@contextlib.contextmanager
def recording_block_inputs(blocks: Sequence[MoeBlock]) -> Iterator[list[list[tuple[tuple, dict]]]]:
    """Keep each block's call arguments (this thread's passes only) so the block can be replayed in isolation."""
    calls: list[list[tuple[tuple, dict]]] = [[] for _ in blocks]
    hooks: list[Hook] = []
    for block, store in zip(blocks, calls, strict=True):

        def keep(_module: nn.Module, args: tuple, kwargs: dict, store: list = store) -> None:
            store.append((tuple(a.clone() if torch.is_tensor(a) else a for a in args), dict(kwargs)))

        hooks.append((block.block, "pre", keep))
    with hooks_active(hooks):
        yield calls


def _output_rows(output: Any) -> torch.Tensor:
    tensor = output[0] if isinstance(output, tuple | list) else output
    return tensor.reshape(-1, tensor.shape[-1])


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


class _Zero(nn.Module):
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden)


@contextlib.contextmanager
def module_zeroed(owner: nn.Module, attribute: str) -> Iterator[None]:
    """Temporarily replace a weightless module (LongCat's identity expert) with one that outputs zeros."""
    original = getattr(owner, attribute)
    setattr(owner, attribute, _Zero())
    try:
        yield
    finally:
        setattr(owner, attribute, original)


@dataclass(frozen=True)
class ExpertClasses:
    """How a router's classes map to what the proof can ablate: the first `computed` are real experts, one
    column each; the rest are zero-computation, ablated as one column when `zero_module` names their module."""

    computed: int
    zero_module: str = ""

    @classmethod
    def of(cls, model: nn.Module, num_classes: int) -> ExpertClasses:
        return cls(computed_experts(model, num_classes), adapter_of(model).zero_expert_module)


@torch.inference_mode()
def ablation_experts(block: MoeBlock, call: tuple[tuple, dict], classes: ExpertClasses) -> np.ndarray:
    """[rows, columns] bool: which experts really served each row of the block's input (see ExpertClasses).

    Any change counts, to the last bit: an ablation changes no shapes and no routing, so the rows an expert
    does not serve run the very same operations and come out bit-identical, while a served row with a tiny
    weight may change by only a few ulps (LongCat, beside its large identity-expert terms).
    """
    args, kwargs = call
    full = _output_rows(block.block(*args, **kwargs))
    ablations = [functools.partial(expert_zeroed, block.experts, e, classes.computed) for e in range(classes.computed)]
    if classes.zero_module:
        ablations.append(functools.partial(module_zeroed, block.experts, classes.zero_module))
    served = []
    for ablation in ablations:
        with ablation():
            ablated = _output_rows(block.block(*args, **kwargs))
        served.append((ablated != full).any(dim=-1).cpu().numpy())
    return np.stack(served, axis=1)


def captured_sets(routing: RoutingTrace, layer: int, classes: ExpertClasses | None = None) -> np.ndarray:
    """[T, columns] bool: the experts in each token's captured top-k at one MoE layer, in ablation's columns.

    Dropped slots are excluded; zero-computation classes fold into one column, or none without their module.
    """
    chosen = np.zeros((len(routing.tokens), routing.model.num_experts), dtype=bool)
    experts = routing.experts[layer]
    rows, ranks = np.nonzero(experts != DROPPED)
    chosen[rows, experts[rows, ranks]] = True
    if classes is None:
        return chosen
    folded = [chosen[:, : classes.computed]]
    if classes.zero_module:
        folded.append(chosen[:, classes.computed :].any(axis=1, keepdims=True))
    return np.concatenate(folded, axis=1)


def too_uniform(served: np.ndarray) -> str:
    """Why a [T, E] served matrix proves little, or "" if it proves enough.

    Agreement with ablation only means something when routing varies: if every token went to the same few
    experts, a capture that ignored the router could still agree. Require at least half the experts to serve
    some token and no expert to serve every token.
    """
    num_tokens, num_experts = served.shape
    used = int(served.any(axis=0).sum())
    if used * 2 < num_experts:
        return f"routing too uniform to prove anything: {used} of {num_experts} experts serve any token"
    if num_tokens > 1 and served.all(axis=0).any():
        return "routing too uniform to prove anything: one expert serves every token"
    return ""


def kept_rows(routing: RoutingTrace) -> np.ndarray:
    """Indices of real (unpadded) tokens in the flattened, right-padded batch."""
    width = int(routing.tokens.position.max()) + 1
    return routing.tokens.sequence * width + routing.tokens.position


@dataclass(frozen=True)
class LayerVerdict:
    """One MoE layer's proof: captured experts equal ablation's, and the routing varied enough to mean it."""

    layer: int  # the model's layer index
    passed: bool
    detail: str  # why not, "" when passed


@dataclass(frozen=True)
class ModelVerdict:
    """The ablation proof on one loaded model: per layer, and the model-wide checks."""

    layers: tuple[LayerVerdict, ...]
    num_experts: int
    top_k: int
    logits_match: bool | None
    probs_match: bool | None
    notes: tuple[str, ...]  # the trace's notes (generic capture says how it read the choice)

    @property
    def problems(self) -> list[str]:
        found = [f"layer {v.layer}: {v.detail}" for v in self.layers if not v.passed]
        if self.logits_match is False:
            found.append("router logits differ from output_router_logits")
        if self.probs_match is False:
            found.append("weights do not follow the captured probs: wrong scoring in the adapter table?")
        return found

    @property
    def passed(self) -> bool:
        return bool(self.layers) and not self.problems

    @property
    def detail(self) -> str:
        return "; ".join(self.problems)


def _layer_verdict(truth: np.ndarray, captured: np.ndarray, layer: int) -> LayerVerdict:
    if not np.array_equal(truth, captured):
        wrong = int((truth != captured).any(axis=1).sum())
        return LayerVerdict(layer, False, f"{wrong}/{len(truth)} tokens differ")
    weak = too_uniform(truth)
    return LayerVerdict(layer, not weak, weak)


def verify_model(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str] = VERIFY_TEXTS,
    *,
    max_layers: int | None = None,
    name: str | None = None,
) -> ModelVerdict:
    """Trace `texts` once and prove the first `max_layers` MoE layers (all: None) against ablation.

    Cost: one forward, then per proven layer one replay of that block per routed expert (E + 1 block calls).
    Holds the model's forward lock throughout: the ablations zero expert weights in place, which a visitor's pass
    on a shared model must never see.
    """
    from moe_core.capture.generic import WEIGHTS_RECOMPUTED_NOTE

    blocks, _ = find_moe_blocks(model, model.config.model_type)
    proven = blocks[:max_layers] if max_layers else blocks
    with forward_lock(model):
        with recording_block_inputs(proven) as calls:
            routing = trace(model, tokenizer, texts, name=name)
        rows = kept_rows(routing)
        classes = ExpertClasses.of(model, routing.model.num_experts)
        verdicts = tuple(
            _layer_verdict(ablation_experts(block, block_calls[0], classes)[rows], captured_sets(routing, row, classes),
                           block.layer)
            for row, (block, block_calls) in enumerate(zip(proven, calls, strict=True))
        )  # fmt: skip
        logits_match = compare_with_router_logits(model, tokenizer, routing, rows)
    follows = adapter_of(model).weights_follow_probs
    follows = follows and WEIGHTS_RECOMPUTED_NOTE not in routing.model.notes  # recomputed weights prove nothing
    return ModelVerdict(
        verdicts,
        routing.model.num_experts,
        routing.model.top_k,
        logits_match,
        weights_follow_probs(routing) if follows else None,
        routing.model.notes,
    )


def verify_family(family: str, tokenizer: Any) -> FamilyResult:
    """Build the tiny model of `family`, trace two texts and check every layer against ablation."""
    verdict = verify_model(build_tiny_model(family), tokenizer, VERIFY_TEXTS, name=f"tiny-{family}")
    return FamilyResult(
        family,
        verdict.passed,
        len(verdict.layers),
        verdict.num_experts,
        verdict.top_k,
        verdict.logits_match,
        verdict.probs_match,
        verdict.detail,
        verify_capped(family, tokenizer),
    )


def weights_follow_probs(routing: RoutingTrace) -> bool | None:
    """Within each token, is w_i / w_j = p_i / p_j for its chosen experts' weights w and captured probs p?

    Renormalising, a routed scaling factor and a softmax over the chosen logits all keep that ratio, so it
    holds for softmax and sigmoid routers alike, but only if probs use the model's own scoring: softmax
    probs of a sigmoid router break it. None where no token has two weighted experts (top-1).
    """
    chosen = (routing.experts != DROPPED) & (routing.weights > 0)
    rows = chosen.sum(axis=-1) >= 2
    if not rows.any():
        return None
    picked = np.take_along_axis(routing.probs, np.maximum(routing.experts, 0), axis=-1)
    weights, probs = np.where(chosen, routing.weights, 0.0)[rows], np.where(chosen, picked, 0.0)[rows]
    shares = weights / weights.sum(axis=-1, keepdims=True), probs / probs.sum(axis=-1, keepdims=True)
    return bool(np.allclose(*shares, rtol=1e-4, atol=1e-5))


@torch.inference_mode()
def compare_with_router_logits(
    model: nn.Module, tokenizer: Any, routing: RoutingTrace, rows: np.ndarray
) -> bool | None:
    """Do the captured logits equal what the model returns with output_router_logits=True?"""
    _, batch, _ = tokenize(tokenizer, routing.texts, None)
    try:
        returned = getattr(forward_text(model, batch, output_router_logits=True), "router_logits", None)
    except TypeError:
        return None
    if not returned:
        return None
    returned_layers = [(r[0] if isinstance(r, tuple | list) else r) for r in returned]
    returned_logits = [layer.reshape(-1, layer.shape[-1]).float().numpy()[rows] for layer in returned_layers]
    captured_logits = list(routing.logits)
    adapter = adapter_of(model)
    if len(returned_logits) != len(captured_logits) and not (adapter.untraced or adapter.extra_routers):
        return False  # a router the trace missed, or one it invented
    # Usually the two lists pair up one to one. Where the adapter says why they cannot (JetMoE returns its
    # untraced attention-head routers; DeepSeek-V4 leaves out its hash routers), the shorter list must still
    # match, entry by entry and in order, a subsequence of the longer.
    shorter, longer = sorted((returned_logits, captured_logits), key=len)
    candidates = iter(longer)
    return all(any(a.shape == b.shape and np.allclose(a, b, atol=1e-5, rtol=1e-4) for b in candidates) for a in shorter)


def verify_capped(family: str, tokenizer: Any) -> str:
    """The capacity-bound forward on the family's tiny model: "pass", "n/a: <why>" or "FAIL: <what>".

    Pass means both directions hold: with capacity to spare (CF 64, position) the logits equal the plain
    pass's, and at CF 0.25 slots are dropped and the logits move.
    """
    from moe_core.capacity.forward import decide, lm_forward, run_capped, unsupported_reason

    model = build_tiny_model(family)
    reason = unsupported_reason(model)
    if reason:
        return f"n/a: {reason.split(': ', 2)[-1]}"
    tokenized = tokenize_texts(model, tokenizer, VERIFY_TEXTS)
    real = tokenized.batch["attention_mask"].bool()
    with torch.inference_mode():
        plain = lm_forward(model, tokenized.batch)[real]
        roomy, _ = run_capped(model, tokenized, functools.partial(decide, capacity_factor=64.0, policy="position"))
        tight, layers = run_capped(model, tokenized, functools.partial(decide, capacity_factor=0.25, policy="position"))
    if not torch.allclose(roomy[real], plain, rtol=0, atol=1e-6):
        return "FAIL: with nothing dropped the logits differ from the plain pass"
    dropped = sum(int((~layer.kept & (layer.experts != DROPPED)).sum()) for layer in layers)
    if dropped == 0 or torch.equal(tight[real], plain):
        return "FAIL: at CF 0.25 nothing was dropped or the logits did not move"
    return "pass"


def verify_all(
    tokenizer: Any,
    families: Sequence[str] | None = None,
    on_result: Callable[[int, int, FamilyResult, float], None] | None = None,
) -> list[FamilyResult]:
    """Every family's row; `on_result(done, total, row, seconds)` after each (the whole run takes minutes)."""
    results = []
    chosen = list(families or all_families())
    for family in chosen:
        started = time.perf_counter()
        try:
            results.append(verify_family(family, tokenizer))
        except Exception as error:  # a failing family is a row in the table, not a crash
            last = traceback.format_exception_only(error)[-1].strip()
            results.append(FamilyResult(family, False, 0, 0, 0, None, None, last[:200]))
        if on_result is not None:
            on_result(len(results), len(chosen), results[-1], time.perf_counter() - started)
    return results


def support_table(results: Sequence[FamilyResult]) -> str:
    """The README's supported-architectures table, in Markdown, with the families not covered and why."""
    lines = [
        "| family | capture = ablation | logits = output_router_logits | weights follow probs | capacity-bound forward "
        "| MoE layers | E | k | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        logits, probs = ({True: "yes", False: "NO", None: "n/a"}[match] for match in (r.logits_match, r.probs_match))
        note = r.detail or family_spec(r.family).note
        verdict = "pass" if r.passed else "FAIL"
        lines.append(
            f"| {r.family} | {verdict} | {logits} | {probs} | {r.capped or 'n/a'} | {r.layers} | {r.num_experts} "
            f"| {r.top_k} | {note} |"
        )
    for families, reason in NOT_COVERED.items():
        lines.append(f"| {families} | not covered | | | | | | | {reason} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class RemoteCodeRow:
    """One remote-code model in the README's table: its folder name, model_type, verdict and how it routes."""

    name: str
    model_type: str
    verdict: ModelVerdict
    moe_layers: int
    note: str


def remote_code_table(rows: Sequence[RemoteCodeRow]) -> str:
    """The README's remote-code table, in Markdown: models with no adapter, proven by `verify` on generic capture."""
    lines = [
        "| model (look-alike) | model_type | capture = ablation (verify) | weights follow probs | MoE layers | E | k "
        "| routing |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        verdict = row.verdict
        probs = {True: "yes", False: "NO", None: "n/a"}[verdict.probs_match]
        passed = "pass" if verdict.passed else f"FAIL: {verdict.detail}"
        lines.append(
            f"| {row.name} | {row.model_type} | {passed} | {probs} | {row.moe_layers} | {verdict.num_experts} "
            f"| {verdict.top_k} | {row.note} |"
        )
    return "\n".join(lines)
