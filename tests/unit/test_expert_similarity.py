"""Closer Look §4.1 per matrix: which matrices an expert has, their similarity, and the random-init baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from moe_core.analyses.experts import matrix_similarity_frame, off_diagonal
from moe_core.experts import (
    DEFAULT_GATE,
    MatrixSimilarity,
    expert_matrices,
    matrix_similarities,
    moe_block,
    random_similarity,
    weight_similarity,
)
from moe_core.proof.tiny_models import build_tiny_model


def _cosine_by_hand(matrices: list[torch.Tensor]) -> np.ndarray:
    flat = np.stack([m.detach().reshape(-1).double().numpy() for m in matrices])
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    return unit @ unit.T


def test_mixtral_gate_and_up_are_the_halves_its_experts_compute_with() -> None:
    """Split gate_up_proj into gate_proj and up_proj, then down(silu(gate h) * up h) is exactly what the model's
    experts module returns for expert 3: the halves are not swapped."""
    experts = moe_block(build_tiny_model("mixtral"), 0).experts
    named = dict(expert_matrices(experts, 3, 8))
    assert list(named) == ["gate_proj", "up_proj", "down_proj"]
    hidden = torch.randn(5, named["gate_proj"].shape[1], generator=torch.Generator().manual_seed(0))
    gate, up, down = named["gate_proj"], named["up_proj"], named["down_proj"]
    with torch.no_grad():
        by_hand = (nn.functional.silu(hidden @ gate.T) * (hidden @ up.T)) @ down.T
        index = torch.full((5, 2), 3)
        weights = torch.tensor([[1.0, 0.0]] * 5)
        torch.testing.assert_close(experts(hidden, index, weights), by_hand)


class TransposedExperts(nn.Module):
    """[gate; up] stored transposed, [E, H, 2F], split by transformers' default gate."""

    is_concatenated, has_gate, is_transposed = True, True, True
    _apply_gate = DEFAULT_GATE

    def __init__(self) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4))


def test_transposed_gate_up_splits_along_its_last_axis() -> None:
    """Transposed layout: gate is the first F columns of expert e's [H, 2F] matrix, up the last F."""
    experts = TransposedExperts()
    named = dict(expert_matrices(experts, 1, 2))
    torch.testing.assert_close(named["gate_proj"], experts.gate_up_proj[1, :, :2])
    torch.testing.assert_close(named["up_proj"], experts.gate_up_proj[1, :, 2:])


@pytest.mark.parametrize(
    ("family", "names"),
    [
        ("gpt_oss", ["gate_up_proj", "down_proj"]),  # interleaved gate and up: kept whole; biases left out
        ("switch_transformers", ["wi", "wo"]),  # a module per expert, no gate
        ("dbrx", ["w1", "v1", "w2"]),  # flattened [E·F, H] tensors
    ],
)
def test_matrix_names_follow_each_layout(family: str, names: list[str]) -> None:
    experts = moe_block(build_tiny_model(family), 0).experts
    assert [name for name, _ in expert_matrices(experts, 0, 8)] == names


def test_per_matrix_similarity_equals_cosine_by_hand() -> None:
    """Each matrix's [E, E] is the cosine of that matrix flattened, expert by expert, computed here in numpy."""
    experts = moe_block(build_tiny_model("qwen2_moe"), 0).experts
    found = matrix_similarities(experts, 8)
    assert [m.name for m in found] == ["gate_proj", "up_proj", "down_proj"]
    for position, matrix in enumerate(found):
        by_hand = _cosine_by_hand([dict(expert_matrices(experts, e, 8))[matrix.name] for e in range(8)])
        np.testing.assert_allclose(matrix.similarity, by_hand, atol=1e-10)
        assert matrix.shape == ((32, 64) if position < 2 else (64, 32))
    # all of them together is weight_similarity: the matrices are every weight these experts have
    together = _cosine_by_hand(
        [torch.cat([m.reshape(-1) for _, m in expert_matrices(experts, e, 8)]) for e in range(8)]
    )
    np.testing.assert_allclose(weight_similarity(experts, 8), together, atol=1e-10)


def test_random_baseline_spread_is_one_over_sqrt_of_the_weights() -> None:
    """Independent N(0, 1) matrices of 100 × 100 weights: cosines spread about 1/sqrt(10,000) = 0.01 around 0
    (120 pairs of 16 experts, so the spread is known within about 7%); the diagonal is 1; seeded."""
    similarity = random_similarity((100, 100), 16, seed=3)
    pairs = off_diagonal(similarity)
    assert len(pairs) == 16 * 15
    assert 0.007 < pairs.std() < 0.013 and abs(pairs.mean()) < 0.004
    np.testing.assert_allclose(np.diag(similarity), 1.0)
    np.testing.assert_array_equal(similarity, random_similarity((100, 100), 16, seed=3))
    assert not np.array_equal(similarity, random_similarity((100, 100), 16, seed=4))


def test_matrix_similarity_frame_hand_case() -> None:
    """Pairs 0.2, -0.4, 0.1: mean |cosine| 0.7/3, max 0.4; baseline: identical experts, 1 and 1."""
    real = np.array([[1.0, 0.2, -0.4], [0.2, 1.0, 0.1], [-0.4, 0.1, 1.0]])
    row = matrix_similarity_frame([MatrixSimilarity("down_proj", (2, 3), real, np.ones((3, 3)))]).iloc[0]
    assert row["matrix"] == "down_proj" and row["shape"] == "2 × 3" and row["weights"] == 6
    assert row["mean_abs"] == pytest.approx(0.7 / 3) and row["max_abs"] == pytest.approx(0.4)
    assert row["random_mean_abs"] == 1.0 and row["random_max_abs"] == 1.0
