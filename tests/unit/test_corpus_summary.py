"""Corpus pieces without a model: reading documents, the rank split, batch packing, addable summaries."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moe_core.analyses.flow import transition_counts
from moe_core.analyses.load import coactivation_frame, load_frame
from moe_core.capacity.simulate import simulate_capacity
from moe_core.corpus.documents import read_documents, shard_chunks
from moe_core.corpus.runner import pack_batches
from moe_core.corpus.shards import documents_of_rank
from moe_core.corpus.summary import add_all, load_summary, save_summary, summarize_documents
from moe_core.traces.types import DROPPED, ModelInfo, RoutingTrace, Tokens

E, K, LAYERS = 6, 2, (0, 2, 3)


def _documents(seed: int, count: int) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """Random routing of `count` documents: (experts [L, T, k] with some model drops, ids [T], domain)."""
    rng = np.random.default_rng(seed)
    out = []
    for number in range(count):
        length = int(rng.integers(3, 40))
        distinct = rng.permuted(np.tile(np.arange(E), (len(LAYERS) * length, 1)), axis=1)[:, :K]
        experts = distinct.reshape(len(LAYERS), length, K)
        experts[rng.random(experts.shape) < 0.05] = DROPPED
        out.append((experts, rng.integers(0, 30, length), ("code", "prose", "math")[number % 3]))
    return out


def _summary(documents: list[tuple[np.ndarray, np.ndarray, str]], factor: float = 1.0):
    experts, ids, domains = zip(*documents, strict=True)
    return summarize_documents(experts, ids, domains, LAYERS, E, factor)


def _trace(documents: list[tuple[np.ndarray, np.ndarray, str]]) -> RoutingTrace:
    """The same documents as one RoutingTrace, to compute the counts the direct way."""
    experts = np.concatenate([d[0] for d in documents], axis=1)
    lengths = [len(d[1]) for d in documents]
    total = sum(lengths)
    info = ModelInfo("m", "mixtral", E, K, "softmax", 4, LAYERS)
    ids = np.concatenate([d[1] for d in documents])
    sequence = np.repeat(np.arange(len(lengths)), lengths)
    position = np.concatenate([np.arange(n) for n in lengths])
    tokens = Tokens(ids, ("",) * total, np.zeros((total, 2), np.int64), sequence, position)
    probs = np.full((len(LAYERS), total, E), 1 / E, dtype=np.float32)
    return RoutingTrace(info, ("",) * len(lengths), tokens, probs, probs, experts, np.ones(experts.shape, np.float32))


def test_the_whole_is_the_sum_of_its_shards() -> None:
    """Summaries of any split of the documents add up to the summary of all of them, field by field."""
    documents = _documents(0, 12)
    whole = _summary(documents)
    assert add_all([_summary(documents[:5]), _summary(documents[5:6]), _summary(documents[6:])]).equals(whole)
    assert (_summary(documents[7:]) + _summary(documents[:7])).equals(whole)


def test_counts_equal_the_trace_analyses() -> None:
    """Load, transitions, co-activation and drops by position are what the per-trace analyses compute."""
    documents = _documents(1, 9)
    summary, routing = _summary(documents, factor=0.75), _trace(documents)
    frame = load_frame(routing)
    np.testing.assert_array_equal(summary.top1, frame["top1"].to_numpy().reshape(len(LAYERS), E))
    np.testing.assert_array_equal(summary.topk, frame["topk"].to_numpy().reshape(len(LAYERS), E))
    for row in range(len(LAYERS) - 1):
        np.testing.assert_array_equal(summary.transitions[row], transition_counts(routing, row))
    for row in range(len(LAYERS)):
        pairs = coactivation_frame(routing, row)
        expected = np.zeros((E, E), np.int64)
        expected[pairs["source"], pairs["target"]] = pairs["count"]
        np.testing.assert_array_equal(summary.coactivation[row] * (1 - np.eye(E, dtype=np.int64)), expected)
    result = simulate_capacity(routing, 0.75, policy="position", group="sequence")
    rate = summary.position_dropped / np.maximum(summary.position_slots, 1)
    np.testing.assert_allclose(rate, np.nan_to_num(result.drop_rate_by_position), atol=1e-12)


def test_token_id_counts_are_sparse_top1_counts() -> None:
    """(layer, token id, expert) rows count first choices, with no zero rows."""
    documents = _documents(2, 4)
    summary, routing = _summary(documents), _trace(documents)
    row = 1
    top1, ids = routing.experts[row, :, 0], routing.tokens.ids
    token = int(summary.token_id[summary.token_layer == row][0])
    expected = np.bincount(top1[(ids == token) & (top1 >= 0)], minlength=E)
    rows = (summary.token_layer == row) & (summary.token_id == token)
    got = np.zeros(E, np.int64)
    got[summary.token_expert[rows]] = summary.token_count[rows]
    np.testing.assert_array_equal(got, expected)
    assert (summary.token_count > 0).all()


def test_domains_count_their_documents_and_slots() -> None:
    """Per-domain slots add up to the total slots; each domain has its documents."""
    summary = _summary(_documents(3, 7))
    assert summary.domains == ("code", "math", "prose")
    assert summary.domain_documents.tolist() == [3, 2, 2]
    np.testing.assert_array_equal(summary.domain_topk.sum(axis=0), summary.topk)


def test_summary_file_round_trip(tmp_path: Path) -> None:
    """save_summary / load_summary give back the same counts (npz, no pickle)."""
    summary = _summary(_documents(4, 5))
    save_summary(summary, tmp_path / "s.npz")
    assert load_summary(tmp_path / "s.npz").equals(summary)
    (tmp_path / "bad.npz").write_bytes(b"not a summary")
    with pytest.raises(ValueError, match="not a corpus summary"):
        load_summary(tmp_path / "bad.npz")


def test_summaries_of_different_capacity_factors_do_not_add() -> None:
    """Adding counts taken at different capacity factors is refused."""
    documents = _documents(5, 2)
    with pytest.raises(ValueError, match="capacity_factor"):
        _summary(documents, 1.0) + _summary(documents, 2.0)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_document_goes_to_exactly_one_rank(world: int) -> None:
    """The rank split covers every document once, in whole shards, whatever the number of processes."""
    per_rank = [documents_of_rank(23, 4, rank, world) for rank in range(world)]
    assert sorted(d for documents in per_rank for d in documents) == list(range(23))
    for rank, documents in enumerate(per_rank):
        assert {d // 4 % world for d in documents} <= {rank}


def test_shard_chunks_are_fixed_ranges() -> None:
    """Shard j holds documents j·S … (j+1)·S − 1 even when the reader starts elsewhere."""
    from moe_core.corpus.documents import Document

    documents = [Document(i, "x") for i in range(2, 11)]
    chunks = [(shard, [d.index for d in chunk]) for shard, chunk in shard_chunks(documents, 4)]
    assert chunks == [(0, [2, 3]), (1, [4, 5, 6, 7]), (2, [8, 9, 10])]


def test_batches_stay_within_the_token_budget() -> None:
    """Each batch pads to at most the budget (a longer document goes alone); every document once."""
    lengths = [5, 30, 7, 7, 12, 1, 64]
    batches = pack_batches(lengths, 32)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 32


def test_local_files_of_every_kind(tmp_path: Path) -> None:
    """.txt (a document a line), .jsonl (text, domain), .parquet, and a folder of them in sorted order."""
    (tmp_path / "a.txt").write_text("first line\n\nsecond line\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "json doc", "kind": "code"}) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"text": ["parquet doc"], "kind": ["prose"]}), tmp_path / "c.parquet")
    documents = list(read_documents(str(tmp_path), domain_field="kind"))
    assert [(d.index, d.text, d.domain) for d in documents] == [
        (0, "first line", ""), (1, "second line", ""), (2, "json doc", "code"), (3, "parquet doc", "prose"),
    ]  # fmt: skip
    assert len(list(read_documents(str(tmp_path), limit=2))) == 2


def test_unknown_inputs_fail_clearly(tmp_path: Path) -> None:
    """A missing file, a bad JSON line, and a hub-style name without `datasets` each say what to do."""
    with pytest.raises(ValueError, match="no such file"):
        list(read_documents(str(tmp_path / "missing.jsonl")))
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        list(read_documents(str(tmp_path / "bad.jsonl")))
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="pip install datasets"):
            list(read_documents("org/some-corpus"))


def test_corpus_frames_match_the_trace_frames() -> None:
    """The corpus page's frames equal the per-trace frames of the same routing (load, domains, flow, drops)."""
    from moe_core.analyses import corpus as frames
    from moe_core.analyses.capacity import LayerSlots, drop_curve
    from moe_core.analyses.flow import transition_frame
    from moe_core.analyses.load import domain_share_frame

    documents = _documents(6, 6)
    summary, routing = _summary(documents), _trace(documents)
    assert frames.load_frame(summary).equals(load_frame(routing))
    assert frames.transition_frame(summary, 1).equals(transition_frame(routing, 1))
    domains = [d[2] for d in documents]
    per_text = domain_share_frame(routing, 2, domains)
    by_trace = (per_text["share"] * per_text["slots"]).groupby([per_text["domain"], per_text["expert"]]).sum()
    pooled = frames.domain_share_frame(summary, 2).set_index(["domain", "expert"])
    np.testing.assert_allclose((pooled["share"] * pooled["slots"]).sort_index(), by_trace.sort_index())
    result = simulate_capacity(routing, 1.0)
    expected = drop_curve(routing.tokens.position, LayerSlots.simulated(routing, result, 0), bins=8)
    got = frames.drop_curve(summary, 0, bins=8)
    np.testing.assert_allclose(got["slot_drop_rate"], expected["slot_drop_rate"])
    np.testing.assert_allclose(got["token_drop_rate"], expected["token_drop_rate"])
    assert got["tokens"].tolist() == expected["tokens"].tolist()


def test_top_tokens_and_vocabulary_specialization() -> None:
    """Top tokens per expert come with the share of the id's first choices; specialization matches metrics'."""
    from moe_core.analyses import corpus as frames
    from moe_core.metrics import vocabulary_specialization

    documents = _documents(7, 10)
    summary, routing = _summary(documents), _trace(documents)
    table = frames.top_tokens_frame(summary, 0, per_expert=3, min_count=1)
    assert table.groupby("expert").size().max() <= 3
    assert ((table["share"] > 0) & (table["share"] <= 1)).all()
    expected = vocabulary_specialization(routing.tokens.ids, routing.experts[0, :, 0], min_count=5)
    got = frames.vocabulary_specialization(summary, min_count=5)["specialization"].iloc[0]
    assert got == pytest.approx(expected)


def test_one_process_without_a_launcher_and_no_bar_in_a_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without WORLD_SIZE the run is rank 0 of 1 (no accelerate needed); off a terminal the bar is silent."""
    from moe_core.corpus.runner import Ranks, current_ranks, progress_bar

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert current_ranks() == Ranks()
    bar = progress_bar(Ranks())
    assert bar.disable
    bar.close()


def _rewritten(summary_path: Path, out: Path, *, meta: Any = None, arrays: dict[str, np.ndarray] | None = None) -> Path:
    """A copy of a saved summary with its settings or some arrays replaced (what a damaged or forged file holds)."""
    with np.load(summary_path, allow_pickle=False) as data:
        contents = {name: data[name] for name in data.files}
    if meta is not None:
        contents["meta"] = np.array(json.dumps(meta))
    contents.update(arrays or {})
    np.savez_compressed(out, **contents)
    return out


def _meta_of(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["meta"]))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda m: m.pop("num_experts"), "settings lack num_experts"),
        (lambda m: m.update(extra=1), "hold unknown keys"),
        (lambda m: m.update(num_experts="8"), "must be whole numbers"),
        (lambda m: m.update(moe_layers="0,1"), "moe_layers must be a list"),
        (lambda m: m.update(num_experts=50_000_000), "experts = 50,000,000 is outside"),
        (lambda m: m.update(capacity_factor=-1), "capacity_factor must be a capacity factor"),
    ],
)
def test_damaged_settings_are_one_sentence(tmp_path: Path, change: Any, expected: str) -> None:
    save_summary(_summary(_documents(4, 5)), tmp_path / "s.npz")
    meta = _meta_of(tmp_path / "s.npz")
    change(meta)
    with pytest.raises(ValueError) as caught:
        load_summary(_rewritten(tmp_path / "s.npz", tmp_path / "summary.npz", meta=meta))
    assert expected in str(caught.value) and str(tmp_path) not in str(caught.value)


def test_arrays_of_the_wrong_shape_or_kind_are_refused(tmp_path: Path) -> None:
    summary = _summary(_documents(4, 5))
    save_summary(summary, tmp_path / "s.npz")
    wrong_shape = np.zeros((summary.num_layers, summary.num_experts + 1), dtype=np.int64)
    for arrays, expected in [({"top1": wrong_shape}, "top1 is int64 of shape"),
                             ({"topk": summary.topk.astype(np.float64)}, "topk is float64"),
                             ({"token_id": summary.token_id[:-1]}, "differ in length")]:  # fmt: skip
        with pytest.raises(ValueError, match=expected):
            load_summary(_rewritten(tmp_path / "s.npz", tmp_path / "summary.npz", arrays=arrays))


def test_a_summary_declaring_more_than_the_limit_is_refused_before_decompressing(tmp_path: Path) -> None:
    """Compressed zeros: a ~130 KB file whose one array declares 129 MiB is refused from its zip header alone
    (the audit's 2.4 MB file took the server to 3.1 GB)."""
    import zipfile

    from moe_core.corpus.summary import MAX_SUMMARY_BYTES

    path = tmp_path / "summary.npz"
    size = MAX_SUMMARY_BYTES + 2**20
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, {"descr": "<i8", "fortran_order": False, "shape": (size // 8,)})
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open("coactivation.npy", "w", force_zip64=True) as member,
    ):
        member.write(header.getvalue())
        for _ in range(size // 2**20):
            member.write(bytes(2**20))
    assert path.stat().st_size < 2**20
    with pytest.raises(ValueError, match="too large"):
        load_summary(path)
