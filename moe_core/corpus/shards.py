"""A traced corpus on disk: Parquet shards, one summary per shard, and the manifest that lists what is done.

    DIR/manifest.json                 model (ModelInfo), settings, and one record per finished shard
    DIR/shard-000003.parquet          shard 3: documents 3·S … 4·S − 1, one row per document
    DIR/shard-000003.summary.npz      its CorpusSummary (moe_core.corpus.summary)
    DIR/summary.npz                   the sum of all shards' summaries (written at the end and by `summarize`)

Shard j always holds documents [j·S, (j+1)·S) of the corpus order, whichever process traced it, and rank r of
W processes traces the shards with j mod W == r: the split needs no coordination, and a resumed run (with any
number of processes) skips exactly the shards the manifest lists with the same document range. Every file is
written to a temporary name and renamed; the manifest is updated under a file lock, so ranks never lose each
other's records. A shard file without a manifest record (a run killed between the two) is simply redone.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from moe_core.corpus.summary import CorpusSummary, add_all, empty_summary, load_summary, save_summary, write_atomically

MANIFEST_FORMAT = "moe-corpus/1"
MANIFEST, LOCK, TOTAL_SUMMARY = "manifest.json", ".manifest.lock", "summary.npz"
SHARD_METADATA_KEY = b"moe_corpus_shard"
RESUME_SETTINGS = ("model", "input", "domain_field", "shard_documents", "capacity_factor", "weights")


def owner(shard: int, world: int) -> int:
    """The rank that traces shard `shard` among `world` processes."""
    return shard % world


def documents_of_rank(num_documents: int, shard_documents: int, rank: int, world: int) -> list[int]:
    """The documents rank `rank` traces (the split the runner applies shard by shard): every document
    belongs to exactly one rank, in whole shards."""
    return [d for d in range(num_documents) if owner(d // shard_documents, world) == rank]


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}.parquet"


def summary_name(shard: int) -> str:
    return f"shard-{shard:06d}.summary.npz"


@dataclass(frozen=True)
class TracedDocument:
    """One document's routing as stored: experts [L, T, k] as consumed (DROPPED = -1), weights fp16 or None."""

    index: int
    domain: str
    token_ids: np.ndarray  # [T]
    experts: np.ndarray  # [L, T, k]
    weights: np.ndarray | None = None  # [L, T, k]


def _list_column(arrays: Sequence[np.ndarray], dtype: Any) -> pa.Array:
    flat = [np.ascontiguousarray(a, dtype=dtype).reshape(-1) for a in arrays]
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in flat])]).astype(np.int64)
    values = np.concatenate(flat) if flat else np.zeros(0, dtype=dtype)
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))


def expert_dtype(num_experts: int) -> type[np.signedinteger]:
    """int16 ids (half of int32) while the experts fit, with room for DROPPED and a skip class."""
    return np.int16 if num_experts < np.iinfo(np.int16).max else np.int32


def shard_bytes(documents: Sequence[TracedDocument], moe_layers: Sequence[int], num_experts: int, top_k: int) -> bytes:
    """Parquet, one row per document: document (corpus index), domain, token_ids, experts (the [L, T, k]
    array flattened layer-major) and, when kept, weights (fp16, same layout). No [L, T, E] scores."""
    columns: dict[str, pa.Array] = {
        "document": pa.array([d.index for d in documents], pa.int64()),
        "domain": pa.array([d.domain for d in documents], pa.string()),
        "token_ids": _list_column([d.token_ids for d in documents], np.int32),
        "experts": _list_column([d.experts for d in documents], expert_dtype(num_experts)),
    }
    if documents and documents[0].weights is not None:
        columns["weights"] = _list_column([d.weights for d in documents], np.float16)
    layout = {"moe_layers": list(moe_layers), "num_experts": num_experts, "top_k": top_k, "order": "[L, T, k]"}
    table = pa.table(columns).replace_schema_metadata({SHARD_METADATA_KEY: json.dumps(layout)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def read_shard(path: Path) -> list[TracedDocument]:
    """The documents of a shard file, arrays back in [L, T, k]."""
    table = pq.read_table(path)
    layout = json.loads(table.schema.metadata[SHARD_METADATA_KEY])
    num_layers, top_k = len(layout["moe_layers"]), layout["top_k"]
    has_weights = "weights" in table.column_names
    out = []
    for row in range(table.num_rows):
        ids = np.asarray(table["token_ids"][row].values)
        shape = (num_layers, len(ids), top_k)
        weights = np.asarray(table["weights"][row].values).reshape(shape) if has_weights else None
        experts = np.asarray(table["experts"][row].values).reshape(shape)
        out.append(TracedDocument(table["document"][row].as_py(), table["domain"][row].as_py(), ids, experts, weights))
    return out


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on the folder's manifest for a read-modify-write (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: one process only
        yield
        return
    with (folder / LOCK).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def corpus_file(folder: Path, name: str) -> Path:
    """`name` inside the corpus folder, resolved: a link that leads out of the folder is refused (the app reads
    only what the operator put there)."""
    root = folder.resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise ValueError(f"{name} lies outside the corpus folder (a link): not read")
    return path


def _check_manifest(manifest: Any) -> dict[str, Any]:
    """The fields readers use, each of the right type (a damaged manifest is one sentence, never a KeyError)."""
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{MANIFEST} is not a {MANIFEST_FORMAT} manifest")
    model, settings, shards = manifest.get("model"), manifest.get("settings"), manifest.get("shards")
    described = isinstance(model, dict) and all(isinstance(model.get(k), str) for k in ("name", "architecture"))
    if not described or not all(type(model.get(k)) is int for k in ("num_experts", "top_k")):
        raise ValueError(f"{MANIFEST}'s model must be an object with a name, an architecture, num_experts and top_k")
    if not isinstance(model.get("moe_layers"), list) or not all(type(v) is int for v in model["moe_layers"]):
        raise ValueError(f"{MANIFEST}'s model must list its moe_layers")
    if not isinstance(settings, dict) or type(settings.get("capacity_factor")) not in {int, float}:
        raise ValueError(f"{MANIFEST}'s settings must be an object with a capacity_factor")
    if not isinstance(shards, list) or not all(isinstance(r, dict) and isinstance(r.get("summary"), str)
                                               for r in shards):  # fmt: skip
        raise ValueError(f"{MANIFEST}'s shards must be a list of records, each naming its summary")
    return manifest


def load_manifest(folder: Path) -> dict[str, Any]:
    """The manifest, checked; messages name files, never the server's folders."""
    path = folder / MANIFEST
    if not path.is_file():
        raise ValueError(f"the folder has no {MANIFEST}: trace a corpus into it (python -m moe_core trace-corpus)")
    try:
        manifest = json.loads(corpus_file(folder, MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"{MANIFEST} is not a readable manifest ({type(error).__name__})") from None
    return _check_manifest(manifest)


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    shards = manifest["shards"]
    manifest["documents"] = sum(s["documents_traced"] for s in shards)
    manifest["tokens"] = sum(s["tokens"] for s in shards)
    write_atomically(folder / MANIFEST, json.dumps(manifest, indent=1).encode("utf-8"))


def open_manifest(folder: Path, model: dict[str, Any], settings: dict[str, Any]) -> dict[int, tuple[int, int]]:
    """Create the manifest, or check that an existing one was made with the same settings (a resume); returns
    the finished shards: shard id -> its (first, past-the-last) document."""
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        if not (folder / MANIFEST).exists():
            _write_manifest(folder, {"format": MANIFEST_FORMAT, "model": model, "settings": settings, "shards": []})
        manifest = load_manifest(folder)
    before = manifest["settings"]
    for key in RESUME_SETTINGS:
        if before.get(key) != settings.get(key):
            raise ValueError(
                f"{folder} holds a corpus traced with {key}={before.get(key)!r}, not {settings.get(key)!r}: "
                "resume with the same settings, or trace into a new folder"
            )
    return finished_shards(manifest)


def finished_shards(manifest: dict[str, Any]) -> dict[int, tuple[int, int]]:
    return {s["shard"]: tuple(s["range"]) for s in manifest["shards"]}


def record_shard(folder: Path, record: dict[str, Any]) -> None:
    """Add (or replace) one shard's record, after its files are in place."""
    with _locked(folder):
        manifest = load_manifest(folder)
        shards = [s for s in manifest["shards"] if s["shard"] != record["shard"]] + [record]
        manifest["shards"] = sorted(shards, key=lambda s: s["shard"])
        _write_manifest(folder, manifest)


def corpus_total(folder: Path) -> CorpusSummary:
    """The sum of the summaries of every shard the manifest lists as finished."""
    manifest = load_manifest(folder)
    if not manifest["shards"]:
        model = manifest["model"]
        factor = manifest["settings"]["capacity_factor"]
        return empty_summary(model["moe_layers"], model["num_experts"], model["top_k"], factor)
    return add_all(load_summary(corpus_file(folder, record["summary"])) for record in manifest["shards"])


def write_total(folder: Path) -> CorpusSummary:
    """corpus_total, also saved as DIR/summary.npz (what the app's corpus page reads)."""
    total = corpus_total(folder)
    save_summary(total, folder / TOTAL_SUMMARY)
    return total
