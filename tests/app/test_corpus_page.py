"""The corpus page: an operator's traced corpus, opened by name and drawn from its summary alone."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.operator import operator_options
from moe_core.corpus.runner import CorpusSettings, trace_corpus

DOCUMENTS = [("def f(x): return x + 1", "code"), ("The cat sat on the mat. " * 6, "prose"),
             ("for i in range(3): print(i)", "code"), ("Guten Tag, wie geht es dir heute?", "prose")]  # fmt: skip


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """DIR/small: a few documents of two domains traced and summarized; DIR/unfinished has no summary."""
    root = tmp_path_factory.mktemp("corpora")
    source = root.parent / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": t, "domain": d}) + "\n" for t, d in DOCUMENTS), encoding="utf-8")
    trace_corpus(CorpusSettings(str(tiny_model_dir), str(source), root / "small", domain_field="domain",
                                shard_documents=2, device="cpu"))  # fmt: skip
    (root / "unfinished").mkdir()
    return root


@pytest.fixture
def operator_corpus_dir(corpus_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The server started with `-- --corpus-dir DIR`."""
    monkeypatch.setattr(sys, "argv", ["app/main.py", "--corpus-dir", str(corpus_dir)])
    operator_options.cache_clear()
    yield corpus_dir
    operator_options.cache_clear()


def test_a_link_opens_the_corpus_page(operator_corpus_dir: Path, app_runner: Callable[..., AppTest]) -> None:
    """corpus=small shows the corpus's header, its six tabs, charts and the token table, with no model loaded."""
    at = app_runner({"corpus": "small"})
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    assert any("Corpus **small**" in c.value and "4 documents" in c.value for c in at.caption)
    assert [tab.label for tab in at.tabs] == ["Expert load", "Domains", "Token ids", "Co-activation", "Layer flow",
                                              "Drops by position"]  # fmt: skip
    assert len(at.get("vega_lite_chart")) >= 5
    shown = [table.value for table in [*at.dataframe, *at.table]]  # HTML up to HTML_TABLE_ROWS rows, a grid past
    tokens = next(frame for frame in shown if {"expert", "token"} <= set(frame.columns))
    assert any(column.startswith("share") for column in tokens.columns) and len(tokens)
    assert at.selectbox(key="corpus").options == ["— none —", "small"]  # the folder without a summary is not offered


def test_unknown_names_and_no_corpus_dir_show_the_text_views(
    operator_corpus_dir: Path, app_runner: Callable[..., AppTest]
) -> None:
    """A name that is not offered (or a path) is ignored: the page shows the ordinary views."""
    at = app_runner({"corpus": "../small"})
    assert not at.exception
    assert at.selectbox(key="corpus").value == ""
    assert not any("Corpus **" in c.value for c in at.caption)


def test_leaving_the_corpus_page_brings_back_the_text_views(
    operator_corpus_dir: Path, app_runner: Callable[..., AppTest]
) -> None:
    """Text views -> a corpus -> none again: the text views come back with their settings, without an error."""
    at = app_runner({"view": "flow", "layer": "1"})
    at.selectbox(key="corpus").select("small").run()
    assert any("Corpus **small**" in c.value for c in at.caption)
    at.selectbox(key="corpus").select("").run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    assert not any("Corpus **" in c.value for c in at.caption)
    assert at.session_state["view"] == "flow"


def _damaged(root: Path, name: str, source: Path, damage: Callable[[Path], None]) -> None:
    """A copy of the traced corpus `source` under `root/name`, then damaged."""
    import shutil

    shutil.copytree(source, root / name)
    damage(root / name)


def _manifest_edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        change(manifest)
        (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")

    return edit


def _truncate_summary(folder: Path) -> None:
    (folder / "summary.npz").write_bytes((folder / "summary.npz").read_bytes()[:300])


def _link_summary_out(folder: Path) -> None:
    (folder / "summary.npz").unlink()
    (folder / "summary.npz").symlink_to(folder.parent.parent / "outside.npz")


DAMAGE = {
    "no-model": (_manifest_edit(lambda m: m.pop("model")), "model must be an object"),
    "model-a-number": (_manifest_edit(lambda m: m.update(model=3)), "model must be an object"),
    "shards-not-a-list": (_manifest_edit(lambda m: m.update(shards="all")), "shards must be a list"),
    "truncated-summary": (_truncate_summary, "summary.npz is not a corpus summary"),
    "summary-links-out": (_link_summary_out, "lies outside the corpus folder"),
}


@pytest.fixture(scope="module")
def damaged_dir(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("damaged")
    (root.parent / "outside.npz").write_bytes((corpus_dir / "small" / "summary.npz").read_bytes())
    for name, (damage, _) in DAMAGE.items():
        _damaged(root, name, corpus_dir / "small", damage)
    return root


@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_damaged_corpus_is_one_sentence_without_server_paths(
    name: str, damaged_dir: Path, app_runner: Callable[..., AppTest], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each damage gives one error naming the corpus by name and the file by name, never a folder of the
    server, and no traceback; a summary linked from outside the corpus folder is not read."""
    monkeypatch.setattr(sys, "argv", ["app/main.py", "--corpus-dir", str(damaged_dir)])
    operator_options.cache_clear()
    try:
        at = app_runner({"corpus": name})
    finally:
        operator_options.cache_clear()
    assert not at.exception, [e.value for e in at.exception]
    shown = [error.value.replace("\\", "") for error in at.error]  # markdown escapes . and (
    assert len(shown) == 1 and DAMAGE[name][1] in shown[0], shown
    assert str(damaged_dir) not in shown[0] and "/tmp" not in shown[0]
