"""Two traces of the same tokens, compared layer by layer (issue 16): a serving engine's dump against a
transformers re-run (the R3 paper's disagreement, arXiv 2510.11370), bf16 against fp32, a base model against
its fine-tune, a quantised model against the original.

Tokens are aligned by (sequence, position); their ids must agree. Per MoE layer and token:

- set agreement: |experts_A ∩ experts_B| / k, each side's routed experts only (a dropped slot, -1, and a skip
  class are in neither set: metrics.routed);
- first choice: slot 0 of each side, where both are ranked (`slots_ranked`) and both slot 0s are routed;
- each token's category: same (same set and same first choice), set changed (same first choice, or unknown,
  but another set), first choice changed.

Pure numpy and pandas: a comparison of saved files never imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from moe_core.metrics import expert_counts, routed
from moe_core.traces.types import RoutingTrace

SAME, SET_CHANGED, FIRST_CHANGED = 0, 1, 2
CATEGORIES = {SAME: "same experts", SET_CHANGED: "set changed", FIRST_CHANGED: "first choice changed"}


class NotComparable(ValueError):
    """The two traces are not of the same tokens, layers or experts; the message says which, in one line."""


@dataclass(frozen=True)
class Alignment:
    """Rows of A and of B that hold the same (sequence, position), in A's order, and the layers both traced."""

    rows_a: np.ndarray
    rows_b: np.ndarray
    layers: tuple[int, ...]  # model layer numbers traced by both
    notes: tuple[str, ...]


def align(a: RoutingTrace, b: RoutingTrace) -> Alignment:
    """Match tokens by (sequence, position) and layers by number; NotComparable in one sentence if they cannot be."""
    if a.model.num_experts != b.model.num_experts:
        raise NotComparable(f"A has {a.model.num_experts} experts and B {b.model.num_experts}: not the same model")
    if a.model.top_k != b.model.top_k:
        raise NotComparable(f"A routes each token to {a.model.top_k} experts and B to {b.model.top_k}")
    layers = tuple(layer for layer in a.model.moe_layers if layer in b.model.moe_layers)
    if not layers:
        raise NotComparable(f"no MoE layer in common: A has {list(a.model.moe_layers)[:8]}, "
                            f"B {list(b.model.moe_layers)[:8]}")  # fmt: skip
    width = int(max(a.tokens.position.max(), b.tokens.position.max())) + 1
    key_a = a.tokens.sequence * width + a.tokens.position
    key_b = b.tokens.sequence * width + b.tokens.position
    common, rows_a, rows_b = np.intersect1d(key_a, key_b, assume_unique=True, return_indices=True)
    if not len(common):
        raise NotComparable("the traces share no (sequence, position): not traces of the same tokens")
    order = np.argsort(rows_a, kind="stable")
    rows_a, rows_b = rows_a[order], rows_b[order]
    differ = np.flatnonzero(a.tokens.ids[rows_a] != b.tokens.ids[rows_b])
    if len(differ):
        row = rows_a[differ[0]]
        where = f"sequence {a.tokens.sequence[row]}, position {a.tokens.position[row]}"
        raise NotComparable(f"not the same tokens: at {where} A has id {a.tokens.ids[row]} and B "
                            f"{b.tokens.ids[rows_b[differ[0]]]} ({len(differ)} of {len(common)} differ)")  # fmt: skip
    notes = []
    if len(common) < max(len(a.tokens), len(b.tokens)):
        notes.append(f"{len(common)} tokens are in both (A has {len(a.tokens)}, B {len(b.tokens)}): the others are "
                     "left out")  # fmt: skip
    if len(layers) < max(len(a.model.moe_layers), len(b.model.moe_layers)):
        notes.append(f"layers {list(layers)[:8]} are in both; the others are left out")
    return Alignment(rows_a, rows_b, layers, tuple(notes))


def _first_choice_reason(a: RoutingTrace, b: RoutingTrace) -> str | None:
    """Why first choices cannot be compared (None: they can)."""
    unranked = [name for name, side in (("A", a), ("B", b)) if not side.slots_ranked]
    if not unranked:
        return None
    return (f"{' and '.join(unranked)} records each token's experts but not which came first: top-1 agreement is "
            "left out (null), set agreement is exact")  # fmt: skip


def _sets(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """[T, k] slots -> [T, E] membership of each token's routed experts."""
    member = np.zeros((len(experts), num_experts), dtype=bool)
    rows, slots = np.nonzero(routed(experts, num_experts))
    member[rows, experts[rows, slots]] = True
    return member


@dataclass(frozen=True)
class Comparison:
    """Everything `compare` reports. `categories` [L, T]: SAME / SET_CHANGED / FIRST_CHANGED per aligned token."""

    a: RoutingTrace
    b: RoutingTrace
    alignment: Alignment
    layers: pd.DataFrame  # layer, top1_agreement (NaN: unknown), set_agreement, changed_tokens, weight_difference
    categories: np.ndarray
    load: pd.DataFrame  # layer, expert, load_a, load_b, difference (B − A, slots)
    top1_reason: str | None

    @property
    def tokens(self) -> int:
        return len(self.alignment.rows_a)

    @property
    def tokens_changed_any_layer(self) -> float:
        """Share of the aligned tokens whose routing differs at one layer or more."""
        return float((self.categories != SAME).any(axis=0).mean()) if self.tokens else math.nan


def _layer_comparison(
    experts_a: np.ndarray, experts_b: np.ndarray, weights: tuple[np.ndarray, np.ndarray] | None, num_experts: int,
    top_k: int, ranked: bool,
) -> tuple[dict[str, float | int], np.ndarray]:  # fmt: skip
    """One layer's row and the categories of its tokens, from aligned [T, k] slots (and weights)."""
    sets_a, sets_b = _sets(experts_a, num_experts), _sets(experts_b, num_experts)
    shared = sets_a & sets_b
    set_same = (sets_a == sets_b).all(axis=1)
    first_a, first_b = experts_a[:, 0], experts_b[:, 0]
    both_routed = routed(first_a, num_experts) & routed(first_b, num_experts)
    first_same = first_a == first_b
    categories = np.where(set_same, SAME, SET_CHANGED)
    if ranked:
        categories = np.where(both_routed & ~first_same, FIRST_CHANGED, categories)
    top1 = float(first_same[both_routed].mean()) if ranked and both_routed.any() else math.nan
    row: dict[str, float | int] = {
        "top1_agreement": top1,
        "set_agreement": float(shared.sum(axis=1).mean() / top_k),
        "changed_tokens": int((categories != SAME).sum()),
        "weight_difference": math.nan,
    }
    if weights is not None:
        dense_a = np.zeros(sets_a.shape)
        dense_b = np.zeros(sets_b.shape)
        for dense, experts, weight in ((dense_a, experts_a, weights[0]), (dense_b, experts_b, weights[1])):
            rows, slots = np.nonzero(routed(experts, num_experts))
            dense[rows, experts[rows, slots]] = weight[rows, slots]
        if shared.any():
            row["weight_difference"] = float(np.abs(dense_a - dense_b)[shared].mean())
    return row, categories


def compare(a: RoutingTrace, b: RoutingTrace) -> Comparison:
    """A against B on the tokens and layers both hold (align)."""
    alignment = align(a, b)
    num_experts, top_k = a.model.num_experts, a.model.top_k
    reason = _first_choice_reason(a, b)
    rows, categories, load = [], [], []
    for layer in alignment.layers:
        row_a, row_b = a.layer_index(layer), b.layer_index(layer)
        experts_a = a.experts[row_a, alignment.rows_a]
        experts_b = b.experts[row_b, alignment.rows_b]
        weights = None
        if a.weights is not None and b.weights is not None:
            weights = (a.weights[row_a, alignment.rows_a], b.weights[row_b, alignment.rows_b])
        values, per_token = _layer_comparison(experts_a, experts_b, weights, num_experts, top_k, reason is None)
        rows.append({"layer": layer, **values})
        categories.append(per_token)
        load_a, load_b = expert_counts(experts_a, num_experts), expert_counts(experts_b, num_experts)
        load.append(pd.DataFrame({"layer": layer, "expert": np.arange(num_experts), "load_a": load_a,
                                  "load_b": load_b, "difference": load_b - load_a}))  # fmt: skip
    return Comparison(a, b, alignment, pd.DataFrame(rows), np.stack(categories), pd.concat(load, ignore_index=True),
                      reason)  # fmt: skip


def _number(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def comparison_json(result: Comparison) -> dict:
    """The `compare` contract (README): tokens, per layer the agreements, changed tokens, load and weight
    differences, and the share of tokens changed at any layer."""
    load = result.load
    return {
        "tokens": result.tokens,
        "layers": [
            {
                "layer": int(row.layer),
                "top1_agreement": _number(row.top1_agreement),
                "set_agreement": _number(row.set_agreement),
                "changed_tokens": int(row.changed_tokens),
                "load_difference": load.loc[load["layer"] == row.layer, "difference"].astype(int).tolist(),
                "weight_difference": _number(row.weight_difference),
            }
            for row in result.layers.itertuples()
        ],
        "tokens_changed_any_layer": _number(result.tokens_changed_any_layer),
        "top1_agreement_note": result.top1_reason,
        "notes": list(result.alignment.notes),
        "a": result.a.model.name,
        "b": result.b.model.name,
    }


def agreement_frame(result: Comparison) -> pd.DataFrame:
    """Long table for the agreement-per-layer line: layer, measure, value (top-1 left out where unknown)."""
    frame = result.layers.melt(id_vars="layer", value_vars=["top1_agreement", "set_agreement"], var_name="measure")
    return frame.dropna(subset=["value"]).reset_index(drop=True)


def token_categories_frame(result: Comparison, layer: int) -> pd.DataFrame:
    """One row per aligned token at one layer: token (A's row), category (CATEGORIES' names), and both routes."""
    row = result.alignment.layers.index(layer)
    rows_a, rows_b = result.alignment.rows_a, result.alignment.rows_b
    experts_a = result.a.experts[result.a.layer_index(layer), rows_a]
    experts_b = result.b.experts[result.b.layer_index(layer), rows_b]
    return pd.DataFrame({
        "token": rows_a,
        "category": [CATEGORIES[c] for c in result.categories[row].tolist()],
        "route_a": [" ".join(f"E{e}" for e in slots if e >= 0) for slots in experts_a.tolist()],
        "route_b": [" ".join(f"E{e}" for e in slots if e >= 0) for slots in experts_b.tolist()],
    })  # fmt: skip
