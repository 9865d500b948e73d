"""A series on disk: the tokens once, each checkpoint's routing of them, and the manifest that lists them.

    OUT/series.json          {"format", "model", "texts", "max_tokens", "tokens", "steps": [{"step", "source", "file"}]}
    OUT/tokens.parquet       the first traced step's compact trace: the token table and the model, stored once
    OUT/step-000100.npz      routing at step 100: experts (int16) and gate weights (float16), nothing else

Every checkpoint of one run tokenises the fixed texts alike, so a step keeps only its arrays (about 20 KB for the
demo model's 1,280 tokens, against 170 KB for a full trace). A step whose tokens differ from the stored ones (a
checkpoint with another tokenizer) is kept whole, as step-000100.parquet; so are all steps of a moe-series/1
folder, which still reads. Written one checkpoint at a time, each file whole (tmp + rename) before the manifest
names it: a killed run resumes where it stopped.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from moe_core.analyses.series import Series
from moe_core.corpus.shards import corpus_file
from moe_core.corpus.summary import write_atomically
from moe_core.defaults import BUNDLED_MODELS
from moe_core.traces.io import load_trace, to_parquet_bytes
from moe_core.traces.types import RoutingTrace

SERIES_FORMAT = "moe-series/2"
READABLE_FORMATS = ("moe-series/1", SERIES_FORMAT)
MANIFEST = "series.json"
TOKENS_FILE = "tokens.parquet"
STEP_NUMBER = re.compile(r"(\d+)(?!.*\d)")  # the last number in a checkpoint's name: checkpoint-1200, step_40
REVISION_STEP = re.compile(r"step[-_]?(\d+)", re.IGNORECASE)  # OLMoE's revisions: step5000-tokens20B


SERIES_FOLDER = "series"  # a model folder's own training series (the demo model ships one)


def series_folder(where: str | Path) -> Path:
    """The series a name points at: a series folder, a model folder with its series/ inside, or a bundled
    model's name (demo-mixtral); ValueError in one sentence where there is none."""
    path = Path(where)
    bundled = BUNDLED_MODELS.get(str(where))
    for candidate in (path, path / SERIES_FOLDER, *([bundled / SERIES_FOLDER] if bundled else [])):
        if (candidate / MANIFEST).is_file():
            return candidate
    raise ValueError(f"{path.name or where} holds no series: trace one into it (python -m moe_core "
                     "trace-checkpoints), or name a model folder with a series/ inside")  # fmt: skip


def step_file(step: int, whole: bool = False) -> str:
    return f"step-{step:06d}.{'parquet' if whole else 'npz'}"


def checkpoint_folders(folder: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every saved checkpoint under `folder` (a subfolder with a config.json and a number in
    its name), sorted by step; ValueError in one sentence when there is none or two share a step."""
    if not folder.is_dir():
        raise ValueError(f"{folder.name}: not a folder of checkpoints")
    found = []
    for child in sorted(folder.iterdir()):
        match = STEP_NUMBER.search(child.name)
        if child.is_dir() and (child / "config.json").is_file() and match:
            found.append((int(match.group(1)), child))
    if not found:
        raise ValueError(f"{folder.name} holds no checkpoint folders (a subfolder with config.json and its step "
                         "in its name, such as checkpoint-100)")  # fmt: skip
    steps = [step for step, _ in found]
    if len(set(steps)) < len(steps):
        raise ValueError(f"two checkpoints of {folder.name} have the same step number")
    return sorted(found)


def revision_steps(revisions: list[str]) -> list[tuple[int, str]]:
    """(step, revision): the step from the revision's name (step5000-tokens20B → 5000), else its place in the
    list; in step order."""
    named = [REVISION_STEP.search(r) for r in revisions]
    if all(named):
        pairs = [(int(m.group(1)), r) for m, r in zip(named, revisions, strict=True)]  # type: ignore[union-attr]
    else:
        pairs = list(enumerate(revisions))
    if len({step for step, _ in pairs}) < len(pairs):
        raise ValueError("two revisions have the same step number")
    return sorted(pairs)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The series manifest, checked; None where the folder has none yet."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(corpus_file(folder, MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{MANIFEST} is not a readable series manifest ({type(error).__name__})") from None
    steps = manifest.get("steps") if isinstance(manifest, dict) else None
    if manifest.get("format") not in READABLE_FORMATS or not isinstance(steps, list) or not all(
        isinstance(s, dict) and type(s.get("step")) is int and isinstance(s.get("file"), str) for s in steps
    ):  # fmt: skip
        raise ValueError(f"{MANIFEST} is not a {SERIES_FORMAT} manifest")
    return manifest


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    manifest["steps"] = sorted(manifest["steps"], key=lambda s: s["step"])
    write_atomically(folder / MANIFEST, json.dumps(manifest, indent=1).encode("utf-8"))


def open_series(folder: Path, model: str, texts: tuple[str, ...], max_tokens: int) -> dict[str, Any]:
    """The folder's manifest, begun where there is none; a folder of other texts or another token limit is
    refused, not mixed."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(folder)
    if manifest is None:
        manifest = {"format": SERIES_FORMAT, "model": model, "texts": list(texts), "max_tokens": max_tokens,
                    "steps": []}  # fmt: skip
    if manifest.get("texts") != list(texts) or manifest.get("max_tokens") != max_tokens:
        raise ValueError(f"{folder.name} holds a series of other texts or another token limit: use a new folder")
    return manifest


def recorded_steps(folder: Path, manifest: dict[str, Any]) -> set[int]:
    """Steps whose file is on disk (a run killed between file and manifest leaves neither named)."""
    return {record["step"] for record in manifest["steps"] if (folder / record["file"]).is_file()}


def record_step(folder: Path, manifest: dict[str, Any], step: int, source: str, routing: RoutingTrace) -> None:
    """Store one checkpoint's routing (experts and weights) and name it in the manifest, replacing that step."""
    compact = replace(routing, logits=None, probs=None)
    tokens = _stored_tokens(folder, manifest)
    if tokens is None and manifest["format"] == SERIES_FORMAT:
        write_atomically(folder / TOKENS_FILE, to_parquet_bytes(compact))
        manifest["tokens"] = TOKENS_FILE
        tokens = compact
    whole = tokens is None or not _same_tokens(tokens, compact)
    if whole:
        write_atomically(folder / step_file(step, whole=True), to_parquet_bytes(compact))
    else:
        write_atomically(folder / step_file(step), _arrays_bytes(compact))
    manifest["steps"] = [r for r in manifest["steps"] if r["step"] != step]
    manifest["steps"].append({"step": step, "source": source, "file": step_file(step, whole)})
    write_manifest(folder, manifest)


def _stored_tokens(folder: Path, manifest: dict[str, Any]) -> RoutingTrace | None:
    name = manifest.get("tokens")
    return load_trace(corpus_file(folder, name)) if isinstance(name, str) and (folder / name).is_file() else None


def _same_tokens(a: RoutingTrace, b: RoutingTrace) -> bool:
    return (a.experts.shape == b.experts.shape and a.model.moe_layers == b.model.moe_layers
            and np.array_equal(a.tokens.ids, b.tokens.ids) and (a.weights is None) == (b.weights is None))  # fmt: skip


def _arrays_bytes(routing: RoutingTrace) -> bytes:
    arrays = {"experts": routing.experts.astype(np.int16)}
    if routing.weights is not None:
        arrays["weights"] = routing.weights.astype(np.float16)
    sink = io.BytesIO()
    np.savez_compressed(sink, **arrays)
    return sink.getvalue()


def _step_trace(path: Path, tokens: RoutingTrace | None, source: str) -> RoutingTrace:
    """A step's trace: a whole file as it is, or the stored tokens with this step's arrays."""
    if path.suffix == ".parquet":
        return load_trace(path)
    if tokens is None:
        raise ValueError(f"{path.name} needs the series' {TOKENS_FILE}, which is missing")
    try:
        with np.load(path, allow_pickle=False) as data:
            experts = data["experts"].astype(np.int64)
            weights = data["weights"].astype(np.float32) if "weights" in data else None
    except (OSError, KeyError, ValueError) as error:
        raise ValueError(f"{path.name} is not a series step ({type(error).__name__})") from None
    if experts.shape != tokens.experts.shape or (weights is not None and weights.shape != experts.shape):
        raise ValueError(f"{path.name} does not fit the series' tokens ({experts.shape} against "
                         f"{tokens.experts.shape})")  # fmt: skip
    return replace(tokens, model=replace(tokens.model, name=source), experts=experts, weights=weights)


def load_series(folder: Path) -> Series:
    """Every recorded step's trace, in step order (only files inside the folder are read)."""
    manifest = read_manifest(folder)
    if manifest is None or not manifest["steps"]:
        raise ValueError(f"{folder.name} holds no series: trace one into it (python -m moe_core trace-checkpoints)")
    records = manifest["steps"]
    tokens = _stored_tokens(folder, manifest)
    traces = tuple(_step_trace(corpus_file(folder, r["file"]), tokens, str(r.get("source", r["step"])))
                   for r in records)  # fmt: skip
    return Series(tuple(record["step"] for record in records), traces)
