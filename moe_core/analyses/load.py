"""Expert load: how many tokens each expert receives per layer, and how balanced that is."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from moe_core.analyses.matrix import grouped_matrix_frame
from moe_core.metrics import (
    coactivation_counts,
    expert_counts,
    layer_expert_counts,
    max_over_mean,
    max_violation,
    router_first_choice,
    router_z_loss,
    switch_balance_loss,
    transformers_balance_loss,
)
from moe_core.traces.types import RoutingTrace


def load_frame(trace: RoutingTrace) -> pd.DataFrame:
    """Per (layer, expert): tokens whose top-1 is the expert, and tokens with the expert anywhere in their top-k.

    Columns: layer, expert, top1, topk, top1_uniform (T/E), topk_uniform (k·T/E).
    """
    num_experts, top_k = trace.model.num_experts, trace.model.top_k
    num_tokens = len(trace.tokens)
    rows = []
    top1_all = layer_expert_counts(trace.experts[:, :, :1], num_experts)
    topk_all = layer_expert_counts(trace.experts, num_experts)
    for row, layer in enumerate(trace.model.moe_layers):
        top1, topk = top1_all[row], topk_all[row]
        for expert in range(num_experts):
            rows.append((layer, expert, int(top1[expert]), int(topk[expert])))
    frame = pd.DataFrame(rows, columns=["layer", "expert", "top1", "topk"])
    frame["top1_uniform"] = num_tokens / num_experts
    frame["topk_uniform"] = top_k * num_tokens / num_experts
    return frame


PHASES = ("prompt", "generated")  # RoutingTrace.generated(): False, True


def phase_load_frame(trace: RoutingTrace, layer_row: int) -> pd.DataFrame:
    """One layer's load for the prompt's tokens and for the tokens the model wrote (issue 17): per phase and
    expert, its slots (all top-k, the one counting rule) and their share of the phase's slots, so a 9-token
    prompt and 40 written tokens compare as distributions. Empty when the trace marks no generated tokens."""
    generated = trace.generated()
    if not generated.any():
        return pd.DataFrame(columns=["phase", "expert", "slots", "share"])
    experts = trace.experts[layer_row]
    frames = []
    for phase, mask in zip(PHASES, (~generated, generated), strict=True):
        counts = expert_counts(experts[mask], trace.model.num_experts)
        total = counts.sum()
        frames.append(pd.DataFrame({"phase": phase, "expert": np.arange(trace.model.num_experts), "slots": counts,
                                    "share": counts / total if total else 0.0}))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def coefficient_of_variation(counts: np.ndarray) -> float:
    """Standard deviation over mean of the per-expert counts (0 = perfectly even)."""
    mean = counts.mean()
    return float(counts.std() / mean) if mean > 0 else float("nan")


def balance_frame(trace: RoutingTrace) -> pd.DataFrame:
    """Balance figures per layer, one name per definition.

    Columns: layer; cv, max_over_mean and max_vio (DeepSeek's MaxVio, max/mean - 1), all three over the top-k
    slots the experts actually received; switch_aux_loss, Switch's N·Σ f_i·P_i with f from each token's first
    choice before the capacity mask (metrics.router_first_choice), 1 when balanced; transformers_aux_loss,
    transformers' load_balancing_loss_func on this layer alone (top-k f from the softmax of the logits), k when
    balanced; z_loss, ST-MoE's router z-loss of the logits.
    """
    num_experts, top_k = trace.model.num_experts, trace.model.top_k
    rows = []
    for row, layer in enumerate(trace.model.moe_layers):
        topk = expert_counts(trace.experts[row], num_experts).astype(np.float64)
        probs = None if trace.probs is None else trace.probs[row]
        logits = None if trace.logits is None else trace.logits[row]
        switch = (
            math.nan
            if probs is None
            else switch_balance_loss(router_first_choice(trace.experts[row, :, 0], probs), probs)
        )
        transformers = math.nan if logits is None else transformers_balance_loss([logits], top_k)
        z_loss = math.nan if logits is None else router_z_loss(logits)
        rows.append(
            (
                layer,
                coefficient_of_variation(topk),
                max_over_mean(topk),
                max_violation(topk),
                switch,
                transformers,
                z_loss,
            )
        )
    columns = ["layer", "cv", "max_over_mean", "max_vio", "switch_aux_loss", "transformers_aux_loss", "z_loss"]
    return pd.DataFrame(rows, columns=columns)


def pooled_transformers_aux_loss(trace: RoutingTrace) -> float:
    """transformers' load_balancing_loss_func over every MoE layer of the trace at once, as training adds it to
    the loss (f and P pooled over the layers before the product, so not the mean of the per-layer values)."""
    if trace.logits is None:
        return math.nan
    return transformers_balance_loss(list(trace.logits), trace.model.top_k)


def coactivation_frame(trace: RoutingTrace, layer_row: int, keep: int | None = None) -> pd.DataFrame:
    """OLMoE's co-activation (Muennighoff et al. 2024, §5): for experts i and j at one MoE layer, the share of
    the tokens routed to i that were also routed to j. Experts that often work together suggest they split
    one skill between them; low values everywhere mean the experts are independent.

    Columns: source (i), target (j), count (tokens routed to both), share (count / tokens routed to i).
    The diagonal is left out. Slots the model dropped count for no expert. With `keep`, only the `keep`
    experts that take the most tokens, both ways (a pooled "other" would count pairs, not tokens).
    """
    num_experts = trace.model.num_experts
    together = coactivation_counts(trace.experts[layer_row], num_experts)  # [E, E]; diagonal: tokens of each
    keep = keep if keep is not None else num_experts
    return grouped_matrix_frame(together, np.diag(together), keep, keep_diagonal=False, pool=False)


def domain_share_frame(trace: RoutingTrace, layer_row: int, domains: Sequence[str]) -> pd.DataFrame:
    """Mixtral §5 (Fig. 7) and OLMoE's domain specialization: per text of the trace, one text per domain, the
    share of its routed slots (all top-k) that each expert takes at one MoE layer. An even router gives every
    expert 1/E in every domain; experts far above it in one domain have specialised on it.

    Columns: domain, expert, share, uniform (1/E), slots (the domain's routed slots).
    """
    if len(domains) != trace.num_sequences:
        raise ValueError(f"{len(domains)} domain names for {trace.num_sequences} texts")
    num_experts = trace.model.num_experts
    rows = []
    for sequence, domain in enumerate(domains):
        experts = trace.experts[layer_row, trace.tokens.sequence == sequence]
        counts = expert_counts(experts, num_experts)
        total = int(counts.sum())
        shares = counts / total if total else np.full(num_experts, np.nan)
        rows += [(domain, expert, float(shares[expert]), total) for expert in range(num_experts)]
    frame = pd.DataFrame(rows, columns=["domain", "expert", "share", "slots"])
    frame.insert(3, "uniform", 1 / num_experts)
    return frame
