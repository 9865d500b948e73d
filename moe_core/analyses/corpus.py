"""Frames for the corpus page, from a CorpusSummary alone (never the raw routing of the corpus).

Each mirrors the per-trace analysis of the same name (load, domains, co-activation, flow, drops), with the same
columns, so the app's chart builders draw both; rates are taken here, from the summed counts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from moe_core.analyses.capacity import bin_frame, position_bins
from moe_core.analyses.flow import followed_share
from moe_core.analyses.load import coefficient_of_variation
from moe_core.analyses.matrix import matrix_frame
from moe_core.corpus.documents import NO_DOMAIN
from moe_core.corpus.summary import CorpusSummary
from moe_core.metrics import max_over_mean

ALL_DOMAINS = "all"  # how documents without a domain are shown


def load_frame(summary: CorpusSummary) -> pd.DataFrame:
    """Per (layer, expert): first-choice tokens and top-k slots, with the even split of each.

    Columns: layer, expert, top1, topk, top1_uniform (T/E), topk_uniform (k·T/E), as analyses.load.load_frame.
    """
    layers, experts = summary.num_layers, summary.num_experts
    return pd.DataFrame(
        {
            "layer": np.repeat(np.asarray(summary.moe_layers), experts),
            "expert": np.tile(np.arange(experts), layers),
            "top1": summary.top1.reshape(-1),
            "topk": summary.topk.reshape(-1),
            "top1_uniform": summary.tokens / experts,
            "topk_uniform": summary.top_k * summary.tokens / experts,
        }
    )


def balance_frame(summary: CorpusSummary) -> pd.DataFrame:
    """Per layer, over the top-k slots: cv and max/mean load (the figures that need only counts).

    Columns: layer, cv, max_over_mean.
    """
    rows = [(layer, coefficient_of_variation(counts.astype(np.float64)), max_over_mean(counts.astype(np.float64)))
            for layer, counts in zip(summary.moe_layers, summary.topk, strict=True)]  # fmt: skip
    return pd.DataFrame(rows, columns=["layer", "cv", "max_over_mean"])


def domain_share_frame(summary: CorpusSummary, layer_row: int) -> pd.DataFrame:
    """Per domain, each expert's share of the domain's slots at one layer (Mixtral Fig. 7 over a corpus).

    Columns: domain, expert, share, uniform (1/E), slots, as analyses.load.domain_share_frame.
    """
    experts = summary.num_experts
    rows = []
    for index, domain in enumerate(summary.domains):
        counts = summary.domain_topk[index, layer_row]
        total = int(counts.sum())
        shares = counts / total if total else np.full(experts, np.nan)
        name = domain if domain != NO_DOMAIN else ALL_DOMAINS
        rows += [(name, expert, float(shares[expert]), 1 / experts, total) for expert in range(experts)]
    return pd.DataFrame(rows, columns=["domain", "expert", "share", "uniform", "slots"])


def coactivation_frame(summary: CorpusSummary, layer_row: int) -> pd.DataFrame:
    """OLMoE's co-activation at one layer: share of expert i's tokens also routed to j (diagonal left out)."""
    together = summary.coactivation[layer_row]
    return matrix_frame(together, np.diag(together), keep_diagonal=False)


def transition_frame(summary: CorpusSummary, from_row: int) -> pd.DataFrame:
    """First-choice transitions from layer row `from_row` to the next, as analyses.flow.transition_frame."""
    counts = summary.transitions[from_row]
    return matrix_frame(counts, counts.sum(axis=1))


def followed(summary: CorpusSummary, from_row: int) -> float:
    """Share of tokens that take their row's most common path between the two layers."""
    return followed_share(summary.transitions[from_row])


def drop_curve(summary: CorpusSummary, layer_row: int | None = None, bins: int = 32) -> pd.DataFrame:
    """Drop rates by position bin at the summary's capacity factor, at one layer or (None) over all layers.

    Columns: start, end, slot_drop_rate, token_drop_rate, tokens, slots, as analyses.capacity.drop_curve.
    """
    rows = slice(None) if layer_row is None else slice(layer_row, layer_row + 1)
    slots, lost = summary.position_slots[rows].sum(axis=0), summary.position_dropped[rows].sum(axis=0)
    tokens, full = summary.position_tokens[rows].sum(axis=0), summary.position_fully_dropped[rows].sum(axis=0)
    if not len(slots):
        return pd.DataFrame(columns=["start", "end", "slot_drop_rate", "token_drop_rate", "tokens", "slots"])
    bin_index, width = position_bins(np.arange(len(slots)), bins)

    def binned(values: np.ndarray) -> np.ndarray:
        return np.bincount(bin_index, weights=values, minlength=int(bin_index.max()) + 1)

    count, total, dropped, fully = binned(tokens), binned(slots), binned(lost), binned(full)
    layers = 1 if layer_row is not None else summary.num_layers
    return bin_frame(
        count, width, slot_drop_rate=dropped / np.maximum(total, 1), token_drop_rate=fully / np.maximum(count, 1),
        tokens=(count // layers).astype(np.int64), slots=total.astype(np.int64),
    )  # fmt: skip


def _token_table(summary: CorpusSummary, layer_row: int) -> pd.DataFrame:
    rows = summary.token_layer == layer_row
    table = pd.DataFrame(
        {"token_id": summary.token_id[rows], "expert": summary.token_expert[rows], "count": summary.token_count[rows]}
    )
    table["occurrences"] = table.groupby("token_id")["count"].transform("sum")
    table["share"] = table["count"] / table["occurrences"]
    return table


def top_tokens_frame(summary: CorpusSummary, layer_row: int, per_expert: int = 8, min_count: int = 3) -> pd.DataFrame:
    """OpenMoE's token-id specialization: per expert, the token ids it takes most often as first choice at one
    layer, among ids seen at least `min_count` times. Columns: expert, token_id, count (first choices to this
    expert), occurrences (of the id at this layer), share (count / occurrences)."""
    table = _token_table(summary, layer_row)
    table = table[table["occurrences"] >= min_count]
    ranked = table.sort_values(["expert", "count", "share", "token_id"], ascending=[True, False, False, True])
    return ranked.groupby("expert").head(per_expert).reset_index(drop=True)


def vocabulary_specialization(summary: CorpusSummary, min_count: int = 10) -> pd.DataFrame:
    """OLMoE's vocabulary specialization per layer (metrics.vocabulary_specialization, from the counts): for ids
    seen at least `min_count` times, the mean share of an id's occurrences that go to its most frequent expert.
    Columns: layer, specialization (NaN when no id is frequent enough), ids, even (1/E)."""
    rows = []
    for row, layer in enumerate(summary.moe_layers):
        table = _token_table(summary, row)
        best = table.groupby("token_id").agg(top=("count", "max"), occurrences=("occurrences", "first"))
        frequent = best[best["occurrences"] >= min_count]
        value = float((frequent["top"] / frequent["occurrences"]).mean()) if len(frequent) else float("nan")
        rows.append((layer, value, len(frequent), 1 / summary.num_experts))
    return pd.DataFrame(rows, columns=["layer", "specialization", "ids", "even"])
