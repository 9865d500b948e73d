"""A Closer Look (Lo et al. 2024, arXiv 2406.18219) on a trace: how alike the experts are, and whether the
router prefers the experts whose outputs have the largest norms."""

from __future__ import annotations

import numpy as np
import pandas as pd

from moe_core.trace import RoutingTrace


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
