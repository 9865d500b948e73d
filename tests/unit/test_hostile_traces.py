"""Hostile or broken trace files: each is refused with one plain line (TraceFormatError), never a traceback.

Every case here gave a traceback, or an oversized allocation, before the reader checked each field (issue 10).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moe_core.traces.io import (
    MAX_TRACE_BYTES,
    MAX_TRACE_MB,
    TraceFormatError,
    load_trace,
    load_trace_bytes,
    to_json_dict,
    to_parquet_bytes,
)
from moe_core.traces.synthetic import random_trace

NUM_EXPERTS, TOP_K = 8, 2


def _valid() -> dict[str, Any]:
    """A valid trace as parsed JSON (lists, not tuples): 2 layers, sequences of 5 and 3 tokens."""
    routing = random_trace([5, 3], num_experts=NUM_EXPERTS, top_k=TOP_K, num_layers=2, seed=1)
    return json.loads(json.dumps(to_json_dict(routing)))


def _refusal(payload: bytes, name: str = "t.json") -> str:
    """The one-line reason a file is refused (fails the test if it is accepted or raises anything else)."""
    with pytest.raises(TraceFormatError) as caught:
        load_trace_bytes(payload, name)
    message = str(caught.value)
    assert message and "\n" not in message
    return message


def _refusal_of(edit: Callable[[dict[str, Any]], None]) -> str:
    data = _valid()
    edit(data)
    return _refusal(json.dumps(data).encode())


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit that sets data[a][b]... (keys split on '/', list indices as numbers) to value."""

    def edit(data: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
        target: Any = data
        for key in parents:
            target = target[key]
        target[last] = value

    return edit


def test_the_valid_trace_used_here_loads() -> None:
    """The baseline every case below breaks is itself accepted (so each refusal is due to its one edit)."""
    routing = load_trace_bytes(json.dumps(_valid()).encode(), "t.json")
    assert routing.experts.shape == (2, 8, TOP_K) and routing.model.num_experts == NUM_EXPERTS


@pytest.mark.parametrize(
    ("value", "reason"),
    [(NUM_EXPERTS, "outside 0 to 7"), (10**6, "outside 0 to 7"), (-2, "outside 0 to 7"), (1e6, "whole numbers")],
)
def test_expert_index_out_of_range_is_refused(value: Any, reason: str) -> None:
    """An expert index >= E, far beyond, below DROPPED (-1), or not a whole number."""
    assert reason in _refusal_of(_set("layers/1/experts/3/0", value))


def test_dropped_slot_is_accepted() -> None:
    """-1 (DROPPED, the model's own capacity drop) is a valid expert value."""
    data = _valid()
    data["layers"][0]["experts"][2][1] = -1
    assert load_trace_bytes(json.dumps(data).encode(), "t.json").experts[0, 2, 1] == -1


@pytest.mark.parametrize(
    ("value", "reason"),
    [(0, "between 1 and 4096"), (8.0, "whole number, got a decimal"), (True, "whole number, got true/false")],
)
def test_bad_expert_count_is_refused(value: Any, reason: str) -> None:
    """E = 0, E as a float, E as a bool: the model's expert count must be a whole number >= 1."""
    message = _refusal_of(_set("model/num_experts", value))
    assert "model.num_experts" in message and reason in message


@pytest.mark.parametrize("top_k", [0, NUM_EXPERTS + 1])
def test_top_k_outside_one_to_e_is_refused(top_k: int) -> None:
    """k must satisfy 1 <= k <= E."""
    assert f"model.top_k must be between 1 and {NUM_EXPERTS}" in _refusal_of(_set("model/top_k", top_k))


@pytest.mark.parametrize("field", ["id", "position", "sequence", "start"])
def test_integers_too_large_for_int64_are_refused(field: str) -> None:
    """2**70 in a token field: refused in words, not an OverflowError."""
    assert "between 0 and" in _refusal_of(_set(f"tokens/2/{field}", 2**70))


def test_integer_with_thousands_of_digits_is_refused() -> None:
    """JSON that Python's int parser itself rejects (over 4300 digits) is 'not valid JSON', not a ValueError."""
    payload = json.dumps(_valid()).replace('"id": 3,', '"id": ' + "9" * 5000 + ",", 1).encode()
    assert "not valid JSON" in _refusal(payload)


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        ("texts", [["a list"]], "texts must be a non-empty list of strings"),
        ("texts", "one string", "texts must be a list"),
        ("model/moe_layers", [[0], [1]], "model.moe_layers must be a whole number, got a list"),
        ("model/moe_layers", "01", "model.moe_layers must be a list, got text"),
        ("model/notes", [["note"]], "model.notes must be text, got a list"),
        ("model/notes", "a note", "model.notes must be a list, got text"),
        ("model/name", ["x"], "model.name must be text, got a list"),
        ("tokens/0/text", ["t0"], "token text must be a string"),
        ("layers/0/probs/0/0", [0.5], "must hold numbers, found a list"),
        ("truncated", [1], "truncated must be one true/false per text"),
    ],
)
def test_list_where_a_string_or_number_belongs_is_refused(path: str, value: Any, reason: str) -> None:
    """A list in place of a string or number (or a string in place of a list) is named in the reason."""
    assert reason in _refusal_of(_set(path, value))


def test_deeply_nested_json_is_refused() -> None:
    """100,000 nested arrays would raise RecursionError in the JSON parser."""
    assert "nested too deeply" in _refusal(b"[" * 100_000 + b"]" * 100_000)


def test_position_far_beyond_the_token_count_is_refused() -> None:
    """One position of 5e7 in an 8-token trace (the capacity view once sized arrays by it: 5.5 GB)."""
    message = _refusal_of(_set("tokens/4/position", 50_000_000))
    assert "token 4 has position 50000000, expected 4" in message


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        ("tokens/6/position", 0, "positions must count 0, 1, 2"),
        ("tokens/0/sequence", 2, "sequences must be 0 to 1"),
        ("tokens/7/end", 999, "start/end lie outside its text"),
        ("model/moe_layers", [1, 0], "increasing order"),
        ("model/moe_layers", [0, 5], "between 0 and 1"),
        ("layers/1/layer", 0, "layers[1] is layer 0"),
        ("format_version", True, "unsupported trace format version true/false"),
    ],
)
def test_inconsistent_fields_are_refused(path: str, value: Any, reason: str) -> None:
    """Positions that skip, sequences beyond the texts, offsets past the text, layers out of order."""
    assert reason in _refusal_of(_set(path, value))


def test_file_over_the_size_limit_is_refused_before_parsing() -> None:
    """Over MAX_TRACE_MB: the size is the reason (a JSON parse of these bytes would call them invalid instead)."""
    message = _refusal(b" " * (MAX_TRACE_BYTES + 1))
    assert f"up to {MAX_TRACE_MB} MB" in message


def test_cli_reader_gives_the_same_reason(tmp_path: Path) -> None:
    """load_trace (the CLI's reader) and load_trace_bytes (the app's) refuse a file with the same line."""
    data = _valid()
    data["model"]["num_experts"] = 0
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TraceFormatError) as from_path:
        load_trace(path)
    assert str(from_path.value) == _refusal(path.read_bytes())


def _parquet(edit: Callable[[pa.Table], pa.Table], tokens: int = 5) -> bytes:
    """A valid Parquet trace (2 layers) with its table changed by `edit`, metadata kept."""
    routing = random_trace(tokens, num_experts=NUM_EXPERTS, top_k=TOP_K, num_layers=2, seed=2)
    table = pq.read_table(io.BytesIO(to_parquet_bytes(routing)))
    changed = edit(table).replace_schema_metadata(table.schema.metadata)
    sink = io.BytesIO()
    pq.write_table(changed, sink)
    return sink.getvalue()


def _replace(name: str, values: pa.Array) -> Callable[[pa.Table], pa.Table]:
    return lambda table: table.set_column(table.schema.get_field_index(name), name, values)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda t: t.drop_columns(["experts"]), "columns do not match: experts"),
        (_replace("probs", pa.array(["x"] * 10)), "columns do not match: probs"),
        (lambda t: t.rename_columns([c if c != "experts" else "expert" for c in t.column_names]), "experts"),
        (_replace("text", pa.array(range(10))), "columns do not match: text"),
        (_replace("experts", pa.array([[0.5, 1.5]] * 10)), "columns do not match: experts"),
        (_replace("id", pa.array([2**63 + 5] * 10, pa.uint64())), "column id holds a number too large"),
        (_replace("position", pa.array([0, 1, 2, 3, 50_000_000] * 2)), "positions must count 0, 1, 2"),
        (_replace("experts", pa.array([[0, 1]] * 9 + [[0, 1, 2]])), "every experts list must hold 2 values"),
        (_replace("token", pa.array([0, 1, 2, 2, 3] * 2)), "two rows for one layer and token"),
        (_replace("token", pa.array([0, 1, 2, 3, 5] * 2)), "token column must run from 0 to 4"),
        (_replace("layer", pa.array([0] * 5 + [7] * 5)), "row for layer 7, not an MoE layer"),
        (lambda t: t.slice(0, 9), "9 rows, not one per MoE layer"),
    ],
)
def test_parquet_whose_columns_do_not_match_is_refused(edit: Callable[[pa.Table], pa.Table], reason: str) -> None:
    """Missing, renamed or mistyped columns, out-of-range values and a broken row layout: one plain line each."""
    assert reason in _refusal(_parquet(edit), "t.parquet")


def test_parquet_token_text_bomb_is_refused() -> None:
    """One long string repeated by a dictionary would decode to more text than the size limit allows."""
    long_text = pa.DictionaryArray.from_arrays(pa.array([0] * 120, pa.int32()), pa.array(["x" * 2**20]))
    message = _refusal(_parquet(_replace("text", long_text), tokens=60), "t.parquet")
    assert f"token texts are longer than {MAX_TRACE_MB} MB" in message


def test_parquet_layout_of_a_valid_file_round_trips_token_fields() -> None:
    """The checks pass a valid Parquet trace unchanged (positions and ids as written)."""
    routing = load_trace_bytes(_parquet(lambda t: t), "t.parquet")
    np.testing.assert_array_equal(routing.tokens.position, np.arange(5))
