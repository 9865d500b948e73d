"""The documents of a corpus, in one deterministic order, from local files or a `datasets` name.

Every reader yields Documents numbered 0, 1, 2, ... in the same order on every run and every rank: shards are
fixed ranges of these numbers, which is what makes a run resumable and splittable across processes.

- `.txt`: one document per non-blank line (the usual corpus layout; a file of prose paragraphs works too).
- `.jsonl`: one JSON object per line, the text under `text`.
- `.parquet`: one row per document, the text in column `text`.
- a folder: every such file below it, in sorted path order.
- anything else: a Hugging Face `datasets` name (`name` or `name:config`, split `train`), if `datasets` is
  installed.

`domain_field` names the field (JSON key or column) holding each document's domain; without it, or where a
record lacks it, the domain is "" (shown as "all").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

TEXT_FIELD = "text"
NO_DOMAIN = ""


@dataclass(frozen=True)
class Document:
    index: int  # place in the corpus order, from 0
    text: str
    domain: str = NO_DOMAIN


Records = Iterator[dict[str, Any]]


def _txt_records(path: Path) -> Records:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield {TEXT_FIELD: line.rstrip("\n")}


def _jsonl_records(path: Path) -> Records:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get(TEXT_FIELD), str):
                raise ValueError(f"{path}:{number}: each line must be a JSON object with a string {TEXT_FIELD!r}")
            yield record


def _parquet_records(path: Path) -> Records:
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    if TEXT_FIELD not in file.schema_arrow.names:
        raise ValueError(f"{path}: no {TEXT_FIELD!r} column (columns: {', '.join(file.schema_arrow.names)})")
    for batch in file.iter_batches(batch_size=1024):
        yield from batch.to_pylist()


FILE_READERS: dict[str, Callable[[Path], Records]] = {
    ".txt": _txt_records,
    ".jsonl": _jsonl_records,
    ".parquet": _parquet_records,
}


def _folder_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in FILE_READERS)
    if not files:
        raise ValueError(f"{folder} holds no {', '.join(FILE_READERS)} files")
    return files


def _dataset_records(name: str) -> Records:
    """A `datasets` corpus, streamed in its own order; the import is lazy since most users never need it."""
    try:
        import datasets
    except ImportError:
        raise ValueError(
            f"{name!r} is no local file or folder, and reading it as a datasets name needs `pip install datasets`"
        ) from None
    path, _, config = name.partition(":")
    yield from datasets.load_dataset(path, config or None, split="train", streaming=True)


def _records(source: str) -> Records:
    path = Path(source).expanduser()
    if path.is_dir():
        for file in _folder_files(path):
            yield from FILE_READERS[file.suffix](file)
    elif path.is_file():
        if path.suffix not in FILE_READERS:
            raise ValueError(f"{path}: unknown corpus file type; use {', '.join(FILE_READERS)} or a folder of them")
        yield from FILE_READERS[path.suffix](path)
    elif path.suffix in FILE_READERS:
        raise ValueError(f"{path}: no such file")
    else:
        yield from _dataset_records(source)


def read_documents(source: str, domain_field: str | None = None, limit: int | None = None) -> Iterator[Document]:
    """The corpus at `source` as numbered Documents (at most `limit`)."""
    documents = (_document(index, record, domain_field) for index, record in enumerate(_records(source)))
    return islice(documents, limit) if limit is not None else documents


def _document(index: int, record: dict[str, Any], domain_field: str | None) -> Document:
    text = record.get(TEXT_FIELD)
    if not isinstance(text, str):
        raise ValueError(f"document {index}: no string {TEXT_FIELD!r} field")
    domain = record.get(domain_field) if domain_field else None
    return Document(index, text, NO_DOMAIN if domain is None else str(domain))


def shard_chunks(documents: Iterable[Document], shard_documents: int) -> Iterator[tuple[int, list[Document]]]:
    """(shard id, its documents): shard j holds documents j·S … (j+1)·S − 1, whichever rank traces it."""
    chunk: list[Document] = []
    for document in documents:
        if chunk and document.index // shard_documents != chunk[0].index // shard_documents:
            yield chunk[0].index // shard_documents, chunk
            chunk = []
        chunk.append(document)
    if chunk:
        yield chunk[0].index // shard_documents, chunk
