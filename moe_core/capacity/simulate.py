"""Expert capacity, simulated on any routing trace: which slots a capacity-bound MoE would drop.

Why: GShard, Switch and OpenMoE give each expert a fixed budget of C slots per group of tokens, and a slot
that arrives after its expert's budget is spent is dropped (the token skips that expert; only the residual
and its other kept slots carry it). Running the rule on the trace of any model, capacity-bound or not,
shows which tokens would lose experts at a given capacity factor.

The order slots are served in decides who loses. With the GShard/OpenMoE `position` policy, rank-1 slots go
in token order, so the budget runs out late in each sequence: OpenMoE's "drop towards the end" (Xue et al.,
2024), which hurts the tokens after a long prompt most. Batch-priority routing (`score`, V-MoE; Riquelme
et al., 2021) serves the tokens with the highest raw top-1 router probability first instead. Rules: DESIGN.md,
"Capacity". `kept_slots` is the one implementation of the rule: the static simulation here and the
capacity-bound forward (moe_core.capacity.forward) both call it.

`simulate_capacity` is the vectorised implementation. `simulate_capacity_reference` transcribes the rules
as plain loops: it is the test oracle and the benchmark baseline, so keep it obvious rather than fast.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from moe_core.traces.types import DROPPED, RoutingTrace

# Valid settings, shared with the CLI and the app.
CAPACITY_FACTOR_MIN = 0.0  # exclusive: the factor must be > 0
CAPACITY_FACTOR_MAX = 64.0  # inclusive: larger values are almost surely typos (125 for 1.25)
MIN_CAPACITY_MIN = 1  # inclusive
# Capacity groups: each text; the whole batch; or as a model serves while it writes, each text's prompt in one
# prefill group and each generated token alone (a decode step holds one token per sequence, so its C is that of
# one token). The capacity-bound forward re-runs the text as one prompt: it takes the first two.
GROUPS = ("sequence", "batch", "steps")
FORWARD_GROUPS = ("sequence", "batch")


@dataclass(frozen=True, eq=False)
class CapacityResult:
    """What a capacity limit does to one trace. Pure numpy; shapes use the trace's L, T, k, E.

    G is the number of groups (sequences for group="sequence", 1 for "batch", each sequence's prompt plus each
    generated token for "steps"), P the longest sequence
    (max position + 1). Slots the model itself dropped (DROPPED) are not assignments: they are never kept,
    never counted in `demand` or `fill`, and left out of both drop rates.
    """

    capacity_factor: float
    policy: str
    group: str
    min_capacity: int
    order: np.ndarray  # [L, T] int: the tokens of each layer in the order the policy serves them (each rank)
    group_index: np.ndarray  # [T] int: the group of each token (index into the G axis)
    group_sizes: np.ndarray  # [G] int: tokens per group
    capacity: np.ndarray  # [L, G] int: slots each expert accepts, per layer and group
    kept: np.ndarray  # [L, T, k] bool: the slot survived the capacity limit
    fill: np.ndarray  # [L, E] int: kept slots per expert, summed over groups
    demand: np.ndarray  # [L, E] int: slots routed to each expert before the limit
    fully_dropped: np.ndarray  # [L, T] bool: the token had assignments and lost all of them
    drop_rate_by_position: np.ndarray  # [L, P] float: dropped / assigned slots at each position (NaN if none)
    dropped_token_rate_by_position: np.ndarray  # [L, P] float: fully dropped / tokens with assignments (NaN if none)

    @property
    def capacity_per_layer(self) -> np.ndarray:
        """[L] int: the capacity of the largest group in each layer.

        That is the one capacity when group="batch" or all sequences have the same length (what a reader
        wants to see as "C = …"), and the largest of them otherwise; `capacity` has the per-group values.
        With no groups (an empty trace) it is min_capacity.
        """
        if self.capacity.shape[1] == 0:
            return np.full(self.capacity.shape[0], self.min_capacity, dtype=np.int64)
        return self.capacity.max(axis=1)

    @property
    def drop_rate(self) -> np.ndarray:
        """[L] float: share of assigned slots dropped in each layer (NaN if a layer has no assignments)."""
        demand = self.demand.sum(axis=1)
        dropped = demand - self.fill.sum(axis=1)
        return _ratio(dropped, demand)


def expert_capacity(
    capacity_factor: float, top_k: int, num_tokens: int, num_experts: int, min_capacity: int = 1
) -> int:
    """C = max(min_capacity, ceil(capacity_factor · k · T / E)), computed exactly.

    The factor is read as the decimal it prints as, so 1.1 · 1 · 50 / 5 is exactly 11. Float arithmetic
    gives 11.000000000000002 there, which a plain ceil would turn into 12.
    """
    check_capacity_factor(capacity_factor)
    _check_min_capacity(min_capacity)
    factor = _decimal_fraction(float(capacity_factor))
    # ceil(a / b) for positive integers, without a float or a Fraction in between.
    return max(min_capacity, -(-factor.numerator * top_k * num_tokens // (factor.denominator * num_experts)))


@functools.lru_cache(maxsize=256)
def _decimal_fraction(value: float) -> Fraction:
    """The exact fraction of the decimal `value` prints as (1.1 -> 11/10); cached, as parsing costs ~10 µs."""
    return Fraction(repr(value))


def simulate_capacity(
    trace: RoutingTrace,
    capacity_factor: float,
    policy: str = "position",
    group: str = "sequence",
    min_capacity: int = 1,
) -> CapacityResult:
    """Apply an expert capacity limit to `trace` (vectorised; same result as `simulate_capacity_reference`).

    Each layer on its own, on the routing of an uncapped pass: the first-order picture. `policy` is a key of
    SERVING_ORDERS; the `score` policy ranks tokens by their raw top-1 router probability (`top1_probability`),
    exactly as the capacity-bound forward (moe_core.capacity.forward) does.
    """
    _validate(trace, capacity_factor, policy, group, min_capacity)
    experts = np.asarray(trace.experts)
    top_k = experts.shape[2]
    group_index, group_sizes = _groups(trace, group)
    group_capacity = _group_capacities(capacity_factor, top_k, group_sizes, trace.model.num_experts, min_capacity)
    order = SERVING_ORDERS[policy](serving_priority(trace, policy))
    kept, per_key = kept_slots(experts, order, group_index, group_capacity, trace.model.num_experts, trace.slots_ranked)
    demand = per_key.sum(axis=1)
    fill = np.minimum(per_key, group_capacity[:, None]).sum(axis=1)
    capacity = np.tile(group_capacity, (experts.shape[0], 1))
    return _summarise(
        trace, capacity_factor, policy, group, min_capacity, order, group_index, group_sizes, capacity, kept, fill,
        demand,
    )  # fmt: skip


def kept_slots(
    experts: np.ndarray,
    order: np.ndarray,
    group_index: np.ndarray,
    group_capacity: np.ndarray,
    num_experts: int,
    by_rank: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The capacity rule itself, shared by the static simulation and the capacity-bound forward.

    experts [L, T, k] (DROPPED allowed), order [L, T] (tokens in serving order), group_index [T], group_capacity
    [G]. Returns kept [L, T, k] and the slots routed per (layer, group, expert) [L, G, E] before the limit.
    Rank r is served after every rank below it; within a rank, tokens go in `order`. `by_rank=False` (a trace
    whose slots are a set, not a ranking) serves each token's slots together, tokens in `order`: Megatron-Core's
    own position drop policy, and the only order that reads no rank.

    Each slot gets one unsigned integer: its key (layer, group, expert) in the high bits and its serving
    number in its layer (rank · T + the token's place in `order`) in the low bits. One sort of these
    puts every key's slots together in serving order, so block boundaries come from a binary search and
    the slot at a block's start + C is the first one its expert turns away; a slot is kept iff its integer
    is below that one. The integers are unique, so the sort need not be stable and numpy's SIMD sort serves.
    """
    num_layers, num_tokens, top_k = experts.shape
    num_groups = len(group_capacity)

    # Bucket 0 holds the slots the model dropped itself (capacity 0); expert e is bucket e + 1.
    num_buckets = num_experts + 1
    num_keys = num_layers * num_groups * num_buckets
    serving_bits = max(top_k * num_tokens - 1, 0).bit_length()
    packed_type = _packed_type(num_keys, serving_bits)
    shift = packed_type(serving_bits)
    layer_group = np.arange(num_layers, dtype=packed_type)[:, None] * num_groups + group_index.astype(packed_type)
    serving = _serving_place(order).astype(packed_type)
    # packed = (key << shift) + serving number, built in place: key = layer_group · num_buckets + expert + 1.
    token_base = ((layer_group * packed_type(num_buckets) + packed_type(1)) << shift) + serving  # [L, T]
    if by_rank:
        rank_base = np.arange(top_k, dtype=packed_type) * packed_type(num_tokens)  # rank r is served after ranks < r
    else:  # token t's slots are t·k … t·k + k − 1: the serving place times k, plus the slot
        serving = serving * packed_type(top_k)
        token_base = ((layer_group * packed_type(num_buckets) + packed_type(1)) << shift) + serving
        rank_base = np.arange(top_k, dtype=packed_type)
    packed = experts.astype(packed_type)  # DROPPED wraps to the type's max, and + 1 below to bucket 0
    packed <<= shift
    for rank in range(top_k):  # one add per rank: numpy broadcasts over a short last axis slowly
        packed[:, :, rank] += token_base + rank_base[rank]

    # Keys are layer-major, so sorting each layer's row sorts the whole array (and rows fit the cache better).
    ordered = np.sort(packed.reshape(num_layers, -1), axis=1).ravel()
    key_starts = np.arange(num_keys + 1, dtype=packed_type) << shift
    block = np.searchsorted(ordered, key_starts)  # [num_keys + 1]: where each key's slots start
    key_capacity = np.zeros((num_layers, num_groups, num_buckets), dtype=np.int64)
    key_capacity[:, :, 1:] = group_capacity[:, None]
    key_capacity = key_capacity.ravel()
    # The first slot each key drops, or (where nothing is turned away) the next key's first slot.
    first_dropped = np.append(ordered, np.iinfo(packed_type).max)[np.minimum(block[:-1] + key_capacity, block[1:])]
    kept = packed < first_dropped[(packed >> shift).astype(np.intp)]  # intp: numpy indexes fastest with it
    per_key = np.diff(block).reshape(num_layers, num_groups, num_buckets)[:, :, 1:]
    return kept, per_key


def expert_choice(probs: np.ndarray, group_index: np.ndarray, group_capacity: np.ndarray) -> np.ndarray:
    """Expert-choice routing (Zhou et al. 2022): [T, E] bool, each expert takes the C tokens of each group with
    the highest router probability, ties by position. A token may be taken by 0 … E experts."""
    taken = np.zeros(probs.shape, dtype=bool)
    for group, capacity in enumerate(group_capacity.tolist()):
        members = np.flatnonzero(group_index == group)
        ranked = np.argsort(-probs[members], axis=0, kind="stable")[:capacity]  # stable: ties by position
        taken[members[ranked], np.arange(probs.shape[1])[None, :]] = True
    return taken


def simulate_capacity_reference(
    trace: RoutingTrace,
    capacity_factor: float,
    policy: str = "position",
    group: str = "sequence",
    min_capacity: int = 1,
) -> CapacityResult:
    """The capacity rules as plain loops: the oracle `simulate_capacity` is tested against, and its baseline."""
    _validate(trace, capacity_factor, policy, group, min_capacity)
    num_layers, num_tokens, top_k = trace.experts.shape
    num_experts = trace.model.num_experts
    experts = trace.experts.tolist()
    probs = trace.probs.tolist() if policy in POLICY_NEEDS_SCORES else [[[]] * num_tokens] * num_layers
    top1 = [[math.nan if not p or any(map(math.isnan, p)) else max(p) for p in layer] for layer in probs]
    sequence = trace.tokens.sequence.tolist()
    position = trace.tokens.position.tolist()

    members: dict[int, list[int]] = {}  # group key -> its tokens, in token order
    for t in range(num_tokens):
        members.setdefault(0 if group == "batch" else sequence[t], []).append(t)
    if group == "batch":
        members.setdefault(0, [])
    groups = [members[key] for key in sorted(members)]
    group_of = [0] * num_tokens
    for g, tokens in enumerate(groups):
        for t in tokens:
            group_of[t] = g
    group_capacity = [
        expert_capacity(capacity_factor, top_k, len(tokens), num_experts, min_capacity) for tokens in groups
    ]

    kept = [[[False] * top_k for _ in range(num_tokens)] for _ in range(num_layers)]
    orders = []
    for layer in range(num_layers):
        if policy == "position":
            layer_order = list(range(num_tokens))
        elif policy == "reversed":
            layer_order = list(range(num_tokens))[::-1]
        else:  # highest top-1 probability first, ties by position, NaN last
            layer_order = sorted(
                range(num_tokens), key=lambda t: (math.inf if math.isnan(top1[layer][t]) else -top1[layer][t], t)
            )
        orders.append(layer_order)
        for g, tokens in enumerate(groups):
            members = set(tokens)
            order = [t for t in layer_order if t in members]
            accepted = [0] * num_experts
            if trace.slots_ranked:  # every first choice, then every second choice, …
                slots = [(t, rank) for rank in range(top_k) for t in order]
            else:  # a set per token: its slots together
                slots = [(t, rank) for t in order for rank in range(top_k)]
            for t, rank in slots:
                expert = experts[layer][t][rank]
                if expert != DROPPED and accepted[expert] < group_capacity[g]:
                    accepted[expert] += 1
                    kept[layer][t][rank] = True

    num_positions = max(position) + 1 if num_tokens else 0
    fill = [[0] * num_experts for _ in range(num_layers)]
    demand = [[0] * num_experts for _ in range(num_layers)]
    fully_dropped = [[False] * num_tokens for _ in range(num_layers)]
    slots_at = [[0] * num_positions for _ in range(num_layers)]
    dropped_at = [[0] * num_positions for _ in range(num_layers)]
    tokens_at = [[0] * num_positions for _ in range(num_layers)]
    fully_at = [[0] * num_positions for _ in range(num_layers)]
    for layer in range(num_layers):
        for t in range(num_tokens):
            p = position[t]
            assigned = [rank for rank in range(top_k) if experts[layer][t][rank] != DROPPED]
            for rank in assigned:
                expert = experts[layer][t][rank]
                demand[layer][expert] += 1
                slots_at[layer][p] += 1
                if kept[layer][t][rank]:
                    fill[layer][expert] += 1
                else:
                    dropped_at[layer][p] += 1
            if assigned:
                tokens_at[layer][p] += 1
                if not any(kept[layer][t][rank] for rank in assigned):
                    fully_dropped[layer][t] = True
                    fully_at[layer][p] += 1

    def rate(part: list[list[int]], whole: list[list[int]]) -> np.ndarray:
        rows = [
            [a / b if b else math.nan for a, b in zip(pr, wr, strict=True)] for pr, wr in zip(part, whole, strict=True)
        ]
        return np.array(rows, dtype=np.float64).reshape(num_layers, num_positions)

    return CapacityResult(
        capacity_factor=float(capacity_factor),
        policy=policy,
        group=group,
        min_capacity=int(min_capacity),
        order=np.array(orders, dtype=np.int64).reshape(num_layers, num_tokens),
        group_index=np.array(group_of, dtype=np.int64),
        group_sizes=np.array([len(tokens) for tokens in groups], dtype=np.int64),
        capacity=np.array([group_capacity] * num_layers, dtype=np.int64).reshape(num_layers, len(groups)),
        kept=np.array(kept, dtype=bool).reshape(num_layers, num_tokens, top_k),
        fill=np.array(fill, dtype=np.int64).reshape(num_layers, num_experts),
        demand=np.array(demand, dtype=np.int64).reshape(num_layers, num_experts),
        fully_dropped=np.array(fully_dropped, dtype=bool).reshape(num_layers, num_tokens),
        drop_rate_by_position=rate(dropped_at, slots_at),
        dropped_token_rate_by_position=rate(fully_at, tokens_at),
    )


def _summarise(
    trace: RoutingTrace,
    capacity_factor: float,
    policy: str,
    group: str,
    min_capacity: int,
    order: np.ndarray,
    group_index: np.ndarray,
    group_sizes: np.ndarray,
    capacity: np.ndarray,
    kept: np.ndarray,
    fill: np.ndarray,
    demand: np.ndarray,
) -> CapacityResult:
    """Add the per-token and by-position views of the kept mask (vectorised) and wrap up the result."""
    assigned = np.asarray(trace.experts) != DROPPED
    num_layers, num_tokens, top_k = assigned.shape
    num_assigned, num_kept = _count_over_ranks(assigned), _count_over_ranks(kept)
    has_assignment = num_assigned > 0
    fully_dropped = has_assignment & (num_kept == 0)
    position = np.asarray(trace.tokens.position, dtype=np.int64)
    num_positions = int(position.max()) + 1 if num_tokens else 0
    at = (np.arange(num_layers)[:, None] * num_positions + position).ravel()  # (layer, token) -> (layer, position)

    def per_position(values: np.ndarray) -> np.ndarray:
        counts = np.bincount(at, weights=values.ravel(), minlength=num_layers * num_positions)
        return counts.reshape(num_layers, num_positions)

    if assigned.all():  # the usual case, no slot dropped by the model: the totals are counts of positions
        tokens_at = np.broadcast_to(np.bincount(position, minlength=num_positions), (num_layers, num_positions))
        slots_at, assigned_tokens_at = top_k * tokens_at, tokens_at
    else:
        slots_at, assigned_tokens_at = per_position(num_assigned), per_position(has_assignment)

    return CapacityResult(
        capacity_factor=float(capacity_factor),
        policy=policy,
        group=group,
        min_capacity=int(min_capacity),
        order=np.asarray(order, dtype=np.int64),
        group_index=group_index,
        group_sizes=group_sizes,
        capacity=capacity,
        kept=kept,
        fill=fill,
        demand=demand,
        fully_dropped=fully_dropped,
        drop_rate_by_position=_ratio(per_position(num_assigned - num_kept), slots_at),
        dropped_token_rate_by_position=_ratio(per_position(fully_dropped), assigned_tokens_at),
    )


_WORD_OF_BYTES = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _count_over_ranks(mask: np.ndarray) -> np.ndarray:
    """[L, T] true entries of an [L, T, k] bool mask.

    numpy's reduce over a short last axis is slow. When k bools make one machine word, that word's popcount
    is the count (a bool is the byte 0 or 1); otherwise a loop over the k ranks is still 5-20× faster.
    """
    word = _WORD_OF_BYTES.get(mask.shape[2])
    if word is not None and mask.flags.c_contiguous:
        return np.bitwise_count(mask.view(word)[:, :, 0]).astype(np.int64)
    count = mask[:, :, 0].astype(np.int64)
    for rank in range(1, mask.shape[2]):
        count += mask[:, :, rank]
    return count


def _ratio(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """part / whole as float64, NaN where whole is 0 (no data there, not a rate of 0)."""
    out = np.full(np.shape(whole), np.nan)
    np.divide(part, whole, out=out, where=np.asarray(whole) != 0)
    return out


def _groups(trace: RoutingTrace, group: str) -> tuple[np.ndarray, np.ndarray]:
    """Each token's group index [T] and the group sizes [G]; groups are numbered by sequence id."""
    num_tokens = len(trace.tokens)
    if group == "batch":
        return np.zeros(num_tokens, dtype=np.int64), np.array([num_tokens], dtype=np.int64)
    sequence = np.asarray(trace.tokens.sequence)
    if group == "steps":  # (sequence, -1) for a prompt's tokens, (sequence, position) for each generated one
        step = np.where(trace.generated(), np.asarray(trace.tokens.position), -1)
        _, group_index = np.unique(np.stack([sequence, step], axis=1), axis=0, return_inverse=True)
        group_index = group_index.astype(np.int64).reshape(num_tokens)
        return group_index, np.bincount(group_index).astype(np.int64)
    if np.all(sequence[1:] >= sequence[:-1]):  # the usual layout, sequence by sequence: no sort needed
        group_index = np.zeros(num_tokens, dtype=np.int64)
        np.cumsum(sequence[1:] != sequence[:-1], out=group_index[1:])
    else:
        _, group_index = np.unique(sequence, return_inverse=True)
        group_index = group_index.astype(np.int64).reshape(num_tokens)
    return group_index, np.bincount(group_index).astype(np.int64)


def _group_capacities(
    capacity_factor: float, top_k: int, group_sizes: np.ndarray, num_experts: int, min_capacity: int
) -> np.ndarray:
    """[G] capacity of each group, computed exactly once per distinct group size."""
    sizes = group_sizes.tolist()
    per_size = {size: expert_capacity(capacity_factor, top_k, size, num_experts, min_capacity) for size in set(sizes)}
    return np.array([per_size[size] for size in sizes], dtype=np.int64)


def top1_probability(probs: np.ndarray) -> np.ndarray:
    """[L, T] each token's raw top-1 router probability: the largest softmax/sigmoid score, before any
    renormalisation of the chosen weights (V-MoE's priority; renormalised weights would rank a confident
    top-1 and an even split alike when k = 1)."""
    probs = np.asarray(probs)
    return probs.max(axis=-1) if probs.shape[-1] else np.full(probs.shape[:-1], np.nan)


def serving_priority(trace: RoutingTrace, policy: str) -> np.ndarray:
    """[L, T] what the serving order of `policy` ranks by: the raw top-1 probability where the policy reads scores,
    zeros where it reads only positions (so a trace without scores still runs the position policy)."""
    if policy not in POLICY_NEEDS_SCORES:
        return np.zeros(trace.experts.shape[:2])
    trace.require("probs", needed_by=f"the {policy} policy")
    return top1_probability(trace.probs)


def score_order(priority: np.ndarray) -> np.ndarray:
    """[L, T] the tokens of each layer by priority, highest first, ties by position, NaN last (with -inf).

    Packs each token's descending-priority key (32 bits) above its position (32 bits): the packed values are
    unique, so a plain SIMD sort of them gives the tie-broken order without a stable float sort.
    """
    priority = np.asarray(priority)
    position = np.arange(priority.shape[1], dtype=np.uint64)
    packed = (_descending_key(priority).astype(np.uint64) << np.uint64(32)) | position
    return (np.sort(packed, axis=1) & np.uint64(0xFFFFFFFF)).astype(np.int64)


def position_order(priority: np.ndarray) -> np.ndarray:
    """[L, T] tokens in position order, whatever their priority (GShard, OpenMoE)."""
    return np.broadcast_to(np.arange(priority.shape[1], dtype=np.int64), priority.shape)


def reversed_order(priority: np.ndarray) -> np.ndarray:
    """[L, T] the last token first: a control, not a real policy. Drops then pile up at the start, which shows
    that "drop towards the end" follows the serving order, not the tokens."""
    return np.broadcast_to(np.arange(priority.shape[1] - 1, -1, -1, dtype=np.int64), priority.shape)


@dataclass(frozen=True)
class Policy:
    """One rule for which slots an expert keeps when more than C tokens choose it: the one table that the
    simulation, the capacity-bound forward, the command line, links and the app read."""

    name: str
    meaning: str  # one line, for --help and the app's tooltip
    order: Callable[[np.ndarray], np.ndarray] | None  # serving order from raw top-1 probabilities [L, T] -> [L, T];
    # None: the experts choose their tokens (expert-choice), which only the capacity-bound forward can run
    reads_scores: bool  # needs the router's scores (a compact trace may lack them)
    offered: bool  # a visitor picks it; False: a control curve the analyses draw


EXPERT_CHOICE = "expert-choice"
SCORE_MEANING = "most confident first: batch-prioritized routing (V-MoE, Riquelme et al. 2021)"
REVERSED_MEANING = "the last token first: a control, drops then pile up at the start"
POLICY_TABLE = (
    Policy("position", "first come, first served (GShard, Switch, OpenMoE)", position_order, False, True),
    Policy("score", SCORE_MEANING, score_order, True, True),
    Policy("reversed", REVERSED_MEANING, reversed_order, False, False),
    Policy(EXPERT_CHOICE, "each expert takes its C highest-scoring tokens (Zhou et al. 2022)", None, True, True),
)
POLICY = {policy.name: policy for policy in POLICY_TABLE}
SERVING_ORDERS = {p.name: p.order for p in POLICY_TABLE if p.order is not None}  # what the simulation can run
POLICY_NEEDS_SCORES = frozenset(p.name for p in POLICY_TABLE if p.reads_scores)
POLICIES = tuple(p.name for p in POLICY_TABLE if p.offered and p.order is not None)  # a visitor's simulation
FORWARD_POLICIES = tuple(p.name for p in POLICY_TABLE if p.offered)  # the capacity-bound forward: expert-choice too


def policy_help(names: tuple[str, ...]) -> str:
    """`names` with their meanings, one sentence each: the --policy help and the app's slot-order tooltip."""
    return " ".join(f"{name}: {POLICY[name].meaning}." for name in names)


def _descending_key(values: np.ndarray) -> np.ndarray:
    """uint32 keys in the reverse order of `values`: equal values (-0.0 and 0.0 too) share a key; NaN ties -inf.

    Floats of 32 bits or fewer map straight to their IEEE bits, flipped so that unsigned order is float order;
    wider values are ranked (a sort, slower but exact).
    """
    if values.dtype.kind == "f" and values.dtype.itemsize <= 4:
        value = np.where(np.isnan(values), -np.inf, values).astype(np.float32) + np.float32(0)  # -0.0 -> 0.0
        bits = value.view(np.uint32)
        ascending = np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31))
        return ~ascending
    value = np.where(np.isnan(values), -np.inf, values.astype(np.float64))
    _, rank = np.unique(-value, return_inverse=True)
    return rank.reshape(values.shape).astype(np.uint32)


def _serving_place(order: np.ndarray) -> np.ndarray:
    """[L, T] each token's place in its layer's serving order: the inverse of the permutation `order`."""
    num_layers, num_tokens = order.shape
    place = np.empty(order.size, dtype=np.int64)
    place[(order + np.arange(num_layers)[:, None] * num_tokens).ravel()] = np.tile(np.arange(num_tokens), num_layers)
    return place.reshape(order.shape)


def _packed_type(num_keys: int, serving_bits: int) -> type[np.unsignedinteger]:
    """The narrowest unsigned type holding key << serving_bits for every key below num_keys (32 bits sort fastest)."""
    bits = num_keys.bit_length() + serving_bits
    if bits <= 32:
        return np.uint32
    if bits <= 64:
        return np.uint64
    raise ValueError(f"trace too large to simulate: {num_keys} (layer, group, expert) keys need {bits} bits > 64")


def check_capacity_factor(capacity_factor: float) -> None:
    """Raise ValueError unless 0 < capacity_factor <= CAPACITY_FACTOR_MAX (shared with the CLI and the app)."""
    valid = isinstance(capacity_factor, numbers.Real) and not isinstance(capacity_factor, bool)
    if not (valid and CAPACITY_FACTOR_MIN < float(capacity_factor) <= CAPACITY_FACTOR_MAX):
        raise ValueError(
            f"capacity_factor must be a number in ({CAPACITY_FACTOR_MIN:g}, {CAPACITY_FACTOR_MAX:g}], "
            f"got {capacity_factor!r}; typical values are 1.0 to 2.0, below 1 drops slots even when balanced"
        )


def _check_min_capacity(min_capacity: int) -> None:
    valid = isinstance(min_capacity, numbers.Integral) and not isinstance(min_capacity, bool)
    if not (valid and min_capacity >= MIN_CAPACITY_MIN):
        raise ValueError(f"min_capacity must be an integer >= {MIN_CAPACITY_MIN}, got {min_capacity!r}")


def check_group(group: str, groups: tuple[str, ...] = GROUPS) -> None:
    """The one check of a capacity group name, for the simulation (GROUPS) and the capacity-bound forward
    (FORWARD_GROUPS: it runs the text as one prompt, with no decode steps to group by)."""
    if group not in groups:
        raise ValueError(f"group must be one of {', '.join(groups)}; got {group!r}")


def _validate(trace: RoutingTrace, capacity_factor: float, policy: str, group: str, min_capacity: int) -> None:
    """Reject settings and traces the simulation cannot give a meaningful answer for, saying what is valid."""
    check_capacity_factor(capacity_factor)
    _check_min_capacity(min_capacity)
    if policy not in SERVING_ORDERS:
        hint = "; expert-choice needs the capacity-bound forward (counterfactual)" if policy == EXPERT_CHOICE else ""
        raise ValueError(f"policy must be one of {', '.join(SERVING_ORDERS)}; got {policy!r}{hint}")
    check_group(group)
    if policy in POLICY_NEEDS_SCORES:
        trace.require("probs", needed_by=f"the {policy} policy")
    experts = np.asarray(trace.experts)
    if not np.issubdtype(experts.dtype, np.integer):
        raise ValueError(f"trace.experts must hold integers, got dtype {experts.dtype}")
    num_experts = trace.model.num_experts
    if experts.size and (experts.min() < DROPPED or experts.max() >= num_experts):
        raise ValueError(
            f"trace.experts must be in [0, {num_experts}) or DROPPED ({DROPPED}); "
            f"found values from {experts.min()} to {experts.max()}"
        )
