"""A series on disk: one compact trace per checkpoint and the manifest that lists them, in step order.

    OUT/series.json              {"format", "model", "texts", "max_tokens", "steps": [{"step", "source", "file"}]}
    OUT/step-000100.parquet      the fixed texts' routing at step 100 (experts and weights; no scores)

Written one checkpoint at a time, each file whole (tmp + rename) before the manifest names it: a killed run
resumes where it stopped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from moe_core.analyses.series import Series
from moe_core.corpus.shards import corpus_file
from moe_core.corpus.summary import write_atomically
from moe_core.traces.io import load_trace

SERIES_FORMAT = "moe-series/1"
MANIFEST = "series.json"
STEP_NUMBER = re.compile(r"(\d+)(?!.*\d)")  # the last number in a checkpoint's name: checkpoint-1200, step_40
REVISION_STEP = re.compile(r"step[-_]?(\d+)", re.IGNORECASE)  # OLMoE's revisions: step5000-tokens20B


def step_file(step: int) -> str:
    return f"step-{step:06d}.parquet"


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
    if manifest.get("format") != SERIES_FORMAT or not isinstance(steps, list) or not all(
        isinstance(s, dict) and type(s.get("step")) is int and isinstance(s.get("file"), str) for s in steps
    ):  # fmt: skip
        raise ValueError(f"{MANIFEST} is not a {SERIES_FORMAT} manifest")
    return manifest


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    manifest["steps"] = sorted(manifest["steps"], key=lambda s: s["step"])
    write_atomically(folder / MANIFEST, json.dumps(manifest, indent=1).encode("utf-8"))


def load_series(folder: Path) -> Series:
    """Every recorded step's trace, in step order (only files inside the folder are read)."""
    manifest = read_manifest(folder)
    if manifest is None or not manifest["steps"]:
        raise ValueError(f"{folder.name} holds no series: trace one into it (python -m moe_core trace-checkpoints)")
    records = manifest["steps"]
    traces = tuple(load_trace(corpus_file(folder, record["file"])) for record in records)
    return Series(tuple(record["step"] for record in records), traces)
