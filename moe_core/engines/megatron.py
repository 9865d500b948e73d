"""Megatron-Core's router trace (`--moe-routing-trace-path`): one JSONL file per rank, `router_trace_rank{r}.jsonl`.

Each line is one (step, block, layer) on one rank: {"step", "stage", "block", "layer", "rank", "num_tokens",
"topk", "top_indices": [[...] × num_tokens]}. There are no token ids and no sequence boundaries, so each sequence
of the trace is one step on one rank (tokens in Megatron's own order). Ranks whose routing repeats another's at
every step (tensor-parallel copies) are kept once. MTP records (block "mtp") are left out, with a note.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from typing import Any

import numpy as np

from moe_core.engines.common import Dump, ModelHints, Payload, Segment, assemble, int_grid, parse_json
from moe_core.traces.checks import TraceFormatError, check_limits, whole
from moe_core.traces.types import RoutingTrace

ENGINE = "Megatron-Core"
FIELDS = ("layer", "num_tokens", "topk", "top_indices")
Key = tuple[int, int]  # (step, rank)


def _lines(payload: Payload) -> list[dict]:
    """The JSONL records of one file, each line checked to be an object."""
    records = []
    for number, line in enumerate(payload.data.splitlines(), start=1):
        if not line.strip():
            continue
        record = parse_json(line, f"{payload.name} line {number}")
        if type(record) is not dict:
            raise TraceFormatError(f"{payload.name[:80]} line {number} is not a JSON object")
        missing = [name for name in FIELDS if name not in record]
        if missing:
            raise TraceFormatError(f"{payload.name[:80]} line {number} lacks {', '.join(missing)}")
        records.append({**record, "_where": f"{payload.name[:80]} line {number}"})
    return records


def _rank(record: dict, default: int) -> int:
    """The record's own rank (every Megatron record has one), else the file's place in the list."""
    return whole(record.get("rank", default), f"{record['_where']}'s rank", 0)


def _indices(record: dict) -> np.ndarray:
    """top_indices as [num_tokens, topk], matching the record's own counts."""
    where = record["_where"]
    count, topk = whole(record["num_tokens"], f"{where}'s num_tokens", 0), whole(record["topk"], f"{where}'s topk", 1)
    check_limits(where, tokens=count, k=topk)
    indices = int_grid(record["top_indices"], f"{where}'s top_indices", depth=2)
    if count == 0:
        return np.zeros((0, topk), dtype=np.int64)
    if indices.shape != (count, topk):
        raise TraceFormatError(f"{where}: top_indices has shape {list(indices.shape)}, not [{count}, {topk}]")
    return indices


def _grouped(payloads: list[Payload], notes: list[str]) -> dict[Key, dict[int, np.ndarray]]:
    """(step, rank) -> layer -> [num_tokens, topk], decoder records only."""
    groups: dict[Key, dict[int, np.ndarray]] = defaultdict(dict)
    skipped = 0
    for file_number, payload in enumerate(payloads):
        for record in _lines(payload):
            if record.get("block", "decoder") != "decoder" or "mtp_idx" in record:
                skipped += 1
                continue
            key = (whole(record.get("step", 0), f"{record['_where']}'s step", 0), _rank(record, file_number))
            layer = whole(record["layer"], f"{record['_where']}'s layer", 0)
            if layer in groups[key]:
                raise TraceFormatError(f"{record['_where']}: layer {layer} appears twice for step {key[0]}, rank "
                                       f"{key[1]}")  # fmt: skip
            groups[key][layer] = _indices(record)
    if skipped:
        notes.append(f"{skipped} multi-token-prediction (MTP) records left out: only decoder layers are shown")
    if not groups:
        raise TraceFormatError("the Megatron-Core trace holds no decoder records")
    return groups


MAX_RANKS = 65_536  # more ranks than any training run writes trace files for
MAX_PIPELINE_STAGES = 256  # more stages than any run has layers to split


def _stage_layers(groups: dict[Key, dict[int, np.ndarray]], hints: ModelHints, notes: list[str]) -> dict[Key, dict]:
    """(step, rank within its stage) -> model layer -> rows. Megatron numbers a stage's layers from 0 (dense ones
    counted): with P pipeline stages, rank r is stage r // (ranks / P) and its layer i is the model's layer
    stage · (layers / P) + i; the stages of one step routed the same tokens, so they are one sequence."""
    stages = hints.pipeline_stages
    if not 1 <= stages <= MAX_PIPELINE_STAGES:
        raise TraceFormatError(f"{stages} pipeline stages: give 1 to {MAX_PIPELINE_STAGES}")
    ranks = sorted({rank for _, rank in groups})
    if len(ranks) > MAX_RANKS:
        raise TraceFormatError(f"the Megatron-Core trace names {len(ranks):,} ranks; at most {MAX_RANKS:,} are read")
    if stages == 1:
        return groups
    world = ranks[-1] + 1
    if world % stages:
        raise TraceFormatError(f"{world} ranks do not split into {stages} pipeline stages (give every rank's file)")
    per_stage_ranks = world // stages
    local_max = max(layer for layers in groups.values() for layer in layers)
    total = hints.num_layers if hints.num_layers is not None else stages * (local_max + 1)
    if total % stages:
        raise TraceFormatError(f"{hints.name} has {total} layers, not an even split into {stages} pipeline stages "
                               "(uneven first/last stages are not read)")  # fmt: skip
    per_stage_layers = total // stages
    if local_max >= per_stage_layers:
        raise TraceFormatError(f"layer {local_max} is past a stage's {per_stage_layers} layers: are there "
                               f"{stages} pipeline stages?")  # fmt: skip
    merged: dict[Key, dict[int, np.ndarray]] = defaultdict(dict)
    for (step, rank), layers in groups.items():
        stage, place = divmod(rank, per_stage_ranks)
        merged[(step, place)].update({stage * per_stage_layers + local: rows for local, rows in layers.items()})
    notes.append(f"{stages} pipeline stages of {per_stage_ranks} ranks merged: each stage's local layer numbers "
                 f"offset by {per_stage_layers} per stage")  # fmt: skip
    if hints.num_layers is None:
        notes.append(f"layers per stage taken as {per_stage_layers} (the highest local layer + 1): pass --model")
    return merged


def _complete(groups: dict[Key, dict], hints: ModelHints, notes: list[str]) -> tuple[tuple[int, ...], dict]:
    """The MoE layers (the model's, else every layer the trace names) and the (step, rank)s that have them all.
    Megatron's tracer skips a layer whose routing map lost slots to capacity, so such a step is left out, said."""
    named = sorted({layer for layers in groups.values() for layer in layers})
    if hints.moe_layers is not None:
        strangers = [layer for layer in named if layer not in hints.moe_layers]
        if strangers:
            local = " (pipeline stages number layers from 0: give the run's pipeline stages, --pipeline-stages)"
            hint = "" if hints.pipeline_stages > 1 else local
            raise TraceFormatError(f"the trace names layer {strangers[0]}, not an MoE layer of {hints.name} "
                                   f"{list(hints.moe_layers)[:8]}{hint}")  # fmt: skip
        order = tuple(hints.moe_layers)
    else:
        order = tuple(named)
    kept = {key: layers for key, layers in groups.items() if tuple(sorted(layers)) == order}
    partial = sorted(set(groups) - set(kept))
    if partial and not kept:
        step, rank = partial[0]
        lacking = sorted(set(order) - set(groups[partial[0]]))
        raise TraceFormatError(f"no step has every MoE layer: step {step} on rank {rank} lacks layers {lacking[:8]} "
                               "(the tracer skips a layer that dropped tokens under capacity; a pipeline stage's "
                               "file may be missing)")  # fmt: skip
    if partial:
        shown = ", ".join(f"step {s} rank {r} (lacks {sorted(set(order) - set(groups[(s, r)]))[:4]})"
                          for s, r in partial[:3])  # fmt: skip
        notes.append(f"{len(partial)} step(s) left out for a missing layer: {shown}; Megatron's tracer skips a "
                     "layer whose routing map dropped tokens under capacity")  # fmt: skip
    return order, kept


def _step_rows(key: Key, layers: dict[int, np.ndarray], order: tuple[int, ...]) -> np.ndarray:
    """[num_tokens, L, topk] of one (step, rank); every layer must have routed the same tokens."""
    shapes = {layers[layer].shape for layer in order}
    if len(shapes) > 1:
        raise TraceFormatError(f"step {key[0]} on rank {key[1]}: its layers routed different numbers of tokens")
    return np.stack([layers[layer] for layer in order], axis=1)


def _replicas(rows: dict[Key, np.ndarray]) -> set[int]:
    """Ranks whose routing equals a lower rank's at every step (tensor-parallel copies): one digest per rank of all
    its steps, so the merge is linear in the records (pairwise comparison took 87 s for 5,000 ranks)."""
    digests: dict[int, Any] = defaultdict(hashlib.sha256)
    for (step, rank), array in sorted(rows.items()):
        digests[rank].update(f"{step}:{array.shape}".encode())
        digests[rank].update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    first: dict[bytes, int] = {}
    copies = set()
    for rank in sorted(digests):
        digest = digests[rank].digest()
        if digest in first:
            copies.add(rank)
        else:
            first[digest] = rank
    return copies


def read_many(payloads: list[Payload], hints: ModelHints) -> RoutingTrace:
    """The compact trace of one or more ranks' JSONL files, merged."""
    notes: list[str] = []
    groups = _stage_layers(_grouped(payloads, notes), hints, notes)
    order, complete = _complete(groups, hints, notes)
    rows = {key: _step_rows(key, layers, order) for key, layers in sorted(complete.items())}
    topks = {r.shape[2] for r in rows.values()}
    if len(topks) > 1:
        raise TraceFormatError(f"the Megatron-Core records disagree on topk: {sorted(topks)}")
    copies = _replicas(rows) if len({rank for _, rank in rows}) > 1 else set()
    if copies:
        shown = ", ".join(map(str, sorted(copies)[:8])) + (f" and {len(copies) - 8} more" if len(copies) > 8 else "")
        notes.append(f"ranks {shown} repeat a lower rank's routing at every step (tensor-parallel copies): kept once")
    kept = [(key, r) for key, r in rows.items() if key[1] not in copies]
    notes.append("Megatron-Core's trace has no token ids or sequence boundaries: each sequence here is one step on "
                 "one rank (" + ", ".join(f"step {s} rank {r}" for (s, r), _ in kept[:4]) +
                 (", …" if len(kept) > 4 else "") + ")")  # fmt: skip
    segments = [Segment(r) for _, r in kept]
    dump = Dump(ENGINE, segments, layers=order, notes=notes, slots_ranked=False,
                ranked_why="Megatron-Core writes top_indices from its routing map, by expert id")  # fmt: skip
    return assemble(dump, hints)


def read(payload: Payload, hints: ModelHints) -> RoutingTrace:
    return read_many([payload], hints)


def sniff(payload: Payload) -> bool:
    """JSONL whose first line is an object with Megatron's router-trace fields."""
    first = payload.head.lstrip().split(b"\n", 1)[0]
    try:
        record = json.loads(first.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return first.startswith(b"{") and b'"top_indices"' in first and b'"layer"' in first  # a long first line
    return type(record) is dict and all(name in record for name in ("layer", "top_indices"))
