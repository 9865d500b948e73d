"""Routing statistics shared by the analyses, the model card and training."""

from __future__ import annotations

from typing import TypeVar

ArrayT = TypeVar("ArrayT")


def switch_aux_loss(fraction: ArrayT, mean_prob: ArrayT) -> ArrayT:
    """Switch Transformer's load-balancing loss N·Σ_i f_i·P_i (Fedus et al. 2021, eq. 4).

    `fraction` [E]: share of routed slots per expert; `mean_prob` [E]: mean router probability per expert.
    Equals 1 under perfect balance. Works on numpy arrays and torch tensors alike (training uses it too).
    """
    return len(fraction) * (fraction * mean_prob).sum()  # type: ignore[operator, arg-type, return-value]
