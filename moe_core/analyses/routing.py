"""Which experts each token went to: per token at one layer, and top-1 across all layers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from moe_core.metrics import vocabulary_specialization_rows
from moe_core.traces.types import DROPPED, RoutingTrace, gate_weights


def route_labels(experts: np.ndarray, weights: np.ndarray) -> list[str]:
    """'E3 0.62 · E5 0.38' per token: the top-k experts and their combine weights, for tooltips ('E3 · E5' where
    the trace has no weights: NaN)."""

    def label(expert: int, weight: float) -> str:
        if expert == DROPPED:
            return "dropped"
        return f"E{expert}" if math.isnan(weight) else f"E{expert} {weight:.2f}"

    return [
        " · ".join(label(e, w) for e, w in zip(row_e, row_w, strict=True))
        for row_e, row_w in zip(experts.tolist(), weights.tolist(), strict=True)
    ]


def shown_expert(experts: np.ndarray, ranked: bool) -> np.ndarray:
    """[..., k] -> [...] the expert a token is coloured by: its first choice, or, where the trace holds sets (an
    engine's dump by expert id), its lowest-numbered expert: a steady colour per set, never read as a rank."""
    if ranked:
        return experts[..., 0]
    return np.where(experts >= 0, experts, np.iinfo(experts.dtype).max).min(axis=-1)


def token_frame(trace: RoutingTrace, layer_row: int) -> pd.DataFrame:
    """One row per token at one MoE layer (row index into the trace's layers).

    Columns: token, sequence, position, text, top1 (expert), top1_weight, route (all top-k, for tooltips).
    """
    tokens = trace.tokens
    experts = trace.experts[layer_row]
    weights = gate_weights(trace)[layer_row]
    return pd.DataFrame(
        {
            "token": np.arange(len(tokens)),
            "sequence": tokens.sequence,
            "position": tokens.position,
            "text": list(tokens.text),
            "top1": shown_expert(experts, trace.slots_ranked),
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
            "top1": shown_expert(trace.experts[:, window], trace.slots_ranked).reshape(-1),
            "top1_weight": gate_weights(trace)[:, window, 0].reshape(-1),
        }
    )


OVERLAP_CHUNK = 1024  # tokens whose experts' bitsets are merged at once: bounds memory on long texts


def overlap_chance(chosen: np.ndarray, num_experts: int) -> float:
    """Chance that two different tokens drawn from these share an expert (ordered pairs i ≠ j).

    `chosen` [T, k] experts (DROPPED matches nothing). With k = 1 this is Σ_e n_e(n_e − 1) / T(T − 1), n_e the
    tokens on expert e; with top-k it is the same over whole sets of experts: the baseline for neighbours when
    routing keeps this load but ignores who the neighbour is. A neighbour is never the token itself, so a token
    paired with itself is left out (it added 1/T: +0.077 on a 13-token prompt). Exact: each expert's tokens as
    a bitset over the T tokens, so a token's partners are the OR of its k experts' bitsets (T·k·T/8 bytes of
    work instead of the T·T·E of comparing every pair of sets, which took a minute for 61 layers of 256 experts
    at 4,096 tokens).
    """
    num_tokens = len(chosen)
    if num_tokens < 2:
        return math.nan
    member = np.zeros((num_experts + 1, num_tokens), dtype=bool)  # row E: DROPPED, a token set of nobody
    slots = np.where(chosen == DROPPED, num_experts, chosen)
    member[slots, np.arange(num_tokens)[:, None]] = True
    member[num_experts] = False
    bits = np.packbits(member, axis=1)  # [E + 1, ceil(T / 8)]: the tokens of each expert
    together = 0
    for start in range(0, num_tokens, OVERLAP_CHUNK):
        partners = np.bitwise_or.reduce(bits[slots[start : start + OVERLAP_CHUNK]], axis=1)  # [chunk, T / 8]
        together += int(np.bitwise_count(partners).sum(dtype=np.int64))
    with_itself = int((chosen != DROPPED).any(axis=1).sum())  # every token with an expert is its own partner
    return (together - with_itself) / (num_tokens * (num_tokens - 1))


def _text_chance(chosen: np.ndarray, sequence: np.ndarray, num_experts: int) -> float:
    """overlap_chance within each text, weighted by the text's neighbour pairs (as the observed rate is)."""
    texts, lengths = np.unique(sequence, return_counts=True)
    pairs = lengths - 1
    if not pairs.sum():
        return math.nan
    chances = [
        overlap_chance(chosen[sequence == text], num_experts) if n else 0.0
        for text, n in zip(texts, pairs, strict=True)
    ]
    return float(np.dot(chances, pairs) / pairs.sum())


def consecutive_repeats(trace: RoutingTrace) -> pd.DataFrame:
    """Mixtral §5 (Table 5, arXiv 2401.04088): how often token i+1 goes where token i went, per MoE layer.

    `first_choice`: both tokens' first choices are the same expert. `any_choice`: their top-k share at least
    one expert. Pairs are neighbours within one sequence; slots the model dropped never match. Two chances:
    `*_chance` is uniformly random top-k picks, 1/E and 1 - C(E-k, k) / C(E, k) (12.5% and 46% for Mixtral's 8
    experts, top-2); `*_text_chance` keeps this text's own load: two tokens drawn independently from the same
    text (overlap_chance). A layer above both routes by local context, not merely by favouring a few experts.
    """
    experts = trace.experts
    num_experts, top_k = trace.model.num_experts, experts.shape[2]
    sequence = trace.tokens.sequence
    neighbours = sequence[1:] == sequence[:-1]  # [T-1]: pair (i, i+1) is in one text
    before, after = experts[:, :-1][:, neighbours], experts[:, 1:][:, neighbours]  # [L, pairs, k]
    shared = (before[:, :, :, None] == after[:, :, None, :]) & (before[:, :, :, None] != DROPPED)
    first = shared[:, :, 0, 0]
    any_choice = shared.any(axis=(2, 3))
    pairs = int(neighbours.sum())

    def rate(hits: np.ndarray) -> np.ndarray:  # [L] share of pairs; NaN with no pairs (no data, not a rate of 0)
        return hits.mean(axis=1) if pairs else np.full(len(hits), np.nan)

    unknown = np.full(len(experts), np.nan)  # an unranked trace has no first choice: NaN, not a made-up rate
    return pd.DataFrame(
        {
            "layer": list(trace.model.moe_layers),
            "first_choice": rate(first) if trace.slots_ranked else unknown,
            "first_choice_chance": 1 / num_experts,
            "first_choice_text_chance": [_text_chance(layer[:, :1], sequence, num_experts) for layer in experts]
            if trace.slots_ranked
            else unknown,
            "any_choice": rate(any_choice),
            "any_choice_chance": 1 - math.comb(num_experts - top_k, top_k) / math.comb(num_experts, top_k),
            "any_choice_text_chance": [_text_chance(layer, sequence, num_experts) for layer in experts],
            "pairs": pairs,
        }
    )


def token_id_consistency(trace: RoutingTrace, min_count: int = 2, shuffles: int = 20, seed: int = 0) -> pd.DataFrame:
    """OpenMoE's context-independent routing (Xue et al. 2024, arXiv 2402.01739): does a token id go to the same
    first-choice expert wherever it appears in the text, per MoE layer?

    `consistency` is OLMoE's vocabulary specialization over ids seen at least `min_count` times. `shuffled` is
    the same with each layer's first choices shuffled across tokens (same load, no link to the id), averaged
    over `shuffles` seeded shuffles: routing by token id shows as consistency well above it.
    Columns: layer, consistency, shuffled, ids (how many ids were seen often enough).
    """
    rng = np.random.default_rng(seed)
    token_ids = trace.tokens.ids
    _, counts = np.unique(token_ids, return_counts=True)
    rows = []
    if not trace.slots_ranked:  # no first choice to be consistent about
        frame = pd.DataFrame({"layer": list(trace.model.moe_layers), "consistency": math.nan, "shuffled": math.nan})
        return frame.assign(ids=int((counts >= min_count).sum()))
    for row, layer in enumerate(trace.model.moe_layers):
        top1 = trace.experts[row, :, 0]
        versions = np.stack([top1, *(rng.permutation(top1) for _ in range(shuffles))])
        real, *shuffled = vocabulary_specialization_rows(token_ids, versions, min_count)
        rows.append((layer, real, float(np.mean(shuffled)) if shuffled else math.nan))
    frame = pd.DataFrame(rows, columns=["layer", "consistency", "shuffled"])
    frame["ids"] = int((counts >= min_count).sum())
    return frame


def continuation_marks(trace: RoutingTrace, continued_at: int | None) -> list[str]:
    """'own' for each token of the first text that starts at or after character `continued_at` (the model's
    own writing, from "Let the model continue"), '' elsewhere; all '' when nothing was continued."""
    if continued_at is None:
        return [""] * len(trace.tokens)
    own = (trace.tokens.sequence == 0) & (trace.tokens.offsets[:, 0] >= continued_at)
    return ["own" if flag else "" for flag in own.tolist()]
