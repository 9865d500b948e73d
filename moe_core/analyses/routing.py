"""Which experts each token went to: per token at one layer, and top-1 across all layers."""

from __future__ import annotations

import numpy as np
import pandas as pd

from moe_core.trace import DROPPED, RoutingTrace


def route_labels(experts: np.ndarray, weights: np.ndarray) -> list[str]:
    """'E3 0.62 · E5 0.38' per token: the top-k experts and their combine weights, for tooltips."""
    return [
        " · ".join("dropped" if e == DROPPED else f"E{e} {w:.2f}" for e, w in zip(row_e, row_w, strict=True))
        for row_e, row_w in zip(experts.tolist(), weights.tolist(), strict=True)
    ]


def token_frame(trace: RoutingTrace, layer_row: int) -> pd.DataFrame:
    """One row per token at one MoE layer (row index into the trace's layers).

    Columns: token, sequence, position, text, top1 (expert), top1_weight, route (all top-k, for tooltips).
    """
    tokens = trace.tokens
    experts = trace.experts[layer_row]
    weights = trace.weights[layer_row]
    return pd.DataFrame(
        {
            "token": np.arange(len(tokens)),
            "sequence": tokens.sequence,
            "position": tokens.position,
            "text": list(tokens.text),
            "top1": experts[:, 0],
            "top1_weight": weights[:, 0],
            "route": route_labels(experts, weights),
        }
    )


def token_layer_grid(trace: RoutingTrace, start: int = 0, stop: int | None = None) -> pd.DataFrame:
    """Long table of the top-1 expert and its weight for tokens [start, stop) at every MoE layer.

    Columns: token, position, text, layer (the model's layer index), top1, top1_weight.
    """
    stop = len(trace.tokens) if stop is None else min(stop, len(trace.tokens))
    window = np.arange(start, stop)
    num_layers = len(trace.model.moe_layers)
    return pd.DataFrame(
        {
            "token": np.tile(window, num_layers),
            "position": np.tile(trace.tokens.position[window], num_layers),
            "text": [trace.tokens.text[i] for i in window] * num_layers,
            "layer": np.repeat(np.asarray(trace.model.moe_layers), len(window)),
            "top1": trace.experts[:, window, 0].reshape(-1),
            "top1_weight": trace.weights[:, window, 0].reshape(-1),
        }
    )
