"""Layer flow: how tokens move from their top-1 expert at one MoE layer to their top-1 at the next."""

from __future__ import annotations

import numpy as np
import pandas as pd

from moe_core.analyses.matrix import grouped_matrix_frame
from moe_core.metrics import pair_counts, routed
from moe_core.traces.types import RoutingTrace


def transition_pairs(
    source: np.ndarray, target: np.ndarray, ranked: bool, num_experts: int
) -> tuple[np.ndarray, np.ndarray]:
    """The (from, to) expert pairs of tokens routed [T, k] at one layer and the next. Ranked: each token's first
    choices. Unranked (the trace has sets, not ranks): every pair of the two sets, so a token counts k·k times
    and no slot is read as the first choice."""
    if ranked:
        source, target = source[:, 0], target[:, 0]
    else:
        width = source.shape[1]
        source, target = np.repeat(source, target.shape[1], axis=1).ravel(), np.tile(target, (1, width)).ravel()
    valid = routed(source, num_experts) & routed(target, num_experts)
    return source[valid], target[valid]


def transition_counts(trace: RoutingTrace, from_row: int) -> np.ndarray:
    """[E, E] counts: tokens with top-1 a at layer row `from_row` and top-1 b at the next MoE layer (an unranked
    trace: every pair of their expert sets, transition_pairs)."""
    experts = trace.experts
    num_experts = trace.model.num_experts
    source, target = transition_pairs(experts[from_row], experts[from_row + 1], trace.slots_ranked, num_experts)
    return pair_counts(source, target, num_experts)


def transition_frame(trace: RoutingTrace, from_row: int, keep: int | None = None) -> pd.DataFrame:
    """Long table of transition_counts. Columns: source, target, count, share (of the source row), row_total.

    With `keep`, the `keep` busiest experts of each layer by name and the rest pooled as OTHER (every token
    still counted once): grouped_matrix_frame.
    """
    counts = transition_counts(trace, from_row)
    return grouped_matrix_frame(counts, counts.sum(axis=1), keep if keep is not None else len(counts))


def flow_pair(trace: RoutingTrace, layer_row: int) -> int | None:
    """The layer row the flow starts from: the chosen layer, or the one before it if it is the last; None
    when the model has a single MoE layer."""
    num_layers = len(trace.model.moe_layers)
    if num_layers < 2:
        return None
    return min(layer_row, num_layers - 2)


def followed_share(counts: np.ndarray) -> float:
    """Share of the tokens that take their row's busiest column: Σ_rows max(row) / all tokens (NaN if none)."""
    total = counts.sum()
    return float(counts.max(axis=1).sum() / total) if total else float("nan")


def flow_summary(trace: RoutingTrace, shuffles: int = 20, seed: int = 0) -> pd.DataFrame:
    """Every pair of consecutive MoE layers at once: how many tokens follow their group's most common path.

    `followed` is followed_share of the pair's transition counts. `shuffled` is the same with the next
    layer's first choices shuffled across tokens (both layers keep their load, the link between them is gone),
    averaged over `shuffles` seeded shuffles: the chance level, which small rows push above 1/E (a row of one
    token always follows its path). `even` is 1/E, the level of an even next layer ignoring the previous one.
    Columns: from_layer, to_layer, followed, shuffled, even, tokens (tokens with a first choice at both).
    """
    rng = np.random.default_rng(seed)
    num_experts = trace.model.num_experts
    layers = trace.model.moe_layers
    rows = []
    ranked = trace.slots_ranked
    for row in range(len(layers) - 1):
        here, after = trace.experts[row], trace.experts[row + 1]
        chance = []
        for _ in range(shuffles):  # whole tokens shuffled at the next layer: their sets stay together
            shuffled = transition_pairs(here, after[rng.permutation(len(after))], ranked, num_experts)
            chance.append(followed_share(pair_counts(*shuffled, num_experts)))
        source, _ = transition_pairs(here, after, ranked, num_experts)
        tokens = len(source) if ranked else len(source) // (here.shape[1] * after.shape[1])  # dumps have no drops
        followed = followed_share(transition_counts(trace, row))
        rows.append((layers[row], layers[row + 1], followed, float(np.mean(chance)), 1 / num_experts, tokens))
    return pd.DataFrame(rows, columns=["from_layer", "to_layer", "followed", "shuffled", "even", "tokens"])


def all_pairs_frame(trace: RoutingTrace, keep: int) -> pd.DataFrame:
    """Every pair of consecutive MoE layers at once: each pair's transition_frame with `keep` experts named
    (the rest pooled), stacked, so small multiples can show every pair side by side.

    Columns: from_layer, to_layer, row (0… the row's place in its pair: busiest first, OTHER last), column (the
    same for columns), then transition_frame's source, target, count, share, row_total.
    """
    layers = trace.model.moe_layers
    frames = []
    for row in range(len(layers) - 1):
        frame = transition_frame(trace, row, keep)
        places = {kind: {e: i for i, e in enumerate(frame[kind].drop_duplicates())} for kind in ("source", "target")}
        frames.append(
            frame.assign(
                from_layer=layers[row],
                to_layer=layers[row + 1],
                row=frame["source"].map(places["source"]),
                column=frame["target"].map(places["target"]),
            )
        )
    columns = ["from_layer", "to_layer", "row", "column", "source", "target", "count", "share", "row_total"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]
