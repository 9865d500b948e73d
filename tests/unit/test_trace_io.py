"""Traces round-trip through JSON and Parquet, and corrupt files get a plain TraceFormatError."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest

from moe_core.analyses.gates import gate_heatmap
from moe_core.analyses.routing import route_labels, token_frame
from moe_core.capacity.simulate import simulate_capacity
from moe_core.traces.io import (
    TraceFormatError,
    from_json_dict,
    load_trace_bytes,
    to_json_dict,
    to_json_text,
    to_parquet_bytes,
)
from moe_core.traces.synthetic import random_trace
from moe_core.traces.types import MissingRouting, RoutingTrace, gate_weights


@pytest.fixture
def routing() -> RoutingTrace:
    return random_trace([5, 3], num_experts=8, top_k=2, num_layers=3, seed=4)


def _assert_same(a: RoutingTrace, b: RoutingTrace) -> None:
    assert a.model == b.model and a.texts == b.texts and a.truncated == b.truncated
    assert a.tokens.text == b.tokens.text
    for name in ("ids", "offsets", "sequence", "position"):
        np.testing.assert_array_equal(getattr(a.tokens, name), getattr(b.tokens, name))
    np.testing.assert_array_equal(a.experts, b.experts)
    for name in ("logits", "probs", "weights"):
        assert a.has(name) == b.has(name), name
        if a.has(name):
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=1e-6)


def test_json_round_trip(routing: RoutingTrace) -> None:
    """JSON text -> trace gives back the same trace."""
    _assert_same(routing, load_trace_bytes(to_json_text(routing).encode(), "t.json"))


def test_parquet_round_trip(routing: RoutingTrace) -> None:
    """Parquet bytes -> trace gives back the same trace."""
    _assert_same(routing, load_trace_bytes(to_parquet_bytes(routing), "t.parquet"))


def test_json_matches_the_cli_contract(routing: RoutingTrace) -> None:
    """The documented keys are present with the documented shapes."""
    data = to_json_dict(routing)
    assert {"name", "architecture", "num_experts", "top_k", "moe_layers"} <= set(data["model"])
    assert set(data["tokens"][0]) >= {"id", "text", "sequence", "position"}
    layer = data["layers"][0]
    assert set(layer) == {"layer", "logits", "probs", "experts", "weights"}
    assert np.asarray(layer["experts"]).shape == (8, 2) and np.asarray(layer["probs"]).shape == (8, 8)


@pytest.mark.parametrize(
    ("payload", "name"),
    [
        (b"\x00\x01 not json", "t.json"),
        (b'{"tokens": []}', "t.json"),
        (b"[1, 2, 3]", "t.json"),
        (b"PAR1 garbage", "t.parquet"),
        (b"{}", "t.csv"),
    ],
)
def test_corrupt_files_are_refused(payload: bytes, name: str) -> None:
    """Garbage, wrong structure, or a wrong extension: TraceFormatError, never another exception."""
    with pytest.raises(TraceFormatError):
        load_trace_bytes(payload, name)


def test_shape_mismatch_is_refused(routing: RoutingTrace) -> None:
    """A layer whose experts have the wrong width is refused with the shape in the message."""
    data = to_json_dict(routing)
    data["layers"][0]["experts"] = [[0] for _ in data["tokens"]]
    with pytest.raises(TraceFormatError):
        from_json_dict(data)


def test_nan_weights_are_refused(routing: RoutingTrace) -> None:
    """NaN in the weights would poison every chart: refused."""
    data = to_json_dict(routing)
    data["layers"][1]["weights"][0][0] = float("nan")
    with pytest.raises(TraceFormatError, match="NaN"):
        from_json_dict(data)


COMPACT_KINDS = {
    "experts only (an engine dump)": ("logits", "probs", "weights"),
    "experts and weights": ("logits", "probs"),
    "no logits": ("logits",),
}


@pytest.mark.parametrize("absent", COMPACT_KINDS.values(), ids=COMPACT_KINDS.keys())
@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_compact_traces_round_trip(routing: RoutingTrace, absent: tuple[str, ...], suffix: str) -> None:
    """A trace without some optional arrays saves and loads as the same compact trace (JSON writes them null)."""
    compact = replace(routing, **dict.fromkeys(absent))
    data = to_json_text(compact).encode() if suffix == ".json" else to_parquet_bytes(compact)
    loaded = load_trace_bytes(data, f"t{suffix}")
    _assert_same(compact, loaded)
    if suffix == ".json":
        assert all(layer[name] is None for layer in to_json_dict(compact)["layers"] for name in absent)
    else:
        assert not set(absent) & set(pq.read_schema(io.BytesIO(data)).names)


def test_parquet_rows_are_placed_by_their_layer_and_token_columns(routing: RoutingTrace) -> None:
    """Shuffled rows (as a data engine may write them) read back as the same trace: order comes from the columns."""
    table = pq.read_table(io.BytesIO(to_parquet_bytes(routing)))
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    sink = io.BytesIO()
    pq.write_table(shuffled.replace_schema_metadata(table.schema.metadata), sink)
    _assert_same(routing, load_trace_bytes(sink.getvalue(), "t.parquet"))


def test_parquet_reads_only_the_arrays_asked_for(routing: RoutingTrace) -> None:
    """Column selection: asking for experts and weights gives a compact trace with exactly those, and the same
    experts and weights as the whole file."""
    data = to_parquet_bytes(routing)
    compact = load_trace_bytes(data, "t.parquet", arrays=("weights",))
    assert (compact.has("logits"), compact.has("probs"), compact.has("weights")) == (False, False, True)
    np.testing.assert_array_equal(compact.experts, routing.experts)
    np.testing.assert_allclose(compact.weights, routing.weights, atol=1e-7)


def test_float16_scores_halve_the_score_columns(routing: RoutingTrace) -> None:
    """scores_dtype=float16 stores logits and probs in half precision: within fp16 rounding of the originals."""
    loaded = load_trace_bytes(to_parquet_bytes(routing, np.float16), "t.parquet")
    np.testing.assert_allclose(loaded.probs, routing.probs, rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(loaded.experts, routing.experts)


def test_a_compact_trace_says_what_an_analysis_needs(routing: RoutingTrace) -> None:
    """Analyses that read scores refuse a trace without them in one sentence; those that need only experts run."""
    compact = replace(routing, logits=None, probs=None, weights=None)
    with pytest.raises(MissingRouting, match=r"^this trace has no router scores: the gate view needs them$"):
        gate_heatmap(compact, 0)
    with pytest.raises(MissingRouting, match="no router scores: the score policy needs them"):
        simulate_capacity(compact, 1.0, policy="score")
    position = simulate_capacity(compact, 1.0, policy="position")
    np.testing.assert_array_equal(position.kept, simulate_capacity(routing, 1.0, policy="position").kept)
    assert token_frame(compact, 0)["top1_weight"].isna().all()
    assert "0." not in route_labels(compact.experts[0], gate_weights(compact)[0])[0]
