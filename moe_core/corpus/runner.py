"""trace-corpus: route every document of a corpus through a model, shard by shard, resumably.

One process on a CPU or one GPU (or one model spread over several with device="auto-map", i.e.
device_map="auto"); under `accelerate launch` one model replica per process, each on its own GPU
({"": local_rank}), rank 0 loading (and downloading) first. Which rank traces which shard is fixed by
moe_core.corpus.shards.owner, so the processes never talk to each other except to wait at the start and end.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moe_core.capture.record import batch_of_ids, context_length, trace_batch
from moe_core.corpus.documents import Document, read_documents, shard_chunks
from moe_core.corpus.shards import (
    TracedDocument,
    open_manifest,
    owner,
    record_shard,
    shard_bytes,
    shard_name,
    summary_name,
    write_total,
)
from moe_core.corpus.summary import (
    CorpusSummary,
    empty_summary,
    save_summary,
    summarize_documents,
    write_atomically,
)
from moe_core.defaults import CORPUS_BATCH_TOKENS, CORPUS_SHARD_DOCUMENTS
from moe_core.models import LoadedModel, load_model
from moe_core.traces.io import model_json
from moe_core.traces.types import ModelInfo

BATCH_TOKENS, SHARD_DOCUMENTS = CORPUS_BATCH_TOKENS, CORPUS_SHARD_DOCUMENTS  # defaults (moe_core.defaults)


@dataclass(frozen=True)
class CorpusSettings:
    model: str
    input: str
    out: Path
    domain_field: str | None = None
    batch_tokens: int = BATCH_TOKENS
    shard_documents: int = SHARD_DOCUMENTS
    max_documents: int | None = None
    capacity_factor: float = 1.0
    weights: bool = False  # also store the combine weights (fp16)
    device: str = "auto"
    trust_remote_code: bool = False

    def manifest_settings(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items() if k != "out"}


@dataclass(frozen=True)
class Ranks:
    """This process's place among the data-parallel processes (rank 0 of 1 without accelerate)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    state: Any = None  # accelerate's PartialState when launched as several processes

    def main_first(self) -> contextlib.AbstractContextManager[Any]:
        return self.state.main_process_first() if self.state is not None else contextlib.nullcontext()

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


def current_ranks() -> Ranks:
    """The ranks `accelerate launch` (or torchrun) set up; one process when WORLD_SIZE is unset or 1."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Ranks()
    try:
        from accelerate import PartialState
    except ImportError:
        raise ValueError("several processes (WORLD_SIZE > 1) need accelerate: pip install accelerate") from None
    world = int(os.environ["WORLD_SIZE"])
    state = PartialState(cpu=not torch.cuda.is_available())  # without a GPU: gloo across CPU processes
    if state.num_processes != world:
        raise ValueError(f"WORLD_SIZE is {world} but accelerate set up {state.num_processes} processes: launch with "
                         "accelerate launch or torchrun")  # fmt: skip
    return Ranks(state.process_index, state.num_processes, state.local_process_index, state)


def load_replica(settings: CorpusSettings, ranks: Ranks) -> LoadedModel:
    """The model for this process: as `settings.device` says when alone; with several processes one whole
    replica per process on GPU `local_rank` (PartialState has made it the current CUDA device)."""
    if ranks.world == 1:
        return load_model(settings.model, device=settings.device, trust_remote_code=settings.trust_remote_code)
    if settings.device == "auto-map":
        raise ValueError("device auto-map spreads one model over all GPUs: run it as one process, not under "
                         "accelerate launch with several")  # fmt: skip
    with ranks.main_first():  # rank 0 downloads; the others then read the cache
        loaded = load_model(settings.model, device=settings.device, trust_remote_code=settings.trust_remote_code)
    wanted = torch.device("cuda", ranks.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if next(loaded.model.parameters()).device != wanted:
        loaded.model.to(wanted)
    return loaded


def pack_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Documents (by index into `lengths`) grouped into batches of at most `batch_tokens` padded tokens,
    longest first so that each batch pads little; a document longer than the budget goes alone."""
    batches: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_tokens:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


@dataclass
class ShardWork:
    """One shard being traced: its document range, its non-blank documents, their ids and (once traced) routing."""

    shard: int
    range: tuple[int, int]  # corpus documents [first, stop), blank ones included
    documents: list[Document]
    ids: list[list[int]]
    truncated: int
    traced: list[TracedDocument | None]


CHARS_PER_TOKEN = 8  # a first guess of the characters max_tokens tokens need; doubled until they are enough
BOUNDARY_TOKENS = 16  # tokens past the cut, so the word cut at a prefix's end never reaches the kept tokens


def _token_ids(tokenizer: Any, text: str, max_tokens: int | None) -> list[int]:
    """The text's token ids, at most max_tokens + 1 (one more says it was cut). A long document is tokenised by
    growing prefixes, never whole: one 30 MB document took 4.3 GB when tokenised before the cut."""
    if max_tokens is None:
        return list(tokenizer(text, add_special_tokens=True)["input_ids"])
    chars = (max_tokens + BOUNDARY_TOKENS) * CHARS_PER_TOKEN
    while True:
        ids = list(tokenizer(text[:chars], add_special_tokens=True)["input_ids"])
        if chars >= len(text) or len(ids) > max_tokens + BOUNDARY_TOKENS:
            return ids[: max_tokens + 1]
        chars *= 2


def tokenize_shard(tokenizer: Any, shard: int, documents: list[Document], max_tokens: int | None) -> ShardWork:
    """Token ids of the shard's non-blank documents (blank ones are skipped), cut to `max_tokens`."""
    kept = [d for d in documents if d.text.strip()]
    ids = [_token_ids(tokenizer, d.text, max_tokens) for d in kept]
    cut = sum(1 for row in ids if max_tokens is not None and len(row) > max_tokens)
    ids = [row[:max_tokens] if max_tokens else row for row in ids]
    span = (documents[0].index, documents[-1].index + 1)
    return ShardWork(shard, span, kept, ids, cut, [None] * len(kept))


def trace_shard(
    loaded: LoadedModel, work: ShardWork, settings: CorpusSettings, on_batch: Callable[[int], None]
) -> None:
    """Fill `work.traced` batch by batch; `on_batch(tokens)` after each forward pass."""
    tokenizer = loaded.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    for batch in pack_batches([len(row) for row in work.ids], settings.batch_tokens):
        routing, _ = trace_batch(loaded.model, batch_of_ids([work.ids[i] for i in batch], pad), name=settings.model)
        ends = np.cumsum([len(work.ids[i]) for i in batch])
        experts = np.split(routing.experts, ends[:-1], axis=1)
        weights = np.split(routing.weights.astype(np.float16), ends[:-1], axis=1) if settings.weights else None
        for place, index in enumerate(batch):
            document = work.documents[index]
            work.traced[index] = TracedDocument(
                document.index, document.domain, np.asarray(work.ids[index], dtype=np.int32), experts[place],
                None if weights is None else weights[place],
            )  # fmt: skip
        on_batch(int(ends[-1]))


def shard_summary(work: ShardWork, info: ModelInfo, capacity_factor: float) -> CorpusSummary:
    traced = [t for t in work.traced if t is not None]
    if not traced:
        return empty_summary(info.moe_layers, info.num_experts, info.top_k, capacity_factor)
    return summarize_documents(
        [t.experts for t in traced], [t.token_ids for t in traced], [t.domain for t in traced], info.moe_layers,
        info.num_experts, capacity_factor, truncated=work.truncated,
    )  # fmt: skip


def finish_shard(folder: Path, work: ShardWork, info: ModelInfo, settings: CorpusSettings, rank: int) -> None:
    """Shard file, then its summary, then the manifest record: each written whole (tmp + rename)."""
    traced = [t for t in work.traced if t is not None]
    shard = shard_bytes(traced, info.moe_layers, info.num_experts, info.top_k)
    write_atomically(folder / shard_name(work.shard), shard)
    save_summary(shard_summary(work, info, settings.capacity_factor), folder / summary_name(work.shard))
    record_shard(folder, {
        "shard": work.shard,
        "file": shard_name(work.shard),
        "summary": summary_name(work.shard),
        "rank": rank,
        "range": list(work.range),
        "documents_traced": len(traced),
        "documents_blank": work.range[1] - work.range[0] - len(traced),
        "tokens": int(sum(len(t.token_ids) for t in traced)),
        "truncated": work.truncated,
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })  # fmt: skip


def my_shards(
    settings: CorpusSettings, ranks: Ranks, done: dict[int, tuple[int, int]]
) -> Iterator[tuple[int, list[Document]]]:
    """This rank's shards still to trace: its own (shards.owner), less those finished with the same range."""
    documents = read_documents(settings.input, settings.domain_field, settings.max_documents)
    for shard, chunk in shard_chunks(documents, settings.shard_documents):
        if owner(shard, ranks.world) == ranks.rank and done.get(shard) != (chunk[0].index, chunk[-1].index + 1):
            yield shard, chunk


def progress_bar(ranks: Ranks) -> Any:
    """Tokens and tokens/s on stderr, only on a terminal (a log gets no bar)."""
    from tqdm import tqdm

    label = f"rank {ranks.rank}" if ranks.world > 1 else "tracing"
    return tqdm(desc=label, unit="tok", unit_scale=True, position=ranks.rank, disable=not sys.stderr.isatty())


ShardHook = Callable[[int], None]  # called after each finished shard (tests inject a crash here)


def trace_corpus(
    settings: CorpusSettings, loaded: LoadedModel | None = None, after_shard: ShardHook | None = None
) -> CorpusSummary | None:
    """Trace the corpus into `settings.out`, skipping shards already finished there. Returns the whole
    corpus's summary on rank 0 (None on the other ranks), also written to DIR/summary.npz."""
    ranks = current_ranks()
    loaded = loaded or load_replica(settings, ranks)
    folder = settings.out
    info = _model_info(loaded, settings)
    done = open_manifest(folder, model_json(info), settings.manifest_settings())
    limit = context_length(loaded.model)
    bar = progress_bar(ranks)
    try:
        for shard, chunk in my_shards(settings, ranks, done):
            work = tokenize_shard(loaded.tokenizer, shard, chunk, limit)
            trace_shard(loaded, work, settings, bar.update)
            finish_shard(folder, work, info, settings, ranks.rank)
            bar.set_postfix(shard=shard, refresh=False)
            if after_shard is not None:
                after_shard(shard)
    finally:
        bar.close()
    ranks.wait()
    return write_total(folder) if ranks.rank == 0 else None


def _model_info(loaded: LoadedModel, settings: CorpusSettings) -> ModelInfo:
    """The model's ModelInfo, from a one-token trace (what the manifest records before any shard)."""
    bos = loaded.tokenizer.bos_token_id if loaded.tokenizer.bos_token_id is not None else 0
    return trace_batch(loaded.model, batch_of_ids([[bos]], bos), name=settings.model)[0].model
