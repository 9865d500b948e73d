"""A Closer Look (Lo et al. 2024, arXiv 2406.18219) on a trace: how alike the experts' weights are (§4.1), and
whether the router prefers the experts whose outputs have the largest norms."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from moe_core.traces.types import RoutingTrace

if TYPE_CHECKING:  # the experts module needs torch; this one stays pure
    from moe_core.experts import MatrixSimilarity


def similarity_frame(similarity: np.ndarray) -> pd.DataFrame:
    """Long table of an [E, E] similarity matrix without its diagonal. Columns: source, target, similarity."""
    num_experts = similarity.shape[0]
    source, target = np.divmod(np.arange(num_experts * num_experts), num_experts)
    off_diagonal = source != target
    return pd.DataFrame(
        {
            "source": source[off_diagonal],
            "target": target[off_diagonal],
            "similarity": similarity.reshape(-1)[off_diagonal],
        }
    )


def off_diagonal(similarity: np.ndarray) -> np.ndarray:
    """The pairs of different experts of an [E, E] matrix, flat: an expert is always a copy of itself."""
    return similarity[~np.eye(len(similarity), dtype=bool)]


def _abs_summary(similarity: np.ndarray) -> tuple[float, float]:
    pairs = np.abs(off_diagonal(similarity))
    return (float(pairs.mean()), float(pairs.max())) if len(pairs) else (np.nan, np.nan)


def matrix_similarity_frame(matrices: Sequence[MatrixSimilarity]) -> pd.DataFrame:
    """Closer Look §4.1 per weight matrix, one row each, beside random matrices of the same shape.

    Columns: matrix, shape ("F × H"), weights (per expert), mean_abs and max_abs (|cosine| over pairs of different
    experts), random_mean_abs and random_max_abs (the same for the random baseline). Real values near the random
    ones mean the experts are as unrelated as independent random matrices of that size.
    """
    rows = []
    for matrix in matrices:
        rows.append(
            (
                matrix.name,
                " × ".join(str(size) for size in matrix.shape),
                int(np.prod(matrix.shape)),
                *_abs_summary(matrix.similarity),
                *_abs_summary(matrix.random),
            )
        )
    columns = ["matrix", "shape", "weights", "mean_abs", "max_abs", "random_mean_abs", "random_max_abs"]
    return pd.DataFrame(rows, columns=columns)


def _row_ranks(values: np.ndarray) -> np.ndarray:
    return values.argsort(axis=1).argsort(axis=1).astype(np.float64)


def norm_preference(trace: RoutingTrace, layer_row: int, norms: np.ndarray) -> pd.DataFrame:
    """Does the router rank experts the way their output norms do, at one MoE layer? One row.

    `norms` is [T, E']: each real expert's output norm for each token (moe_core.experts.output_norms), where E'
    leaves out zero-computation classes (LongCat's identity experts, Zaya's skip), which have no output to weigh.
    `first_is_largest`: share of tokens whose first choice is a real expert and the one with the largest output;
    `chance` is 1/E'. `rank_correlation`: Spearman's rho between router scores and output norms over the real
    experts, averaged over tokens: 0 = unrelated, 1 = the router orders experts exactly by output norm.
    """
    trace.require("probs", needed_by="the larger-norm analysis")
    num_real = norms.shape[1]
    probs, top1 = trace.probs[layer_row, :, :num_real], trace.experts[layer_row, :, 0]
    routed = (top1 >= 0) & (top1 < num_real)
    first_is_largest = float((norms.argmax(axis=1) == top1)[routed].mean()) if routed.any() else np.nan
    score_ranks, norm_ranks = _row_ranks(probs), _row_ranks(norms)
    centred = [ranks - ranks.mean(axis=1, keepdims=True) for ranks in (score_ranks, norm_ranks)]
    rho = (centred[0] * centred[1]).sum(axis=1) / np.sqrt((centred[0] ** 2).sum(axis=1) * (centred[1] ** 2).sum(axis=1))
    return pd.DataFrame(
        {
            "layer": [trace.model.moe_layers[layer_row]],
            "first_is_largest": [first_is_largest],
            "chance": [1 / num_real],
            "rank_correlation": [float(np.nanmean(rho))],
            "tokens": [len(top1)],
        }
    )
