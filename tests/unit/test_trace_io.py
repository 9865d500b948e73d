"""Traces round-trip through JSON and Parquet, and corrupt files get a plain TraceFormatError."""

from __future__ import annotations

import numpy as np
import pytest

from moe_core.synthetic import random_trace
from moe_core.trace import RoutingTrace
from moe_core.trace_io import (
    TraceFormatError,
    from_json_dict,
    load_trace_bytes,
    to_json_dict,
    to_json_text,
    to_parquet_bytes,
)


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
