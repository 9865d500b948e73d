"""Synthetic RoutingTraces: valid traces without loading a model, for tests, benchmarks and demos.

`random_trace` routes random logits the way a top-k softmax (or sigmoid) router would; `trace_from_choices`
wraps hand-written expert choices so a test can state its case and its expected answer side by side.
Token i is "t{i}" (its index in the batch), and each text is its tokens joined, so offsets stay consistent.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np

from moe_core.traces.types import DROPPED, ModelInfo, RoutingTrace, Tokens

SCORINGS = ("softmax", "sigmoid")


def random_trace(
    num_tokens_per_sequence: int | Sequence[int],
    num_experts: int,
    top_k: int,
    num_layers: int = 1,
    seed: int = 0,
    scoring: str = "softmax",
) -> RoutingTrace:
    """A trace of standard-normal router logits, routed to the top-k experts by probability.

    An int is one sequence of that many tokens; a list gives one sequence per entry. Weights are the top-k
    probabilities renormalised to sum to 1 (Mixtral-style).
    """
    lengths = [num_tokens_per_sequence] if isinstance(num_tokens_per_sequence, int) else list(num_tokens_per_sequence)
    if not lengths or min(lengths) < 0:
        raise ValueError(f"num_tokens_per_sequence must be a length >= 0 or a non-empty list of them, got {lengths}")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be between 1 and num_experts ({num_experts}), got {top_k}")
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")

    rng = np.random.default_rng(seed)
    num_tokens = sum(lengths)
    logits = rng.standard_normal((num_layers, num_tokens, num_experts)).astype(np.float32)
    if scoring == "softmax":
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = shifted / shifted.sum(axis=-1, keepdims=True)
    else:
        probs = 1.0 / (1.0 + np.exp(-logits))
    experts = np.argsort(-probs, axis=-1, kind="stable")[..., :top_k].astype(np.int64)
    top = np.take_along_axis(probs, experts, axis=-1)
    weights = top / top.sum(axis=-1, keepdims=True)
    return _trace(lengths, num_experts, top_k, scoring, logits, probs.astype(np.float32), experts, weights)


def trace_from_choices(
    experts: Sequence | np.ndarray,
    weights: Sequence | np.ndarray | None = None,
    sequence_lengths: Sequence[int] | None = None,
    num_experts: int | None = None,
) -> RoutingTrace:
    """A trace with exactly these expert choices ([L, T, k], or [T, k] for one layer; DROPPED allowed).

    `weights` default to 1/k per slot (0 where DROPPED); `sequence_lengths` to one sequence; `num_experts` to
    the largest expert + 1. probs hold the weights at the chosen experts and 0 elsewhere, logits = log(probs)
    (floored at 1e-9), so a softmax of the logits gives back probs whenever the weights sum to 1.
    """
    chosen = np.asarray(experts, dtype=np.int64)
    if chosen.ndim == 2:
        chosen = chosen[None]
    if chosen.ndim != 3:
        raise ValueError(f"experts must have shape [L, T, k] or [T, k], got {chosen.shape}")
    num_layers, num_tokens, top_k = chosen.shape
    assigned = chosen != DROPPED
    if num_experts is None:
        num_experts = int(chosen.max()) + 1 if assigned.any() else 1
    if (chosen < DROPPED).any() or (chosen >= num_experts).any():
        raise ValueError(f"experts must be in [0, {num_experts}) or DROPPED ({DROPPED})")
    if weights is None:
        combine = np.where(assigned, 1.0 / top_k, 0.0).astype(np.float32)
    else:
        combine = np.asarray(weights, dtype=np.float32).reshape(chosen.shape)
    lengths = [num_tokens] if sequence_lengths is None else list(sequence_lengths)
    if sum(lengths) != num_tokens:
        raise ValueError(f"sequence_lengths {lengths} sum to {sum(lengths)}, but experts have {num_tokens} tokens")

    probs = np.zeros((num_layers, num_tokens, num_experts), dtype=np.float32)
    layer, token, rank = np.nonzero(assigned)
    probs[layer, token, chosen[layer, token, rank]] = combine[layer, token, rank]
    logits = np.log(np.maximum(probs, 1e-9)).astype(np.float32)
    return _trace(lengths, num_experts, top_k, "softmax", logits, probs, chosen, combine)


def _trace(
    lengths: list[int],
    num_experts: int,
    top_k: int,
    scoring: str,
    logits: np.ndarray,
    probs: np.ndarray,
    experts: np.ndarray,
    weights: np.ndarray,
) -> RoutingTrace:
    """Wrap routing arrays in a RoutingTrace whose tokens are "t0", "t1", … in sequences of `lengths`."""
    num_layers = experts.shape[0]
    sequence = np.repeat(np.arange(len(lengths)), lengths).astype(np.int64)
    position = np.concatenate([np.arange(n) for n in lengths]).astype(np.int64)
    text = tuple(f"t{i}" for i in range(len(sequence)))
    widths = np.array([len(piece) for piece in text], dtype=np.int64)
    bounds = np.cumsum([0, *lengths])  # first token of each sequence, and the end
    end = np.cumsum(widths)
    sequence_start = np.concatenate([[0], end])[bounds[:-1]]  # where each text starts in the joined batch
    start = end - widths - np.repeat(sequence_start, lengths)
    texts = tuple("".join(text[a:b]) for a, b in pairwise(bounds))
    tokens = Tokens(
        ids=np.arange(len(sequence), dtype=np.int64),
        text=text,
        offsets=np.stack([start, start + widths], axis=1),
        sequence=sequence,
        position=position,
    )
    model = ModelInfo(
        name="synthetic",
        architecture="synthetic",
        num_experts=num_experts,
        top_k=top_k,
        scoring=scoring,
        num_layers=num_layers,
        moe_layers=tuple(range(num_layers)),
    )
    return RoutingTrace(
        model=model,
        texts=texts,
        tokens=tokens,
        logits=logits,
        probs=probs,
        experts=experts,
        weights=weights.astype(np.float32),
        truncated=(False,) * len(lengths),
    )
