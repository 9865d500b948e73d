"""Gate weights: the router's scores over all experts, per token, at one layer."""

from __future__ import annotations

import numpy as np
import pandas as pd

from moe_core.traces.types import RoutingTrace, gate_weights

GATE_VIEW = "the gate view"


def gate_heatmap(trace: RoutingTrace, layer_row: int, start: int = 0, stop: int | None = None) -> pd.DataFrame:
    """Long table for tokens [start, stop) × experts: prob, and the rank (1..k) where the expert was chosen.

    Columns: token, text, expert, prob, rank (0 = not chosen).
    """
    trace.require("probs", needed_by=GATE_VIEW)
    stop = len(trace.tokens) if stop is None else min(stop, len(trace.tokens))
    window = np.arange(start, stop)
    num_experts = trace.model.num_experts
    rank = np.zeros((len(window), num_experts), dtype=np.int64)
    chosen = trace.experts[layer_row, window]
    rows, slots = np.nonzero(chosen >= 0)
    rank[rows, chosen[rows, slots]] = slots + 1
    return pd.DataFrame(
        {
            "token": np.repeat(window, num_experts),
            "text": np.repeat(np.asarray(trace.tokens.text, dtype=object)[window], num_experts),
            "expert": np.tile(np.arange(num_experts), len(window)),
            "prob": trace.probs[layer_row, window].reshape(-1),
            "rank": rank.reshape(-1),
        }
    )


OTHER = -1  # the row of a grouped heatmap that stands for the experts it does not name


def grouped_gate_heatmap(frame: pd.DataFrame, keep: int) -> pd.DataFrame:
    """A gate_heatmap with at most `keep` experts by name, the ones the window's tokens chose most often (then
    the highest mean score), in expert order, and one OTHER row for the rest: its score is the highest of the
    rest for that token, and `picked` says how many of the token's top-k slots went to them, so every pick is
    still counted (the named rows' ranks plus OTHER's `picked` make k). A window of 64 tokens × 256 experts
    drew 16,384 cells too thin to read.

    Columns: those of gate_heatmap plus picked (OTHER rows; 0 elsewhere). Unchanged (with picked = 0) when the
    window has at most `keep` experts.
    """
    experts = frame["expert"].unique()
    shown = frame.assign(picked=0)
    if len(experts) <= keep:
        return shown
    per_expert = frame.assign(chosen=frame["rank"] > 0).groupby("expert").agg(picks=("chosen", "sum"),
                                                                              mean=("prob", "mean"))  # fmt: skip
    kept = per_expert.sort_values(["picks", "mean"], ascending=False, kind="stable").index[:keep]
    named = frame["expert"].isin(kept)
    rest = frame[~named].assign(chosen=frame["rank"] > 0).groupby("token", sort=True)
    top = rest["prob"].max()
    other = pd.DataFrame(
        {
            "token": top.index,
            "text": rest["text"].first().to_numpy(),
            "expert": OTHER,
            "prob": top.to_numpy(),
            "rank": 0,
            "picked": rest["chosen"].sum().to_numpy().astype(np.int64),
        }
    )
    return pd.concat([shown[named].sort_values(["token", "expert"]), other], ignore_index=True)


def token_distribution(trace: RoutingTrace, layer_row: int, token: int) -> pd.DataFrame:
    """One token's scores over all experts. Columns: expert, prob, rank (0 = not chosen), weight (combine weight)."""
    frame = gate_heatmap(trace, layer_row, token, token + 1)[["expert", "prob", "rank"]].reset_index(drop=True)
    weights = np.zeros(trace.model.num_experts)
    for expert, weight in zip(trace.experts[layer_row, token], gate_weights(trace)[layer_row, token], strict=True):
        if expert >= 0:
            weights[expert] = weight
    frame["weight"] = weights
    return frame


def _probs(trace: RoutingTrace) -> np.ndarray:
    trace.require("probs", needed_by=GATE_VIEW)
    return trace.probs


def routing_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy in bits of each row of [..., E] scores, normalised to sum to 1 first.

    Softmax probabilities already sum to 1; sigmoid scores do not, so they are normalised: the entropy then
    says how evenly the router spreads its scores, 0 (one expert) to log2(E) (all equal).
    """
    p = probs / np.clip(probs.sum(axis=-1, keepdims=True), 1e-30, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(p), 0.0)
    return terms.sum(axis=-1)


def entropy_frame(trace: RoutingTrace, layer_row: int) -> pd.DataFrame:
    """Columns: token, position, sequence, text, entropy (bits)."""
    tokens = trace.tokens
    return pd.DataFrame(
        {
            "token": np.arange(len(tokens)),
            "position": tokens.position,
            "sequence": tokens.sequence,
            "text": list(tokens.text),
            "entropy": routing_entropy(_probs(trace)[layer_row].astype(np.float64)),
        }
    )


def binned_entropy(frame: pd.DataFrame, max_points: int) -> pd.DataFrame:
    """entropy_frame in consecutive bins of tokens, at most `max_points` of them, so a curve over thousands of
    tokens stays readable (and light to draw). Bins are equal-sized (the last one may be shorter).

    Columns: start, stop (token range [start, stop)), tokens, mean, low, high (the bin's smallest and largest
    entropy).
    """
    if max_points < 1:
        raise ValueError(f"max_points must be at least 1, got {max_points}")
    size = max(1, -(-len(frame) // max_points))  # ceil: tokens per bin
    groups = frame["entropy"].groupby(np.arange(len(frame)) // size)
    starts = groups.size().index.to_numpy() * size
    return pd.DataFrame(
        {
            "start": starts,
            "stop": np.minimum(starts + size, len(frame)),
            "tokens": groups.size().to_numpy(),
            "mean": groups.mean().to_numpy(),
            "low": groups.min().to_numpy(),
            "high": groups.max().to_numpy(),
        }
    )
