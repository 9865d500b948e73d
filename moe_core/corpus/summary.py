"""Counts that sum: what the app shows about a corpus, computed once per shard and added up.

Every field is a count (never a rate), so the summary of a whole corpus is exactly the sum of its shards'
summaries, whatever the shards; rates are taken only when a frame is drawn (moe_core.analyses.corpus).
numpy only (no torch), so the app reads summaries without loading a model.

Shapes: L MoE layers, E experts, D domains, P positions (the longest document seen), n token-id rows.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from functools import reduce
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from moe_core.capacity.simulate import check_capacity_factor, expert_capacity, kept_slots, position_order
from moe_core.metrics import coactivation_counts, layer_expert_counts, pair_counts, routed
from moe_core.traces.checks import check_limits
from moe_core.traces.types import DROPPED

SUMMARY_FORMAT = "moe-corpus-summary/1"
POLICY, GROUP = "position", "sequence"  # the drop curve's capacity rule: GShard/OpenMoE order, one group a document


@dataclass(frozen=True, eq=False)
class CorpusSummary:
    """Addable counts of a set of documents' routing (see the module docstring for the shapes)."""

    moe_layers: tuple[int, ...]
    num_experts: int
    top_k: int
    capacity_factor: float
    documents: int
    tokens: int
    truncated: int  # documents cut to the model's context
    top1: np.ndarray  # [L, E] tokens whose first choice is the expert
    topk: np.ndarray  # [L, E] slots routed to the expert (any rank)
    domains: tuple[str, ...]  # sorted
    domain_documents: np.ndarray  # [D]
    domain_tokens: np.ndarray  # [D]
    domain_topk: np.ndarray  # [D, L, E]
    transitions: np.ndarray  # [L-1, E, E] first choice at layer row l (row) -> at row l+1 (column)
    coactivation: np.ndarray  # [L, E, E] tokens routed to both experts; the diagonal: tokens routed to each
    token_layer: np.ndarray  # [n] layer row    } sparse top-1 counts of (layer, token id, expert),
    token_id: np.ndarray  # [n] token id        } sorted by (layer, token id, expert), no zero rows
    token_expert: np.ndarray  # [n] expert      }
    token_count: np.ndarray  # [n]              }
    position_slots: np.ndarray  # [L, P] slots assigned at each position
    position_dropped: np.ndarray  # [L, P] of them, dropped at `capacity_factor`
    position_tokens: np.ndarray  # [L, P] tokens with at least one slot
    position_fully_dropped: np.ndarray  # [L, P] of them, tokens that lost every slot

    @property
    def num_layers(self) -> int:
        return len(self.moe_layers)

    def __add__(self, other: CorpusSummary) -> CorpusSummary:
        return combine(self, other)

    def equals(self, other: CorpusSummary) -> bool:
        """Same counts and settings (a test helper; arrays make == ambiguous)."""
        return all(
            np.array_equal(getattr(self, f.name), getattr(other, f.name))
            if isinstance(getattr(self, f.name), np.ndarray)
            else getattr(self, f.name) == getattr(other, f.name)
            for f in fields(self)
        )


def _transitions(top1: np.ndarray, num_experts: int) -> np.ndarray:
    """[L-1, E, E] first-choice transitions between consecutive MoE layers (metrics.pair_counts, as a trace's)."""
    pairs = []
    for source, target in pairwise(top1):
        valid = routed(source, num_experts) & routed(target, num_experts)
        pairs.append(pair_counts(source[valid], target[valid], num_experts))
    return np.stack(pairs) if pairs else np.zeros((0, num_experts, num_experts), dtype=np.int64)


def _coactivation(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """[L, E, E] tokens routed to both experts at each layer (metrics.coactivation_counts, as a trace's)."""
    if not len(experts):
        return np.zeros((0, num_experts, num_experts), dtype=np.int64)
    return np.stack([coactivation_counts(layer, num_experts) for layer in experts])


TokenTable = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # layer row, token id, expert, count


def _token_table(
    layer: np.ndarray, token: np.ndarray, expert: np.ndarray, count: np.ndarray, num_experts: int
) -> TokenTable:
    """Sparse (layer, token id, expert) counts summed over duplicates and sorted; rows of 0 left out."""
    width = int(token.max()) + 1 if len(token) else 1
    key = (layer.astype(np.int64) * width + token.astype(np.int64)) * num_experts + expert.astype(np.int64)
    unique, inverse = np.unique(key, return_inverse=True)
    totals = np.bincount(inverse.reshape(-1), weights=count, minlength=len(unique)).astype(np.int64)
    keep = totals > 0
    unique, totals = unique[keep], totals[keep]
    return unique // num_experts // width, unique // num_experts % width, unique % num_experts, totals


def _drops_by_position(
    experts: np.ndarray, document_of: np.ndarray, position: np.ndarray, num_experts: int, capacity_factor: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """[L, P] slots, dropped slots, tokens with slots, fully dropped tokens by position: moe_core.capacity.simulate's
    rule (kept_slots) with every document its own group, served in position order (simulate_capacity's
    policy="position", group="sequence")."""
    num_layers, num_tokens, top_k = experts.shape
    valid = routed(experts, num_experts)
    served = np.where(valid, experts, DROPPED)
    sizes = np.bincount(document_of)
    per_size = {s: expert_capacity(capacity_factor, top_k, s, num_experts) for s in set(sizes.tolist())}
    capacity = np.array([per_size[s] for s in sizes.tolist()], dtype=np.int64)
    order = position_order(np.zeros((num_layers, num_tokens)))
    kept, _ = kept_slots(served, order, document_of, capacity, num_experts)
    assigned = valid.sum(axis=2)
    lost = assigned - (kept & valid).sum(axis=2)
    num_positions = int(position.max()) + 1 if num_tokens else 0
    at = (np.arange(num_layers)[:, None] * num_positions + position[None, :]).ravel()

    def per_position(values: np.ndarray) -> np.ndarray:
        size = num_layers * num_positions
        return np.bincount(at, weights=values.ravel(), minlength=size).astype(np.int64).reshape(num_layers, -1)

    has_slots = assigned > 0
    fully = has_slots & (lost == assigned)
    return per_position(assigned), per_position(lost), per_position(has_slots), per_position(fully)


def summarize_documents(
    experts: Sequence[np.ndarray],
    token_ids: Sequence[np.ndarray],
    domains: Sequence[str],
    moe_layers: Sequence[int],
    num_experts: int,
    capacity_factor: float,
    truncated: int = 0,
) -> CorpusSummary:
    """Counts of some documents: `experts[d]` [L, T_d, k] as consumed (DROPPED allowed), `token_ids[d]` [T_d]."""
    check_capacity_factor(capacity_factor)
    num_layers = len(moe_layers)
    top_k = experts[0].shape[2] if len(experts) else 0
    if not len(experts):
        return empty_summary(moe_layers, num_experts, top_k, capacity_factor)
    lengths = np.array([ids.shape[0] for ids in token_ids], dtype=np.int64)
    every = np.concatenate(list(experts), axis=1).astype(np.int64)  # [L, T, k]
    ids = np.concatenate(list(token_ids)).astype(np.int64)
    document_of = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(len(ids)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    names = tuple(sorted(set(domains)))
    domain_index = np.searchsorted(np.array(names), np.asarray(domains))  # [documents]
    domain_of = domain_index[document_of]  # [T]
    top1 = every[:, :, 0]
    first = routed(top1, num_experts)
    layer_rows = np.broadcast_to(np.arange(num_layers)[:, None], top1.shape)
    tables = _token_table(layer_rows[first], np.broadcast_to(ids, top1.shape)[first], top1[first],
                          np.ones(int(first.sum())), num_experts)  # fmt: skip
    domain_topk = np.stack([layer_expert_counts(every[:, domain_of == d], num_experts) for d in range(len(names))])
    drops = _drops_by_position(every, document_of, position, num_experts, capacity_factor)
    return CorpusSummary(
        moe_layers=tuple(int(layer) for layer in moe_layers),
        num_experts=int(num_experts),
        top_k=int(top_k),
        capacity_factor=float(capacity_factor),
        documents=len(lengths),
        tokens=int(lengths.sum()),
        truncated=int(truncated),
        top1=layer_expert_counts(every[:, :, :1], num_experts),
        topk=layer_expert_counts(every, num_experts),
        domains=names,
        domain_documents=np.bincount(domain_index, minlength=len(names)).astype(np.int64),
        domain_tokens=np.bincount(domain_index, weights=lengths, minlength=len(names)).astype(np.int64),
        domain_topk=domain_topk.astype(np.int64),
        transitions=_transitions(top1, num_experts),
        coactivation=_coactivation(every, num_experts),
        token_layer=tables[0], token_id=tables[1], token_expert=tables[2], token_count=tables[3],
        position_slots=drops[0], position_dropped=drops[1], position_tokens=drops[2], position_fully_dropped=drops[3],
    )  # fmt: skip


def empty_summary(moe_layers: Sequence[int], num_experts: int, top_k: int, capacity_factor: float) -> CorpusSummary:
    """The summary of no documents: the zero of `combine`."""
    num_layers, e = len(moe_layers), num_experts
    none = np.zeros(0, dtype=np.int64)
    return CorpusSummary(
        moe_layers=tuple(int(layer) for layer in moe_layers), num_experts=e, top_k=top_k,
        capacity_factor=float(capacity_factor), documents=0, tokens=0, truncated=0,
        top1=np.zeros((num_layers, e), np.int64), topk=np.zeros((num_layers, e), np.int64), domains=(),
        domain_documents=none, domain_tokens=none, domain_topk=np.zeros((0, num_layers, e), np.int64),
        transitions=np.zeros((max(num_layers - 1, 0), e, e), np.int64),
        coactivation=np.zeros((num_layers, e, e), np.int64),
        token_layer=none, token_id=none, token_expert=none, token_count=none,
        position_slots=np.zeros((num_layers, 0), np.int64), position_dropped=np.zeros((num_layers, 0), np.int64),
        position_tokens=np.zeros((num_layers, 0), np.int64),
        position_fully_dropped=np.zeros((num_layers, 0), np.int64),
    )  # fmt: skip


def _pad_positions(counts: np.ndarray, width: int) -> np.ndarray:
    return np.pad(counts, ((0, 0), (0, width - counts.shape[1])))


def _by_domain(summary: CorpusSummary, names: tuple[str, ...], values: np.ndarray) -> np.ndarray:
    """`values` ([D, ...] over summary.domains) spread onto the domain list `names`."""
    out = np.zeros((len(names), *values.shape[1:]), dtype=np.int64)
    out[[names.index(n) for n in summary.domains]] = values
    return out


POSITION_FIELDS = ("position_slots", "position_dropped", "position_tokens", "position_fully_dropped")
SUMMED_FIELDS = ("documents", "tokens", "truncated", "top1", "topk", "transitions", "coactivation")
DOMAIN_FIELDS = ("domain_documents", "domain_tokens", "domain_topk")


def combine(first: CorpusSummary, second: CorpusSummary) -> CorpusSummary:
    """The summary of both sets of documents (they must come from one model at one capacity factor)."""
    settings = ("moe_layers", "num_experts", "capacity_factor")
    for name in settings:
        if getattr(first, name) != getattr(second, name):
            raise ValueError(f"cannot add corpus summaries with different {name}: "
                             f"{getattr(first, name)} and {getattr(second, name)}")  # fmt: skip
    names = tuple(sorted(set(first.domains) | set(second.domains)))
    width = max(first.position_slots.shape[1], second.position_slots.shape[1])
    changes: dict[str, Any] = {name: getattr(first, name) + getattr(second, name) for name in SUMMED_FIELDS}
    changes |= {name: _by_domain(first, names, getattr(first, name)) + _by_domain(second, names, getattr(second, name))
                for name in DOMAIN_FIELDS}  # fmt: skip
    changes |= {name: _pad_positions(getattr(first, name), width) + _pad_positions(getattr(second, name), width)
                for name in POSITION_FIELDS}  # fmt: skip
    token_fields = ("token_layer", "token_id", "token_expert", "token_count")
    joined = [np.concatenate([getattr(first, f), getattr(second, f)]) for f in token_fields]
    changes |= dict(zip(token_fields, _token_table(*joined, first.num_experts), strict=True))
    return replace(first, top_k=first.top_k or second.top_k, domains=names, **changes)


def add_all(summaries: Iterable[CorpusSummary]) -> CorpusSummary:
    """Sum of one or more summaries."""
    return reduce(combine, summaries)


_META_FIELDS = ("moe_layers", "num_experts", "top_k", "capacity_factor", "documents", "tokens", "truncated", "domains")


def summary_bytes(summary: CorpusSummary) -> bytes:
    """The summary as an .npz (numpy arrays, settings as JSON; readable without pickle)."""
    meta = {name: getattr(summary, name) for name in _META_FIELDS} | {"format": SUMMARY_FORMAT}
    arrays = {f.name: getattr(summary, f.name) for f in fields(summary) if f.name not in _META_FIELDS}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, meta=np.array(json.dumps(meta)), **arrays)
    return buffer.getvalue()


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename: a reader (or a resumed run)
    sees the old file or the whole new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def save_summary(summary: CorpusSummary, path: Path) -> None:
    write_atomically(path, summary_bytes(summary))


MAX_SUMMARY_BYTES = 128 * 2**20  # decompressed arrays (a DeepSeek-V3 corpus: ~62 MB); refused above before any is read
INTEGER_FIELDS = {"num_experts", "top_k", "documents", "tokens", "truncated"}


def _npy_headers(archive: zipfile.ZipFile, name: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each member's (shape, dtype) from its .npy header alone, and the declared sizes bounded: a few MB of
    compressed zeros can declare gigabytes (zipfile stops a member at its declared size)."""
    headers, total = {}, 0
    for info in archive.infolist():
        total += info.file_size
        if total > MAX_SUMMARY_BYTES or not info.filename.endswith(".npy"):
            why = "is too large" if total > MAX_SUMMARY_BYTES else f"holds {info.filename[:40]!r}"
            raise ValueError(f"{name} {why} (a summary is .npy arrays of at most {MAX_SUMMARY_BYTES // 2**20} MiB)")
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in reader:
                raise ValueError(f"{name} has an array of .npy version {version}")
            shape, _, dtype = reader[version](member)
        if dtype.hasobject or int(np.prod(shape, dtype=np.float64)) * dtype.itemsize > info.file_size:
            raise ValueError(f"{name}'s {info.filename[:40]} is not a plain array of its declared size")
        headers[info.filename[: -len(".npy")]] = (tuple(shape), dtype)
    return headers


def _meta(raw: Any, name: str) -> dict[str, Any]:
    """The settings, every one checked for its type and range."""
    if type(raw) is not dict or raw.pop("format", None) != SUMMARY_FORMAT:
        raise ValueError(f"{name} is not a {SUMMARY_FORMAT} file")
    missing = [f for f in _META_FIELDS if f not in raw]
    if missing or set(raw) - set(_META_FIELDS):
        raise ValueError(f"{name}'s settings {'lack ' + ', '.join(missing) if missing else 'hold unknown keys'}")
    layers, domains = raw["moe_layers"], raw["domains"]
    if type(layers) is not list or not layers or any(type(v) is not int or v < 0 for v in layers):
        raise ValueError(f"{name}'s moe_layers must be a list of layer numbers")
    if type(domains) is not list or any(type(v) is not str for v in domains):
        raise ValueError(f"{name}'s domains must be a list of names")
    if any(type(raw[f]) is not int or raw[f] < 0 for f in INTEGER_FIELDS):
        raise ValueError(f"{name}'s {', '.join(sorted(INTEGER_FIELDS))} must be whole numbers >= 0")
    factor = raw["capacity_factor"]
    try:
        check_capacity_factor(factor)
    except ValueError:
        raise ValueError(f"{name}'s capacity_factor must be a capacity factor, got {str(factor)[:20]}") from None
    check_limits(name, experts=raw["num_experts"], layers=len(layers))
    return {
        **raw,
        "moe_layers": tuple(layers),
        "domains": tuple(domains),
        "capacity_factor": float(raw["capacity_factor"]),
    }


def _expected_shapes(meta: dict[str, Any]) -> dict[str, tuple[int | None, ...]]:
    """Each array's shape by the settings (None: any length, positions and token-id rows)."""
    layers, experts, domains = len(meta["moe_layers"]), meta["num_experts"], len(meta["domains"])
    return {
        "top1": (layers, experts), "topk": (layers, experts), "domain_documents": (domains,),
        "domain_tokens": (domains,), "domain_topk": (domains, layers, experts),
        "transitions": (layers - 1, experts, experts), "coactivation": (layers, experts, experts),
        **{f: (None,) for f in ("token_layer", "token_id", "token_expert", "token_count")},
        **{f: (layers, None) for f in POSITION_FIELDS},
    }  # fmt: skip


def _check_arrays(headers: dict[str, tuple[tuple[int, ...], np.dtype]], meta: dict[str, Any], name: str) -> None:
    expected = _expected_shapes(meta)
    if set(headers) - {"meta"} != set(expected):
        raise ValueError(f"{name} does not hold a summary's arrays ({', '.join(sorted(expected))})")
    for field_name, shape in expected.items():
        found, dtype = headers[field_name]
        fits = len(found) == len(shape) and all(w is None or w == g for w, g in zip(shape, found, strict=False))
        if not fits or dtype.kind not in "iu":
            raise ValueError(f"{name}'s {field_name} is {dtype} of shape {list(found)}, not whole numbers of "
                             f"shape {[s if s is not None else 'any' for s in shape]}")  # fmt: skip
    rows = {headers[f][0][0] for f in ("token_layer", "token_id", "token_expert", "token_count")}
    positions = {headers[f][0][1] for f in POSITION_FIELDS}
    if len(rows) > 1 or len(positions) > 1:
        raise ValueError(f"{name}'s token-id or position arrays differ in length")


def load_summary(path: Path) -> CorpusSummary:
    """A summary written by save_summary; ValueError, naming the file but not its folder, for anything else.
    Settings, shapes, types and sizes are checked from the headers before any array is decompressed."""
    name = path.name
    try:
        with zipfile.ZipFile(path) as archive:
            headers = _npy_headers(archive, name)
            if headers.get("meta", ((1,), np.dtype(np.int8)))[1].kind != "U":
                raise ValueError(f"{name} has no settings (meta)")
            with np.load(path, allow_pickle=False) as data:
                meta = _meta(json.loads(str(data["meta"])), name)
                _check_arrays(headers, meta, name)
                arrays = {f.name: data[f.name] for f in fields(CorpusSummary) if f.name not in _META_FIELDS}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
        message = (
            str(error) if str(error).startswith(name) else f"{name} is not a corpus summary ({type(error).__name__})"
        )
        raise ValueError(message) from None
    if any(array.size and array.min() < 0 for array in arrays.values()):
        raise ValueError(f"{name} holds a negative count")
    return CorpusSummary(**meta, **arrays)


def drop_rate_by_position(summary: CorpusSummary) -> np.ndarray:
    """[P] dropped / assigned slots at each position, over all layers (NaN where none were assigned)."""
    slots, dropped = summary.position_slots.sum(axis=0), summary.position_dropped.sum(axis=0)
    out = np.full(slots.shape, np.nan)
    np.divide(dropped, slots, out=out, where=slots > 0)
    return out


def summary_json(summary: CorpusSummary, model: dict[str, Any] | None = None) -> dict[str, Any]:
    """What `python -m moe_core summarize DIR --format json` prints (README, "Tracing a corpus")."""
    drops = summary.position_dropped.sum(axis=1)
    slots = summary.position_slots.sum(axis=1)
    return {
        "model": model,
        "tokens": summary.tokens,
        "documents": summary.documents,
        "truncated_documents": summary.truncated,
        "capacity_factor": summary.capacity_factor,
        "policy": POLICY,
        "group": GROUP,
        "layers": [
            {
                "layer": layer,
                "top1_counts": summary.top1[row].tolist(),
                "topk_counts": summary.topk[row].tolist(),
                "drop_rate": round(float(drops[row] / slots[row]), 6) if slots[row] else None,
            }
            for row, layer in enumerate(summary.moe_layers)
        ],
        "domains": {
            name: {
                "documents": int(summary.domain_documents[d]),
                "tokens": int(summary.domain_tokens[d]),
                "topk_counts": summary.domain_topk[d].tolist(),
            }
            for d, name in enumerate(summary.domains)
        },
        "drop_rate_by_position": [None if np.isnan(v) else round(float(v), 6) for v in drop_rate_by_position(summary)],
    }
