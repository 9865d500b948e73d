"""Real model shapes (OLMoE 64 experts, Qwen3-30B-A3B 128, DeepSeek-V3 256 experts, top-8, 61 layers, 4,096
tokens): the analyses stay exact and fast enough for a page, and what a chart receives stays small."""

from __future__ import annotations

import numpy as np

from moe_core.metrics import top_k_counts


def test_top_k_counts_match_a_stable_sort_ties_included() -> None:
    """The partition-based count equals counting a stable argsort's top-k, on random and on heavily tied scores
    (ties go to the lower expert, as torch.topk and a stable sort of -scores pick them)."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        tokens, experts = int(rng.integers(1, 30)), int(rng.integers(1, 12))
        top_k = int(rng.integers(1, experts + 1))
        scores = rng.integers(0, 3, (tokens, experts)).astype(float) if trial % 2 else rng.random((tokens, experts))
        stable = np.argsort(-scores, axis=-1, kind="stable")[:, :top_k]
        np.testing.assert_array_equal(top_k_counts(scores, top_k), np.bincount(stable.ravel(), minlength=experts))


def test_top_k_counts_of_no_tokens_are_zero() -> None:
    assert top_k_counts(np.zeros((0, 4)), 2).tolist() == [0, 0, 0, 0]
