"""Routing statistics shared by the analyses, the model card and training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from moe_core.traces.types import DROPPED

ArrayT = TypeVar("ArrayT")


def switch_aux_loss(fraction: ArrayT, mean_prob: ArrayT) -> ArrayT:
    """Switch Transformer's load-balancing loss N·Σ_i f_i·P_i (Fedus et al. 2021, eq. 4).

    `fraction` [E]: share of routed slots per expert; `mean_prob` [E]: mean router probability per expert.
    Equals 1 under perfect balance. Works on numpy arrays and torch tensors alike (training uses it too).
    """
    return len(fraction) * (fraction * mean_prob).sum()  # type: ignore[operator, arg-type, return-value]


def routed(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """The one rule for which slots count as routed to an expert: not the model's own drop (DROPPED), not a skip
    class (index E and above, Zaya's "no expert"). Every count, per trace or per corpus, goes through it."""
    return (experts >= 0) & (experts < num_experts)


def expert_counts(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """[..., k] expert indices -> [E] how many slots each expert received (only `routed` slots)."""
    return np.bincount(experts[routed(experts, num_experts)].reshape(-1), minlength=num_experts)


def layer_expert_counts(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """[L, T, m] expert indices -> [L, E] routed slots per expert at each layer, in one bincount. The load of a
    trace (analyses.load) and of a corpus (corpus.summary) are both this count."""
    num_layers = experts.shape[0]
    valid = routed(experts, num_experts)
    flat = (np.arange(num_layers)[:, None, None] * num_experts + experts)[valid]
    return np.bincount(flat, minlength=num_layers * num_experts).reshape(num_layers, num_experts)


def pair_counts(source: np.ndarray, target: np.ndarray, num_experts: int) -> np.ndarray:
    """[E, E] how many (source, target) expert pairs there are of each (both already `routed`): one bincount
    (np.add.at was 10x slower). Layer flow's transitions, per trace and per corpus."""
    flat = np.bincount(source * num_experts + target, minlength=num_experts * num_experts)
    return flat.reshape(num_experts, num_experts).astype(np.int64)


def coactivation_counts(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """[T, k] expert indices at one layer -> [E, E] tokens routed to both experts (diagonal: to each), by one
    matrix product of the token × expert indicator (float64: exact below 2**53 tokens). OLMoE's co-activation,
    per trace and per corpus."""
    chosen = np.zeros((len(experts), num_experts), dtype=np.float64)
    tokens, ranks = np.nonzero(routed(experts, num_experts))
    chosen[tokens, experts[tokens, ranks]] = 1
    return np.rint(chosen.T @ chosen).astype(np.int64)


def max_over_mean(counts: np.ndarray) -> float:
    """Load imbalance: the busiest expert's load over the mean load (1.0 is perfect balance)."""
    mean = counts.mean()
    return float(counts.max() / mean) if mean > 0 else float("nan")


def max_violation(counts: np.ndarray) -> float:
    """DeepSeek's MaxVio (Wang et al. 2024, arXiv 2408.15664): (max load - mean load) / mean load.

    0 is perfect balance; 1 means the busiest expert does twice its share. NaN when nothing was routed.
    """
    mean = counts.mean()
    return float((counts.max() - mean) / mean) if mean > 0 else float("nan")


def router_first_choice(first_slot: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """[T] each token's first choice before any capacity mask: its rank-1 expert, or, where the model dropped
    that slot, the argmax of its router probabilities (Switch picks the argmax, then drops over capacity).

    `first_slot` [T]: the rank-1 experts (DROPPED allowed); `probs` [T, E]. The Switch loss needs this: a
    dropped token still chose an expert, and leaving it out understates the loss (Fedus et al. 2021, eq. 4).
    """
    return np.where(first_slot == DROPPED, probs.argmax(axis=-1), first_slot)


def switch_balance_loss(first_choice: np.ndarray, probs: np.ndarray) -> float:
    """Switch's N·Σ f_i·P_i on one layer: f_i the share of tokens whose first choice is i, P_i the mean of each
    token's probabilities (normalised to sum to 1, for sigmoid routers). 1.0 when balanced, N when collapsed.

    `first_choice` [T] (no DROPPED: see router_first_choice); `probs` [T, E].
    """
    probs = probs.astype(np.float64)
    fraction = np.bincount(first_choice, minlength=probs.shape[-1]) / max(len(first_choice), 1)
    mean_prob = (probs / probs.sum(axis=-1, keepdims=True)).mean(axis=0)
    return float(switch_aux_loss(fraction, mean_prob))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def top_k_counts(scores: np.ndarray, top_k: int) -> np.ndarray:
    """[E] how many rows of `scores` [T, E] have each expert in their top-k, ties going to the lower expert (as
    a stable sort of -scores, or torch.topk, picks them). A partition, not a sort: 61 layers of 256 experts at
    4,096 tokens took 4 s sorted."""
    num_experts = scores.shape[-1]
    if not len(scores) or top_k <= 0:
        return np.zeros(num_experts, dtype=np.int64)
    kth = np.partition(scores, num_experts - top_k, axis=-1)[:, num_experts - top_k, None]  # k-th largest
    above, tied = scores > kth, scores == kth
    room = top_k - above.sum(axis=-1, keepdims=True)  # tied experts still taken, lowest index first
    chosen = above | (tied & (np.cumsum(tied, axis=-1) <= room))
    return chosen.sum(axis=0).astype(np.int64)


def transformers_balance_loss(layer_logits: Sequence[np.ndarray], top_k: int) -> float:
    """transformers' `load_balancing_loss_func` (Mixtral, Qwen-MoE, OLMoE, ...), with no attention mask.

    Its own definition, not Switch's: softmax of each layer's logits [T, E], its own top-k of those (whatever
    the model's real selection), then f_i = top-k slots of expert i / tokens and P_i = mean probability, both
    pooled over all the layers given, and E·Σ f_i·P_i. f sums to k, so uniform routing gives k, not 1.
    """
    num_experts = layer_logits[0].shape[-1]
    slots, prob_sum, rows = np.zeros(num_experts), np.zeros(num_experts), 0
    for logits in layer_logits:
        probs = _softmax(logits.astype(np.float64))
        slots += top_k_counts(probs, top_k)
        prob_sum += probs.sum(axis=0)
        rows += len(probs)
    if not rows:
        return float("nan")
    return float(num_experts * ((slots / rows) * (prob_sum / rows)).sum())


def router_z_loss(logits: np.ndarray) -> float:
    """ST-MoE's router z-loss (Zoph et al. 2022, arXiv 2202.08906): the mean over tokens of
    logsumexp(logits)². It penalises large logits, which make the router's softmax unstable in low precision.

    `logits` [T, E], the router's raw scores. NaN for no tokens.
    """
    if not len(logits):
        return float("nan")
    logits = logits.astype(np.float64)
    peak = logits.max(axis=-1)
    log_z = peak + np.log(np.exp(logits - peak[:, None]).sum(axis=-1))
    return float((log_z**2).mean())


def vocabulary_specialization(token_ids: np.ndarray, top1: np.ndarray, min_count: int = 10) -> float:
    """OLMoE's vocabulary specialization (Muennighoff et al. 2024, §5).

    For each token id seen at least `min_count` times, the share of its occurrences routed (top-1) to its
    most frequent expert; averaged over those ids. 1.0: every id always goes to one expert. Tokens the model
    dropped are left out; NaN when no id is frequent enough.
    """
    return float(vocabulary_specialization_rows(token_ids, np.asarray(top1)[None], min_count)[0])


def vocabulary_specialization_rows(token_ids: np.ndarray, top1_rows: np.ndarray, min_count: int = 10) -> np.ndarray:
    """vocabulary_specialization of each row of `top1_rows` [R, T] (layers, shuffles of one layer) in one count.

    Only ids seen `min_count` times in the whole text can be frequent among a row's routed tokens, and only the
    (row, id, expert) cells that occur are counted: a 4,096-token text built a 4,096 × 256 table for each of
    ~1,300 rows (61 layers, 20 shuffles each) before."""
    rows = np.asarray(top1_rows)
    _, id_index, counts = np.unique(np.asarray(token_ids), return_inverse=True, return_counts=True)
    frequent_ids = counts >= min_count
    result = np.full(len(rows), np.nan)
    kept = frequent_ids[id_index]
    chosen = rows[:, kept]
    routed = chosen >= 0  # a token the model dropped (DROPPED) went to no expert
    if not routed.any():
        return result
    columns = (np.cumsum(frequent_ids) - 1)[id_index[kept]]  # each kept token's place among the frequent ids
    num_ids, num_experts = int(frequent_ids.sum()), int(chosen.max()) + 1
    pair = np.arange(len(rows))[:, None] * num_ids + columns[None]  # (row, id)
    cells, cell_counts = np.unique((pair * num_experts + chosen)[routed], return_counts=True)
    owner = cells // num_experts
    totals = np.bincount(owner, weights=cell_counts, minlength=len(rows) * num_ids).reshape(len(rows), num_ids)
    usual = np.zeros(len(rows) * num_ids)
    np.maximum.at(usual, owner, cell_counts)
    usual = usual.reshape(len(rows), num_ids)
    enough = totals >= min_count
    frequent_per_row = enough.sum(axis=1)
    shares = np.where(enough, usual / np.maximum(totals, 1), 0.0).sum(axis=1)
    has_any = frequent_per_row > 0
    result[has_any] = shares[has_any] / frequent_per_row[has_any]
    return result
