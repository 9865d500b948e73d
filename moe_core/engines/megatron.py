"""Megatron-Core's router trace (`--moe-routing-trace-path`): one JSONL file per rank, `router_trace_rank{r}.jsonl`.

Each line is one (step, block, layer) on one rank: {"step", "stage", "block", "layer", "rank", "num_tokens",
"topk", "top_indices": [[...] × num_tokens]}. There are no token ids and no sequence boundaries, so each sequence
of the trace is one step on one rank (tokens in Megatron's own order). Ranks whose routing repeats another's at
every step (tensor-parallel copies) are kept once. MTP records (block "mtp") are left out, with a note.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np

from moe_core.engines.common import Dump, ModelHints, Payload, Segment, assemble, int_grid, parse_json
from moe_core.trace import RoutingTrace
from moe_core.trace_checks import TraceFormatError, whole

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


def _step_rows(key: Key, layers: dict[int, np.ndarray], order: tuple[int, ...]) -> np.ndarray:
    """[num_tokens, L, topk] of one (step, rank); every layer must have routed the same tokens."""
    if tuple(sorted(layers)) != order:
        raise TraceFormatError(f"step {key[0]} on rank {key[1]} has layers {sorted(layers)}, others {list(order)}")
    shapes = {layers[layer].shape for layer in order}
    if len(shapes) > 1:
        raise TraceFormatError(f"step {key[0]} on rank {key[1]}: its layers routed different numbers of tokens")
    return np.stack([layers[layer] for layer in order], axis=1)


def _replicas(rows: dict[Key, np.ndarray]) -> set[int]:
    """Ranks whose routing equals a lower rank's at every step they share (tensor-parallel copies)."""
    ranks = sorted({rank for _, rank in rows})
    steps = {step for step, _ in rows}
    copies = set()
    for rank in ranks:
        for other in ranks:
            if other >= rank or other in copies:
                continue
            same = all(
                (step, rank) in rows and (step, other) in rows
                and np.array_equal(rows[(step, rank)], rows[(step, other)])
                for step in steps if (step, rank) in rows or (step, other) in rows
            )  # fmt: skip
            if same:
                copies.add(rank)
                break
    return copies


def read_many(payloads: list[Payload], hints: ModelHints) -> RoutingTrace:
    """The compact trace of one or more ranks' JSONL files, merged."""
    notes: list[str] = []
    groups = _grouped(payloads, notes)
    order = tuple(sorted(next(iter(groups.values()))))
    rows = {key: _step_rows(key, layers, order) for key, layers in sorted(groups.items())}
    topks = {r.shape[2] for r in rows.values()}
    if len(topks) > 1:
        raise TraceFormatError(f"the Megatron-Core records disagree on topk: {sorted(topks)}")
    copies = _replicas(rows) if len({rank for _, rank in rows}) > 1 else set()
    if copies:
        notes.append(f"ranks {', '.join(map(str, sorted(copies)))} repeat a lower rank's routing at every step "
                     "(tensor-parallel copies): kept once")  # fmt: skip
    kept = [(key, r) for key, r in rows.items() if key[1] not in copies]
    notes.append("Megatron-Core's trace has no token ids or sequence boundaries: each sequence here is one step on "
                 "one rank (" + ", ".join(f"step {s} rank {r}" for (s, r), _ in kept[:4]) +
                 (", …" if len(kept) > 4 else "") + ")")  # fmt: skip
    segments = [Segment(r) for _, r in kept]
    return assemble(Dump(ENGINE, segments, layers=order, notes=notes), hints)


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
