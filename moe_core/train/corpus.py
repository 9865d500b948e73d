"""The demo model's multi-domain corpus, assembled offline from material on the machine.

Domains are what make routing worth looking at (Mixtral §5, OLMoE §5), so each one is kept
separate, with its own held-out split. Every source is either part of Python itself or a Debian
package; `DEBIAN_PACKAGES` lists what to `apt-get install` to rebuild the model from scratch.
"""

from __future__ import annotations

import gzip
import hashlib
import random
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

DEBIAN_PACKAGES = ("python3.11-doc", "fortunes-de", "man-db")
PYTHON_DOC_SOURCES = Path("/usr/share/doc/python3.11/html/_sources")
GERMAN_FORTUNES = Path("/usr/share/games/fortunes/de")
MAN_PAGES = Path("/usr/share/man/man1")
HELD_OUT_SHARE = 0.05  # share of documents (by stable hash of their name) kept out of training
MAX_TRAIN_CHARS = 12_000_000  # per domain; the demo sees ~3M tokens of each, so more is only slower
MAX_HELD_OUT_CHARS = 400_000  # per domain


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def _is_held_out(name: str) -> bool:
    """A stable split by document name, so it survives re-runs and machines."""
    digest = hashlib.sha256(name.encode()).digest()
    return digest[0] / 256 < HELD_OUT_SHARE


def _read(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        return handle.read()


def _files(root: Path, pattern: str) -> Iterator[Path]:
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root} is missing: install the corpus with `apt-get install -y {' '.join(DEBIAN_PACKAGES)}`"
        )
    yield from sorted(p for p in root.rglob(pattern) if p.is_file())


def english_prose() -> Iterator[Document]:
    """The Python documentation (tutorials, HOWTOs, reference) in reStructuredText, plus pydoc topics."""
    for path in _files(PYTHON_DOC_SOURCES, "*.txt"):
        yield Document(str(path.relative_to(PYTHON_DOC_SOURCES)), _read(path))
    from pydoc_data.topics import topics

    for name, text in sorted(topics.items()):
        yield Document(f"pydoc:{name}", text)


def python_code() -> Iterator[Document]:
    """The CPython standard library's own source, tests excluded (they are long and repetitive)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in _files(stdlib, "*.py"):
        relative = path.relative_to(stdlib)
        if relative.parts[0] in {"site-packages", "test", "idlelib", "lib2to3"}:
            continue
        yield Document(str(relative), _read(path))


def german_quotes() -> Iterator[Document]:
    """German fortunes (Debian fortunes-de): short quotations, a second natural language."""
    for path in _files(GERMAN_FORTUNES, "*"):
        if path.suffix in {".dat", ".u8"} or path.is_symlink():
            continue
        for number, quote in enumerate(_read(path).split("\n%\n")):
            if quote.strip():
                yield Document(f"{path.name}:{number}", quote.strip() + "\n\n")


def man_pages() -> Iterator[Document]:
    """Section-1 man pages in groff: dense markup, unlike anything else in the mix."""
    for path in _files(MAN_PAGES, "*.gz"):
        yield Document(path.name, _read(path))


def arithmetic(count: int = 400_000, seed: int = 0) -> Iterator[Document]:
    """Generated, seeded arithmetic with correct answers: numbers as their own domain."""
    rng = random.Random(seed)
    operations: dict[str, Callable[[int, int], int]] = {
        "+": lambda a, b: a + b,
        "-": lambda a, b: a - b,
        "*": lambda a, b: a * b,
    }
    for number in range(count):
        a, b = rng.randint(0, 999), rng.randint(0, 99 if rng.random() < 0.5 else 999)
        symbol = rng.choice(list(operations))
        yield Document(f"arith:{number}", f"{a} {symbol} {b} = {operations[symbol](a, b)}\n")


DOMAINS: dict[str, Callable[[], Iterator[Document]]] = {
    "prose": english_prose,
    "code": python_code,
    "arithmetic": arithmetic,
    "german": german_quotes,
    "markup": man_pages,
}


def split_domain(documents: Iterator[Document]) -> tuple[str, str]:
    """Concatenate one domain's documents into (train text, held-out text)."""
    train: list[str] = []
    held_out: list[str] = []
    for document in documents:
        (held_out if _is_held_out(document.name) else train).append(document.text)
    return "".join(train)[:MAX_TRAIN_CHARS], "".join(held_out)[:MAX_HELD_OUT_CHARS]
