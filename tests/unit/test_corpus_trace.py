"""trace-corpus and summarize on a tiny random Mixtral: shards, manifest, resuming, and exact counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from moe_core.capture.record import trace
from moe_core.corpus.runner import CorpusSettings, trace_corpus
from moe_core.corpus.shards import MANIFEST, corpus_total, read_shard
from moe_core.corpus.summary import summarize_documents
from moe_core.models import LoadedModel, load_model
from tests.cli_runner import run_cli as _cli

WORDS = ("alpha beta", "def f(x): return x + 1", "Guten Tag, wie geht es?", "1 + 2 = 3", "<p>hello</p>")


def _texts(count: int) -> list[tuple[str, str]]:
    """(text, domain) pairs of varied lengths; one blank document, one longer than the tiny model's context."""
    texts = [(" ".join([WORDS[i % 5]] * (1 + i % 4)), ("code", "prose")[i % 2]) for i in range(count)]
    texts[3] = ("   ", "prose")
    texts[5] = (" ".join(["word"] * 400), "prose")  # > 256 tokens: truncated
    return texts


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    lines = [json.dumps({"text": text, "domain": domain}) for text, domain in _texts(11)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> LoadedModel:
    return load_model(str(tiny_model_dir), device="cpu")


def _settings(tiny_model_dir: Path, corpus: Path, out: Path, **changes: Any) -> CorpusSettings:
    base = {"model": str(tiny_model_dir), "input": str(corpus), "out": out, "domain_field": "domain",
            "batch_tokens": 64, "shard_documents": 3, "device": "cpu"}  # fmt: skip
    return CorpusSettings(**(base | changes))


class Crash(Exception):
    pass


def test_summary_counts_equal_a_direct_trace(
    tiny: LoadedModel, tiny_model_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    """One document a pass (batch-tokens 1): the corpus summary equals the counts of moe_core.capture.record.trace
    run on each non-blank document."""
    total = trace_corpus(_settings(tiny_model_dir, corpus, tmp_path, batch_tokens=1), tiny)
    documents = [(t, d) for t, d in _texts(11) if t.strip()]
    routings = [trace(tiny.model, tiny.tokenizer, text) for text, _ in documents]
    direct = summarize_documents(
        [r.experts for r in routings], [r.tokens.ids for r in routings], [d for _, d in documents],
        routings[0].model.moe_layers, routings[0].model.num_experts, 1.0, truncated=1,
    )  # fmt: skip
    assert total is not None and total.equals(direct)
    assert total.documents == 10 and total.truncated == 1


def test_a_crashed_run_resumes_to_the_same_summary(
    tiny: LoadedModel, tiny_model_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    """An exception after shard 1, then a resume: no document lost or traced twice, and the same summary and
    shard files as a run that was never interrupted."""
    whole = trace_corpus(_settings(tiny_model_dir, corpus, tmp_path / "whole"), tiny)

    def crash_after_shard_1(shard: int) -> None:
        if shard == 1:
            raise Crash

    with pytest.raises(Crash):
        trace_corpus(_settings(tiny_model_dir, corpus, tmp_path / "resumed"), tiny, after_shard=crash_after_shard_1)
    assert [s["shard"] for s in json.loads((tmp_path / "resumed" / MANIFEST).read_text())["shards"]] == [0, 1]
    resumed = trace_corpus(_settings(tiny_model_dir, corpus, tmp_path / "resumed"), tiny)
    assert whole is not None and resumed is not None and resumed.equals(whole)
    shards = sorted((tmp_path / "resumed").glob("shard-*.parquet"))
    indices = [d.index for shard in shards for d in read_shard(shard)]
    assert sorted(indices) == [i for i, (t, _) in enumerate(_texts(11)) if t.strip()]


def test_a_partial_run_then_the_rest(
    capsys: pytest.CaptureFixture[str], tiny_model_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    """--max-documents 4 stops inside shard 1; running again without it redoes that shard whole and adds the
    rest: the summarize output equals an uninterrupted run's."""
    common = ["--model", str(tiny_model_dir), "--input", str(corpus), "--domain-field", "domain",
              "--shard-documents", "3", "--batch-tokens", "64", "--device", "cpu"]  # fmt: skip
    assert _cli(capsys, "trace-corpus", *common, "--out", str(tmp_path / "a"), "--max-documents", "4")[0] == 0
    partial = json.loads(_cli(capsys, "summarize", str(tmp_path / "a"))[1])
    assert partial["documents"] == 3  # documents 0-3, one blank
    code, out, _ = _cli(capsys, "trace-corpus", *common, "--out", str(tmp_path / "a"))
    assert code == 0 and json.loads(out)["documents"] == 10
    assert _cli(capsys, "trace-corpus", *common, "--out", str(tmp_path / "b"))[0] == 0
    resumed, fresh = (json.loads(_cli(capsys, "summarize", str(tmp_path / x))[1]) for x in "ab")
    assert resumed == fresh
    assert {"tokens", "documents", "layers", "domains"} <= set(fresh)
    layer = fresh["layers"][0]
    assert sum(layer["top1_counts"]) == fresh["tokens"] and sum(layer["topk_counts"]) == 2 * fresh["tokens"]
    assert set(fresh["domains"]) == {"code", "prose"}


def test_resuming_with_other_settings_is_refused(
    capsys: pytest.CaptureFixture[str], tiny: LoadedModel, tiny_model_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    """A folder traced at one capacity factor cannot be continued at another (the counts would not add)."""
    trace_corpus(_settings(tiny_model_dir, corpus, tmp_path, max_documents=2), tiny)
    code, _, err = _cli(capsys, "trace-corpus", "--model", str(tiny_model_dir), "--input", str(corpus), "--out",
                        str(tmp_path), "--domain-field", "domain", "--shard-documents", "3", "--capacity-factor", "2",
                        "--device", "cpu")  # fmt: skip
    assert code == 2 and "capacity_factor=1.0" in err and err.count("\n") == 1


def test_shards_hold_expert_ids_and_optional_fp16_weights(
    tiny: LoadedModel, tiny_model_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    """One row per document: ids and experts as int lists (no [L, T, E] scores); weights fp16 when asked."""
    trace_corpus(_settings(tiny_model_dir, corpus, tmp_path, weights=True, max_documents=3), tiny)
    schema = pq.read_schema(tmp_path / "shard-000000.parquet")
    assert schema.names == ["document", "domain", "token_ids", "experts", "weights"]
    assert str(schema.field("experts").type.value_type) == "int16"
    assert str(schema.field("weights").type.value_type) == "halffloat"
    document = read_shard(tmp_path / "shard-000000.parquet")[0]
    routing = trace(tiny.model, tiny.tokenizer, _texts(11)[0][0])
    np.testing.assert_array_equal(document.experts, routing.experts)
    np.testing.assert_allclose(document.weights, routing.weights, atol=1e-3)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["model"]["num_experts"] == routing.model.num_experts
    assert manifest["shards"][0]["range"] == [0, 3] and manifest["tokens"] == corpus_total(tmp_path).tokens


def test_summarize_needs_a_traced_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """summarize on a folder without a manifest fails in one line."""
    code, _, err = _cli(capsys, "summarize", str(tmp_path))
    assert code == 2 and "trace-corpus" in err


def test_a_long_document_is_cut_before_it_is_tokenised(demo_tokenizer: Any) -> None:
    """A 400,000-character document cut to 64 tokens: the same 64 ids as tokenising it whole, and the tokenizer
    never sees more than a short prefix (tokenising a 30 MB document whole took 4.3 GB)."""
    from moe_core.corpus.documents import Document
    from moe_core.corpus.runner import tokenize_shard

    text = "Routing long documents, one prefix at a time. " * 8700
    whole = list(demo_tokenizer(text, add_special_tokens=True)["input_ids"])
    seen: list[int] = []

    def recording(texts: Any, **kwargs: Any) -> Any:
        seen.append(len(texts))
        return demo_tokenizer(texts, **kwargs)

    work = tokenize_shard(recording, 0, [Document(0, text, "prose")], 64)
    assert work.ids == [whole[:64]] and work.truncated == 1
    assert max(seen) < 4_000 < len(text)
