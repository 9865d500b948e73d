"""The model run capacity-bound, and what its drops cost: a counterfactual forward pass.

The static simulation (moe_core.capacity.simulate) drops slots on the routing of an uncapped pass, layer by layer. Here
every MoE layer enforces capacity inside the pass, as GShard, Switch and OpenMoE do: at each layer, in order,
the router scores the hidden state it actually receives, the layer's slots are served by the policy, and a
dropped slot's combine weight becomes zero. The kept weights are not renormalised, so a token that loses every
slot passes through the residual (and any shared expert) only. Drops at layer L therefore change the routing
at layer L+1, and comparing the next-token predictions with the plain pass says what the drops cost.

Mechanics: a pre-hook on each routed-experts module rewrites the (index, weights) the model hands its experts.
That works for every family whose experts are called as experts(hidden, index [T, k], weights [T, k]) and for
Switch's one-hot call; `unsupported_reason` says in one sentence why any other family cannot be run. Hooks act
only on the caller's own pass (moe_core.capture.hooks). Capacity is decided on the CPU by the one rule the static
simulation uses (capacity.kept_slots / expert_choice): one small copy per layer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from moe_core.capacity.simulate import (
    EXPERT_CHOICE,
    FORWARD_GROUPS,
    FORWARD_POLICIES,
    SERVING_ORDERS,
    _check_min_capacity,
    _group_capacities,
    check_capacity_factor,
    check_group,
    expert_choice,
    kept_slots,
    top1_probability,
)
from moe_core.capture.hooks import Hook, forward_lock, hooks_active
from moe_core.capture.record import (
    CHOICE_READERS,
    INDEX_NAMES,
    WEIGHT_NAMES,
    TokenizedBatch,
    _first_tensor,
    experts_call_tensors,
    tokenize_texts,
    trace_batch,
)
from moe_core.capture.routers import SCORINGS, MoeBlock, adapter_of, find_moe_blocks
from moe_core.traces.types import DROPPED, ModelInfo, RoutingTrace, Tokens, rank_slots

CAPPABLE_CHOICES = ("experts_call", "one_hot_call")  # the experts' call the hook can rewrite


class CappedUnsupported(ValueError):
    """The family's experts are not called in a way the capacity-bound forward can rewrite."""


def unsupported_reason(model: nn.Module) -> str:
    """Empty when the capacity-bound forward applies to `model`, else one sentence saying why it cannot."""
    adapter = adapter_of(model)
    if adapter.choice in CAPPABLE_CHOICES:
        return ""
    why = {
        "dense_scores": "its router's dense scores scale each expert's input, so there is no slot weight to drop",
        "sorted_groups": "its router hands the experts pre-sorted groups rather than per-token slots",
        "skip_call": "its skip class shares expert 0's slots, so capacity cannot be counted per expert",
    }.get(adapter.choice, "its experts are not called as experts(hidden, index, weights)")
    return f"{model.config.model_type}: the capacity-bound forward cannot run on this family: {why}."


@dataclass(frozen=True)
class CappedLayer:
    """What the capacity-bound pass did at one MoE layer (real tokens only, in trace order).

    experts [T, m]: the experts each token was routed to in this pass (m = k, or the most experts any token got
    under expert-choice; DROPPED pads shorter rows and marks the model's own drops); kept [T, m]: the slot ran.
    """

    layer: int
    capacity: np.ndarray  # [G] slots per expert in each group
    experts: np.ndarray
    kept: np.ndarray
    logits: np.ndarray  # [T, E] the router's logits on the hidden state it received in this pass


@dataclass(frozen=True)
class Counterfactual:
    """The plain and the capacity-bound pass of the same texts, and the cost of the drops per token.

    Per-token arrays are [T] in trace order and NaN (loss, kl) or -1 (top1_changed) at each sequence's last
    token, which has no next token to predict.
    """

    capacity_factor: float
    policy: str
    group: str
    top_k: int  # k of the capacity-bound pass (the model's own unless a what-if asked for another)
    min_capacity: int
    plain: RoutingTrace  # routing of the plain pass
    layers: tuple[CappedLayer, ...]
    plain_loss: np.ndarray  # nats predicting the next token
    capped_loss: np.ndarray
    kl: np.ndarray  # KL(plain ‖ capped) of the next-token distributions, nats
    top1_changed: np.ndarray  # 1 changed, 0 same, -1 undefined

    @property
    def model(self) -> ModelInfo:
        return self.plain.model

    @property
    def tokens(self) -> Tokens:
        return self.plain.tokens

    @property
    def delta_loss(self) -> np.ndarray:
        return self.capped_loss - self.plain_loss

    @property
    def dropped_slot_rate(self) -> float:
        """Dropped / assigned slots over all layers (the model's own drops, DROPPED, are not assignments)."""
        assigned = sum(int((layer.experts != DROPPED).sum()) for layer in self.layers)
        kept = sum(int((layer.kept & (layer.experts != DROPPED)).sum()) for layer in self.layers)
        return (assigned - kept) / assigned if assigned else float("nan")

    @property
    def fully_dropped_token_rate(self) -> float:
        """Share of (layer, token) pairs where the token got no expert at all."""
        lost = [~layer.kept.any(axis=1) for layer in self.layers]
        return float(np.mean(np.concatenate(lost))) if lost else float("nan")

    def routing_kept_by_layer(self) -> np.ndarray:
        """[L] share of tokens whose set of routed experts (before the capacity mask) is the plain pass's at each
        layer: 1 at the first layer, less after it once drops have changed the hidden states (the cascade)."""
        shares = []
        for row, layer in enumerate(self.layers):
            plain = np.sort(self.plain.experts[row], axis=-1)
            routed = np.sort(layer.experts, axis=-1)
            shares.append(float((plain == routed).all(axis=-1).mean()) if plain.shape == routed.shape else np.nan)
        return np.asarray(shares)

    @property
    def mean_experts_per_token(self) -> float:
        """Experts that served each (layer, token), on average: k minus drops; any number under expert-choice."""
        served = [(layer.kept & (layer.experts != DROPPED)).sum(axis=1) for layer in self.layers]
        return float(np.mean(np.concatenate(served))) if served else float("nan")

    @property
    def mean_delta_loss(self) -> float:
        return float(np.nanmean(self.delta_loss)) if np.isfinite(self.delta_loss).any() else float("nan")


# ---------------------------------------------------------------------------------------------------------------
# The decision at one layer: pure numpy, so each policy has a hand-checkable test.


@dataclass(frozen=True)
class LayerInput:
    """One layer's routing as the pass hands it to the experts (real tokens only)."""

    experts: np.ndarray  # [T, k] the router's choice (DROPPED where the model dropped a slot itself)
    weights: np.ndarray  # [T, k] its combine weights
    probs: np.ndarray  # [T, E] the router's own scores (softmax, sigmoid, ...) before any renormalisation
    group_index: np.ndarray  # [T]
    group_sizes: np.ndarray  # [G]


@dataclass(frozen=True)
class LayerDecision:
    experts: np.ndarray  # [T, m]: what the experts are handed (DROPPED: no expert in that slot)
    weights: np.ndarray  # [T, m]: combine weights, zero where dropped (never renormalised)
    kept: np.ndarray  # [T, m]
    capacity: np.ndarray  # [G]


def decide(routed: LayerInput, capacity_factor: float, policy: str, min_capacity: int = 1) -> LayerDecision:
    """Apply capacity to one layer's slots. `position`/`score`: serve ranks in order, tokens in the policy's
    order, a slot past its expert's C is dropped. `expert-choice`: each expert takes its C most probable tokens;
    a token's weight for an expert that took it is its router probability for that expert."""
    num_tokens, top_k = routed.experts.shape
    num_experts = routed.probs.shape[1]
    capacity = _group_capacities(capacity_factor, top_k, routed.group_sizes, num_experts, min_capacity)
    if policy == EXPERT_CHOICE:
        taken = expert_choice(routed.probs, routed.group_index, capacity)
        width = max(1, int(taken.sum(axis=1).max(initial=0)))
        experts = np.full((num_tokens, width), DROPPED, dtype=np.int64)
        weights = np.zeros((num_tokens, width), dtype=np.float64)
        rows, columns = np.nonzero(taken)  # row-major: each token's experts in ascending order
        slot = np.arange(len(rows)) - np.searchsorted(rows, rows)  # place of each (row, expert) within its row
        experts[rows, slot] = columns
        weights[rows, slot] = routed.probs[rows, columns]
        return LayerDecision(experts, weights, experts != DROPPED, capacity)
    order = SERVING_ORDERS[policy](top1_probability(routed.probs[None]))
    kept, _ = kept_slots(routed.experts[None], order, routed.group_index, capacity, num_experts)
    kept = kept[0]
    return LayerDecision(routed.experts, np.where(kept, routed.weights, 0.0), kept, capacity)


def top_k_what_if(plain: RoutingTrace) -> Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]] | None:
    """How this model would route with k' experts, or None where its own routing does not say.

    Only where the model's own choice on this text *is* top-k of its probabilities (no bias, no group limit),
    and its weights are either renormalised (sum to 1) or the chosen probabilities times one factor: then
    top-k' of the same probabilities, weighted by the same rule, is what the router would do.
    """
    experts, weights, probs = plain.experts, plain.weights, plain.probs
    k = experts.shape[-1]
    if (experts == DROPPED).any():
        return None
    top = np.argsort(-probs, axis=-1, kind="stable")[..., :k]
    if not np.array_equal(np.sort(top, axis=-1), np.sort(experts, axis=-1)):
        return None
    chosen = np.take_along_axis(probs, experts, axis=-1)
    if np.allclose(weights.sum(axis=-1), 1.0, atol=1e-4) and k < probs.shape[-1]:
        rule = "renormalise"
    else:
        ratio = weights / np.maximum(chosen, 1e-12)
        if not np.allclose(ratio, ratio.flat[0], rtol=1e-3):
            return None
        rule, factor = "scale", float(ratio.flat[0])

    def route(layer_probs: np.ndarray, new_k: int) -> tuple[np.ndarray, np.ndarray]:
        index = np.argsort(-layer_probs, axis=-1, kind="stable")[:, :new_k]
        picked = np.take_along_axis(layer_probs, index, axis=-1)
        if rule == "renormalise":
            return index, picked / picked.sum(axis=-1, keepdims=True)
        return index, picked * factor

    return route


# ---------------------------------------------------------------------------------------------------------------
# The hook that rewrites what the experts are handed.

Rule = Callable[[LayerInput], LayerDecision]  # one layer's routing -> what its experts are handed
RouteK = tuple[Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]], int]  # (top-k' routing, k')


def _write_call(
    args: tuple[Any, ...], kwargs: dict[str, Any], index: torch.Tensor, weights: torch.Tensor
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The same call with index and weights replaced, each where it was passed (positionally or by name)."""
    args, kwargs = list(args), dict(kwargs)
    for value, names, position in ((index, INDEX_NAMES, 1), (weights, WEIGHT_NAMES, 2)):
        name = next((n for n in names if n in kwargs), None)
        if name is not None:
            kwargs[name] = value
        else:
            args[position] = value
    return tuple(args), kwargs


@dataclass
class _PassState:
    """Per pass: which rows of the flattened batch are real tokens, and their groups."""

    real: torch.Tensor  # [B·S] bool
    group_index: np.ndarray
    group_sizes: np.ndarray


def _capping_hooks(
    blocks: Sequence[MoeBlock],
    logits_index: int,
    scoring: str,
    choice: str,
    state: _PassState,
    rule: Rule,
    route_k: RouteK | None,
    out: list[CappedLayer],
) -> list[Hook]:
    """`choice` is a key of capture.CHOICE_READERS (one of CAPPABLE_CHOICES): how the experts' call is read."""
    read_choice, one_hot = CHOICE_READERS[choice][1], choice == "one_hot_call"
    hooks: list[Hook] = []
    for block in blocks:
        seen: dict[str, torch.Tensor] = {}

        def after_router(_module: nn.Module, _inputs: Any, output: Any, seen: dict = seen) -> None:
            logits = _first_tensor(output, logits_index)
            seen["logits"] = logits.reshape(-1, logits.shape[-1])

        def before_experts(
            _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], seen: dict = seen,
            block: MoeBlock = block,
        ) -> tuple[tuple[Any, ...], dict[str, Any]]:  # fmt: skip
            index, weights = experts_call_tensors(args, kwargs)
            device, dtype = weights.device, weights.dtype
            real = state.real.to(index.device)
            logits = seen.pop("logits").float()
            probs = SCORINGS[scoring](logits)[real.to(logits.device)].cpu().numpy().astype(np.float64)
            chosen, flat_weights = read_choice(block, args, kwargs)  # capture's reader: Switch drops read as DROPPED
            chosen_np = chosen[real].cpu().numpy().astype(np.int64)
            weights_np = flat_weights[real].float().cpu().numpy().astype(np.float64)
            if route_k is not None:
                route, new_k = route_k
                chosen_np, weights_np = route(probs, new_k)
            chosen_np, weights_np = rank_slots(chosen_np, weights_np)  # rank order, as the trace has it
            routed = LayerInput(chosen_np, weights_np, probs, state.group_index, state.group_sizes)
            decision = rule(routed)
            out.append(
                CappedLayer(block.layer, decision.capacity, decision.experts, decision.kept, logits[real].cpu().numpy())
            )
            return _rewritten(args, kwargs, index, decision, real, one_hot, device, dtype)

        hooks += [(block.router, "forward", after_router), (block.experts, "pre", before_experts)]
    return hooks


def _rewritten(
    args: tuple[Any, ...], kwargs: dict[str, Any], index: torch.Tensor, decision: LayerDecision, real: torch.Tensor,
    one_hot: bool, device: torch.device, dtype: torch.dtype,
) -> tuple[tuple[Any, ...], dict[str, Any]]:  # fmt: skip
    """The experts' call with the decision's index and weights on the real rows. Padding rows keep what the
    model gave them where the slot count is unchanged (so the experts see the very same batch when nothing is
    dropped), and get no expert otherwise."""
    _, weights = experts_call_tensors(args, kwargs)
    rows, width = real.shape[0], decision.experts.shape[1]
    same_width = width == weights.reshape(rows, -1).shape[1]
    kept = torch.from_numpy(decision.kept).to(device)
    new_weights = (
        weights.reshape(rows, -1).clone() if same_width else torch.zeros(rows, width, dtype=dtype, device=device)
    )
    decided = torch.from_numpy(decision.weights).to(device=device, dtype=torch.float32)
    new_weights[real.to(device)] = torch.where(kept, decided, 0.0).to(dtype)
    experts = torch.from_numpy(np.maximum(decision.experts, 0))
    if one_hot:  # a dropped or empty slot is an all-zero one-hot row: no expert runs for it
        mask = torch.nn.functional.one_hot(experts, index.shape[-1]) * torch.from_numpy(decision.kept)[..., None]
        flat = index.reshape(rows, -1, index.shape[-1])
        new_index = flat.clone() if same_width else torch.zeros(rows, width, index.shape[-1], dtype=index.dtype)
        new_index = new_index.to(index.device)
        new_index[real.to(index.device)] = mask.to(device=index.device, dtype=index.dtype)
        return _write_call(args, kwargs, new_index, new_weights.reshape(rows, width))
    flat = index.reshape(rows, -1)
    new_index = flat.clone() if same_width else torch.zeros(rows, width, dtype=index.dtype, device=index.device)
    new_index[real.to(index.device)] = experts.to(device=index.device, dtype=index.dtype)
    if index.dim() > 2:  # some families pass [B, S, k]
        new_index = new_index.reshape(*index.shape[:-1], width)
        new_weights = new_weights.reshape(*index.shape[:-1], width)
    return _write_call(args, kwargs, new_index, new_weights)


def _groups(batch: dict[str, torch.Tensor], group: str) -> _PassState:
    mask = batch["attention_mask"].bool()
    real = mask.reshape(-1)
    lengths = mask.sum(dim=1).cpu().numpy().astype(np.int64)
    if group == "batch":
        return _PassState(real, np.zeros(int(lengths.sum()), dtype=np.int64), np.array([lengths.sum()]))
    return _PassState(real, np.repeat(np.arange(len(lengths)), lengths), lengths)


# ---------------------------------------------------------------------------------------------------------------
# Losses and the whole counterfactual.


def lm_forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, S, V] next-token logits for the batch. An encoder-decoder model's decoder is fed the text itself
    (teacher forcing), so its logits at position t predict token t + 1 given the encoded text."""
    device = next(model.parameters()).device
    inputs = {key: value.to(device) for key, value in batch.items()}
    with forward_lock(model):
        if getattr(model.config, "is_encoder_decoder", False):
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            return model(**inputs, decoder_input_ids=ids, decoder_attention_mask=mask, use_cache=False).logits
        return model(**inputs, use_cache=False).logits


def next_token_log_probs(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Per sequence, [length, V] float32 log-probabilities of the next token (real positions only)."""
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    return [logits[row, :length].float().log_softmax(dim=-1).cpu() for row, length in enumerate(lengths)]


def prediction_costs(
    plain: list[torch.Tensor], capped: list[torch.Tensor], batch: dict[str, torch.Tensor]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(plain loss, capped loss, KL(plain ‖ capped), top-1 changed) per real token; undefined at the last token."""
    columns: list[list[np.ndarray]] = [[], [], [], []]
    for row, (p, q) in enumerate(zip(plain, capped, strict=True)):
        length = p.shape[0]
        targets = batch["input_ids"][row, 1:length]
        undefined = np.array([np.nan])
        if length > 1:
            plain_loss = -p[:-1].gather(1, targets[:, None])[:, 0].numpy()
            capped_loss = -q[:-1].gather(1, targets[:, None])[:, 0].numpy()
            kl = (p[:-1].exp() * (p[:-1] - q[:-1])).sum(dim=-1).clamp_min(0).numpy()
            changed = (p[:-1].argmax(dim=-1) != q[:-1].argmax(dim=-1)).numpy().astype(np.int8)
        else:
            plain_loss = capped_loss = kl = np.zeros(0)
            changed = np.zeros(0, dtype=np.int8)
        for column, values, last in zip(
            columns, (plain_loss, capped_loss, kl, changed), (undefined, undefined, undefined, np.array([-1])),
            strict=True,
        ):  # fmt: skip
            column.append(np.concatenate([values.astype(np.float64), last]))
    plain_loss, capped_loss, kl, changed = (np.concatenate(c) for c in columns)
    return plain_loss, capped_loss, kl, changed.astype(np.int8)


def check_settings(capacity_factor: float, policy: str, group: str, min_capacity: int) -> None:
    check_capacity_factor(capacity_factor)
    _check_min_capacity(min_capacity)
    if policy not in FORWARD_POLICIES:
        raise ValueError(f"policy must be one of {', '.join(FORWARD_POLICIES)}; got {policy!r}")
    if group == "steps":
        raise ValueError("the capacity-bound forward runs the text as one prompt, with no decode steps to group "
                         "by: choose the capacity group sequence or batch")  # fmt: skip
    check_group(group, FORWARD_GROUPS)


@torch.inference_mode()
def counterfactual(
    model: nn.Module,
    tokenizer: Any,
    texts: str | Sequence[str],
    capacity_factor: float,
    policy: str = "position",
    group: str = "sequence",
    *,
    top_k: int | None = None,
    min_capacity: int = 1,
    name: str | None = None,
    max_tokens: int | None = None,
) -> Counterfactual:
    """Run `texts` plainly and capacity-bound, and compare the two passes' next-token predictions.

    `top_k` asks what the model would do with k' experts per token (only where its own routing is plain
    top-k of its probabilities; a ValueError says so otherwise). `max_tokens` cuts each text as trace() does.
    """
    check_settings(capacity_factor, policy, group, min_capacity)
    reason = unsupported_reason(model)
    if reason:
        raise CappedUnsupported(reason)
    tokenized = tokenize_texts(model, tokenizer, texts, max_tokens)
    plain, plain_logits = trace_batch(model, tokenized, name=name, forward=lm_forward)
    route_k = _what_if(plain, top_k)
    rule = functools.partial(decide, capacity_factor=capacity_factor, policy=policy, min_capacity=min_capacity)
    capped_logits, layers = run_capped(model, tokenized, rule, group, route_k)
    costs = prediction_costs(
        next_token_log_probs(plain_logits, tokenized.batch), next_token_log_probs(capped_logits, tokenized.batch),
        tokenized.batch,
    )  # fmt: skip
    k = route_k[1] if route_k else plain.model.top_k
    return Counterfactual(capacity_factor, policy, group, k, min_capacity, plain, tuple(layers), *costs)


def _what_if(plain: RoutingTrace, top_k: int | None) -> RouteK | None:
    if top_k is None or top_k == plain.model.top_k:
        return None
    if not 1 <= top_k <= plain.model.num_experts:
        raise ValueError(f"top_k must be between 1 and the number of experts ({plain.model.num_experts}), got {top_k}")
    route = top_k_what_if(plain)
    if route is None:
        raise ValueError(
            f"{plain.model.architecture}: its router does not pick plain top-k of its probabilities on this text "
            "(biases, group limits or its own weighting), so a top-k what-if would not be what it does"
        )
    return route, top_k


def run_capped(
    model: nn.Module, tokenized: TokenizedBatch, rule: Rule, group: str = "sequence", route_k: RouteK | None = None
) -> tuple[torch.Tensor, list[CappedLayer]]:
    """One pass in which `rule` decides every MoE layer's slots: ([B, S, V] next-token logits, what each layer
    did, in layer order). `decide` with a capacity setting is the usual rule; tests pass others."""
    blocks, logits_index = find_moe_blocks(model, model.config.model_type)
    adapter = adapter_of(model)
    layers: list[CappedLayer] = []
    state = _groups(tokenized.batch, group)
    hooks = _capping_hooks(blocks, logits_index, adapter.scoring, adapter.choice, state, rule, route_k, layers)
    with hooks_active(hooks):
        logits = lm_forward(model, tokenized.batch)
    if len(layers) != len(blocks):
        raise RuntimeError(f"expected one experts call per MoE layer, got {len(layers)} for {len(blocks)} layers")
    return logits, layers
