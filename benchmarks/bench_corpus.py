"""trace-corpus throughput against a plain batched forward of the same texts, as a ratio taken in one run.

Run from the repository root:

    python -m benchmarks.bench_corpus

The held-out texts of the bundled demo model, cut into paragraphs (one document each, about 150 documents and
11,000 tokens, repeated COPIES times), on the demo model. The plain side tokenises the documents and runs the
model over them in the very batches trace-corpus packs (same token budget), and does nothing else; the corpus
side is the whole of trace_corpus into a fresh folder: capture, splitting per document, Parquet shards, the
per-shard summaries (drop simulation included), the manifest and the total. Target: at least 0.9× the plain
throughput (tokens/s). The two sides alternate and each keeps its best of REPEATS runs, so drifts in machine
load hit both alike. Exits 1 if the target fails.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.timing import paired
from moe_core.batches import held_out_texts
from moe_core.capture.record import context_length, forward_text
from moe_core.corpus.documents import Document, shard_chunks
from moe_core.corpus.runner import (
    BATCH_TOKENS,
    SHARD_DOCUMENTS,
    CorpusSettings,
    pack_batches,
    padded_batch,
    tokenize_shard,
    trace_corpus,
)
from moe_core.models import DEMO_MODEL, LoadedModel, load_model

TARGET = 0.9  # corpus tokens/s over plain tokens/s
REPEATS = 5
COPIES = 2  # the held-out paragraphs this many times: enough tokens for stable timings


def documents() -> list[Document]:
    paragraphs = [
        (p, domain) for domain, text in held_out_texts().items() for p in text.split("\n\n") if p.strip()
    ] * COPIES
    return [Document(i, text, domain) for i, (text, domain) in enumerate(paragraphs)]


def write_jsonl(docs: list[Document], path: Path) -> None:
    import json

    path.write_text("".join(json.dumps({"text": d.text, "domain": d.domain}) + "\n" for d in docs), encoding="utf-8")


def plain_forward(loaded: LoadedModel, docs: list[Document], shard_documents: int) -> int:
    """Tokenise and run the model over the very batches trace-corpus makes (shard by shard, the same packing);
    returns the tokens."""
    tokenizer = loaded.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    tokens = 0
    with torch.inference_mode():
        for shard, chunk in shard_chunks(docs, shard_documents):
            ids = tokenize_shard(tokenizer, shard, chunk, context_length(loaded.model)).ids
            for batch in pack_batches([len(row) for row in ids], BATCH_TOKENS):
                forward_text(loaded.model, padded_batch([ids[i] for i in batch], pad).batch)
            tokens += sum(len(row) for row in ids)
    return tokens


def traced(loaded: LoadedModel, corpus: Path, shard_documents: int) -> int:
    """trace_corpus into a fresh folder; returns the tokens."""
    with tempfile.TemporaryDirectory() as out:
        settings = CorpusSettings(DEMO_MODEL, str(corpus), Path(out), domain_field="domain",
                                  shard_documents=shard_documents)  # fmt: skip
        total = trace_corpus(settings, loaded)
    return total.tokens if total is not None else 0


def main() -> int:
    loaded = load_model(DEMO_MODEL)
    docs = documents()
    with tempfile.TemporaryDirectory() as folder:
        corpus = Path(folder) / "held_out.jsonl"
        write_jsonl(docs, corpus)
        tokens = plain_forward(loaded, docs, SHARD_DOCUMENTS)  # warm-up, and the token count
        traced(loaded, corpus, SHARD_DOCUMENTS)  # warm-up: first Parquet write, imports
        plain_s, corpus_s = paired(
            lambda: plain_forward(loaded, docs, SHARD_DOCUMENTS),
            lambda: traced(loaded, corpus, SHARD_DOCUMENTS),
            REPEATS,
        )
    ratio = plain_s / corpus_s
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    print(f"{torch.get_num_threads()} torch threads, {torch.__version__}; {len(docs)} documents, {tokens:,} tokens")
    print(f"plain forward {tokens / plain_s:,.0f} tok/s ({plain_s:.2f} s) · trace-corpus {tokens / corpus_s:,.0f} "
          f"tok/s ({corpus_s:.2f} s)")  # fmt: skip
    print(f"trace-corpus / plain throughput: {ratio:.3f} (target >= {TARGET})  {verdict}")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
