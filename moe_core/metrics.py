"""Routing statistics shared by the analyses, the model card and training."""

from __future__ import annotations

from typing import TypeVar

import numpy as np

ArrayT = TypeVar("ArrayT")


def switch_aux_loss(fraction: ArrayT, mean_prob: ArrayT) -> ArrayT:
    """Switch Transformer's load-balancing loss N·Σ_i f_i·P_i (Fedus et al. 2021, eq. 4).

    `fraction` [E]: share of routed slots per expert; `mean_prob` [E]: mean router probability per expert.
    Equals 1 under perfect balance. Works on numpy arrays and torch tensors alike (training uses it too).
    """
    return len(fraction) * (fraction * mean_prob).sum()  # type: ignore[operator, arg-type, return-value]


def expert_counts(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """[..., k] expert indices -> [E] how many slots each expert received (DROPPED slots ignored)."""
    chosen = experts[experts >= 0]
    return np.bincount(chosen.reshape(-1), minlength=num_experts)


def max_over_mean(counts: np.ndarray) -> float:
    """Load imbalance: the busiest expert's load over the mean load (1.0 is perfect balance)."""
    mean = counts.mean()
    return float(counts.max() / mean) if mean > 0 else float("nan")


def vocabulary_specialization(token_ids: np.ndarray, top1: np.ndarray, min_count: int = 10) -> float:
    """OLMoE's vocabulary specialization (Muennighoff et al. 2024, §5).

    For each token id seen at least `min_count` times, the share of its occurrences routed (top-1) to its
    most frequent expert; averaged over those ids. 1.0: every id always goes to one expert. Tokens the model
    dropped are left out; NaN when no id is frequent enough.
    """
    experts = np.asarray(top1)
    routed = experts >= 0  # a token the model dropped (DROPPED) went to no expert
    ids, experts = np.asarray(token_ids)[routed], experts[routed]
    if not len(ids):
        return float("nan")
    vocabulary, id_index = np.unique(ids, return_inverse=True)
    num_experts = int(experts.max()) + 1
    table = np.zeros((len(vocabulary), num_experts), dtype=np.int64)
    np.add.at(table, (id_index, experts), 1)
    totals = table.sum(axis=1)
    frequent = totals >= min_count
    if not frequent.any():
        return float("nan")
    return float((table[frequent].max(axis=1) / totals[frequent]).mean())
