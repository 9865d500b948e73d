"""Drop towards the end, honestly: curves that show where drops fall, on texts that make the comparison fair,
and the controls that show why (the serving order, not the tokens).

Why each piece: a pooled curve over texts of different lengths has tails made of the longest texts alone, so
the built-in batch holds equal-length windows (moe_core.batches) and every position bin holds the same texts;
one line per domain shows the effect is not one domain's; reversing the serving order flips the curve, while
shuffling the routing rows within each text leaves it as it was, so the effect follows the order in which
slots are served. All curves share `drop_curve` and its binning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from moe_core.analyses.capacity import LayerSlots, bin_frame, drop_curve, position_bins
from moe_core.capacity.simulate import simulate_capacity
from moe_core.traces.types import RoutingTrace

POOLED = "all texts"
CF_SWEEP = (0.75, 1.0, 1.25, 2.0)
MIN_TOKENS_FOR_CURVE = 96  # below this a sequence has too few bins' worth of slots to show a trend
MAX_LENGTH_RATIO = 1.5  # longest / shortest text: past this the tail holds only the longest ones


def _simulated_curve(trace: RoutingTrace, layer_row: int, bins: int, **settings: object) -> pd.DataFrame:
    result = simulate_capacity(trace, **settings)  # type: ignore[arg-type]
    return drop_curve(trace.tokens.position, LayerSlots.simulated(trace, result, layer_row), bins)


def curves_by_domain(trace: RoutingTrace, slots: LayerSlots, domains: Sequence[str], bins: int = 24) -> pd.DataFrame:
    """The drop curve of each domain and of all texts pooled; `domains` names each sequence's domain.

    Columns: drop_curve's, plus domain.
    """
    sequence_domain = np.asarray(domains)[trace.tokens.sequence]
    position = trace.tokens.position
    _, width = position_bins(position, bins)  # one set of bins for every line
    frames = [drop_curve(position, slots, width=width).assign(domain=POOLED)]
    for domain in dict.fromkeys(domains):
        rows = sequence_domain == domain
        frames.append(drop_curve(position[rows], slots.rows(rows), width=width).assign(domain=domain))
    return pd.concat(frames, ignore_index=True)


GROUPINGS = {  # capacity group -> how the lab names it (short: a legend label)
    "sequence": "per text (group = sequence)",
    "batch": "per batch, as trained (group = batch)",
}


def grouping_curves(trace: RoutingTrace, capacity_factor: float, policy: str, layer_row: int,
                    bins: int = 24) -> pd.DataFrame:  # fmt: skip
    """The pooled drop curve under each capacity grouping, side by side: the same capacity factor drops far more
    when every text has its own C (a few tokens of one text crowd one expert) than over a mixed batch, where one
    text's hot expert is another's cold one. Columns: drop_curve's, plus grouping."""
    frames = [
        _simulated_curve(trace, layer_row, bins, capacity_factor=capacity_factor, policy=policy, group=group).assign(
            grouping=label
        )
        for group, label in GROUPINGS.items()
    ]
    return pd.concat(frames, ignore_index=True)


CASCADE = {  # source of the slots -> how the lab names it (short: a legend label)
    "static": "static simulation",
    "forward": "capacity-bound forward",
}


def cascade_curves(position: np.ndarray, static: LayerSlots, forward: LayerSlots, bins: int = 24) -> pd.DataFrame:
    """One layer's pooled drop curve from the static simulation and from the capacity-bound forward, on one set of
    bins. Past the first layer they differ: a drop changes the hidden state, so later routing changes too (the
    real cascade). Columns: drop_curve's, plus source."""
    _, width = position_bins(position, bins)
    curves = {"static": static, "forward": forward}
    return pd.concat([drop_curve(position, slots, width=width).assign(source=CASCADE[name])
                      for name, slots in curves.items()], ignore_index=True)  # fmt: skip


def control_curves(
    trace: RoutingTrace, capacity_factor: float, group: str, layer_row: int, bins: int = 24, seed: int = 0
) -> pd.DataFrame:
    """Pooled drop curves under the controls that explain the mechanism. Columns: drop_curve's, plus control.

    - position: the GShard/OpenMoE order, the curve to explain;
    - score: the most confident tokens first (V-MoE), which takes the slope away;
    - reversed: the same routing served last token first, which moves the drops to the start;
    - shuffled: the routing rows shuffled within each text, served in position order: the same curve, so the
      effect does not come from which tokens sit late in a text.
    """
    settings = {"capacity_factor": capacity_factor, "group": group}
    shuffled = shuffled_within_sequences(trace, seed)
    runs = {
        "position order": (trace, "position"),
        "score order (most confident first)": (trace, "score"),
        "position order, served last-to-first": (trace, "reversed"),
        "position order, routing shuffled within each text": (shuffled, "position"),
    }
    frames = [
        _simulated_curve(routing, layer_row, bins, policy=policy, **settings).assign(control=name)
        for name, (routing, policy) in runs.items()
    ]
    return pd.concat(frames, ignore_index=True)


def capacity_sweep(
    trace: RoutingTrace, policy: str, group: str, layer_row: int, factors: Sequence[float] = CF_SWEEP,
    bins: int = 24,
) -> pd.DataFrame:  # fmt: skip
    """Pooled drop curves at several capacity factors (small multiples). Columns: drop_curve's + capacity_factor."""
    frames = [
        _simulated_curve(trace, layer_row, bins, capacity_factor=f, policy=policy, group=group).assign(
            capacity_factor=f
        )
        for f in factors
    ]
    return pd.concat(frames, ignore_index=True)


def shuffled_within_sequences(trace: RoutingTrace, seed: int = 0) -> RoutingTrace:
    """The trace with its routing rows (logits, probs, experts, weights) permuted within each text, the same
    permutation at every layer; tokens and positions stay. A control: what depends only on positions survives."""
    rng = np.random.default_rng(seed)
    permutation = np.arange(len(trace.tokens))
    for sequence in np.unique(trace.tokens.sequence):
        rows = np.flatnonzero(trace.tokens.sequence == sequence)
        permutation[rows] = rng.permutation(rows)
    return _with_rows(trace, permutation)


def _with_rows(trace: RoutingTrace, rows: np.ndarray) -> RoutingTrace:
    def permuted(array: np.ndarray | None) -> np.ndarray | None:
        return None if array is None else array[:, rows]

    fields = ("logits", "probs", "experts", "weights")
    return replace(trace, **{name: permuted(getattr(trace, name)) for name in fields})


def sequence_drops(trace: RoutingTrace, slots: LayerSlots) -> pd.DataFrame:
    """Per text: share of its slots dropped. With group = batch one capacity serves the batch in order, so the
    later texts of the batch lose most. Columns: sequence, slot_drop_rate, slots."""
    sequence = trace.tokens.sequence
    count = trace.num_sequences
    total = np.bincount(sequence, weights=slots.assigned, minlength=count)
    lost = np.bincount(sequence, weights=slots.dropped, minlength=count)
    return pd.DataFrame(
        {
            "sequence": np.arange(count),
            "slot_drop_rate": lost / np.maximum(total, 1),
            "slots": total.astype(np.int64),
        }
    )


def delta_loss_curve(position: np.ndarray, delta_loss: np.ndarray, bins: int = 32) -> pd.DataFrame:
    """Mean Δloss (nats per token, capacity-bound minus plain) by position bin; tokens with no next token are
    left out. Columns: start, end, mean_delta_loss, tokens."""
    defined = np.isfinite(delta_loss)
    if not defined.any():
        return pd.DataFrame(columns=["start", "end", "mean_delta_loss", "tokens"])
    bin_index, width = position_bins(position, bins)
    count = np.bincount(bin_index[defined], minlength=int(bin_index.max()) + 1)
    total = np.bincount(bin_index[defined], weights=delta_loss[defined], minlength=len(count))
    return bin_frame(count, width, mean_delta_loss=total / np.maximum(count, 1), tokens=count)


def tail_cost(position: np.ndarray, sequence: np.ndarray, delta_loss: np.ndarray) -> tuple[float, float]:
    """(mean Δloss of the first quarter of each text, of its last quarter): "the end loses X nats per token"."""
    length = np.bincount(sequence)[sequence]
    share = position / np.maximum(length, 1)
    defined = np.isfinite(delta_loss)

    def mean(rows: np.ndarray) -> float:
        rows = rows & defined
        return float(delta_loss[rows].mean()) if rows.any() else float("nan")

    return mean(share < 0.25), mean(share >= 0.75)


def curve_readiness(trace: RoutingTrace) -> str:
    """Empty when the typed text can show a drop curve; else one plain sentence why it cannot (yet)."""
    lengths = np.bincount(trace.tokens.sequence)
    if lengths.max() < MIN_TOKENS_FOR_CURVE:
        return (
            f"Your text is {int(lengths.max())} tokens long: too short for a trend by position (try "
            f"{MIN_TOKENS_FOR_CURVE}+ tokens, or a longer preset). The built-in batch below shows it."
        )
    if lengths.max() > MAX_LENGTH_RATIO * lengths.min():
        return (
            f"Your texts differ in length ({int(lengths.min())}–{int(lengths.max())} tokens), so the last bins hold "
            "only the longest ones: read the built-in batch below for the fair comparison."
        )
    return ""
