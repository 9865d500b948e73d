"""Saving and loading a RoutingTrace as JSON (the CLI contract) or Parquet (one row per layer × token).

Both round-trip exactly what the app needs, so a trace recorded on a GPU server can be viewed anywhere.
Loading validates everything and raises TraceFormatError with a plain message, never a traceback.

Compact traces: the optional arrays (logits, probs, weights) are `null` in JSON and absent columns in Parquet.
Parquet rows are placed by their `layer` and `token` columns (any row order reads the same), and a reader may
select only the arrays it needs (`arrays=`), which reads only those columns.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from moe_core.traces.checks import (
    ARRAYS,
    FORMAT_VERSION,
    INT64_MAX,
    MAX_TRACE_BYTES,
    MAX_TRACE_MB,
    MAX_TRACE_VALUES,
    TraceFormatError,
    build,
    check_budget,
    header_generated,
    header_parts,
    header_ranked,
    nested_array,
    whole,
    whole_column,
    widths,
)
from moe_core.traces.types import ModelInfo, RoutingTrace, Tokens

__all__ = ["MAX_TRACE_BYTES", "MAX_TRACE_MB", "TraceFormatError", "load_trace", "load_trace_bytes", "save_trace"]

OPTIONAL = tuple(name for name in ARRAYS if name != "experts")

_METADATA_KEY = b"moe_routing_trace"
MAX_PARQUET_DECODED_BYTES = 512 * 2**20  # a Parquet trace's pages, decompressed: refused above this before reading
PARQUET_COLUMNS = {  # column -> what its values must be; the optional arrays may be absent (a compact trace)
    **dict.fromkeys(("layer", "token", "id", "sequence", "position", "start", "end"), "int"),
    "text": "string",
    **dict.fromkeys(("logits", "probs", "weights"), "number list"),
    "experts": "int list",
}
TOKEN_COLUMNS = ("id", "sequence", "position", "start", "end")
PHASES = {False: "prompt", True: "generated"}  # a token's "phase" in the JSON of a trace with generated tokens


def model_json(model: ModelInfo) -> dict[str, Any]:
    """The "model" object of every JSON the CLI prints (trace, counterfactual)."""
    return {**asdict(model), "moe_layers": list(model.moe_layers), "notes": list(model.notes)}


def _header(routing: RoutingTrace) -> dict[str, Any]:
    model = routing.model
    return {
        "format_version": FORMAT_VERSION,
        "model": model_json(model),
        "texts": list(routing.texts),
        "truncated": list(routing.truncated),
        "slots_ranked": routing.slots_ranked,
        **({"generated_from": list(routing.generated_from)} if routing.generated_from else {}),
    }


def to_json_dict(routing: RoutingTrace) -> dict[str, Any]:
    """The CLI's JSON: model, tokens, and per layer logits / probs / experts / weights as nested lists."""
    tokens = routing.tokens
    generated = routing.generated()
    return {
        **_header(routing),
        "tokens": [
            {
                "id": int(tokens.ids[i]),
                "text": tokens.text[i],
                "sequence": int(tokens.sequence[i]),
                "position": int(tokens.position[i]),
                "start": int(tokens.offsets[i, 0]),
                "end": int(tokens.offsets[i, 1]),
                **({"phase": PHASES[bool(generated[i])]} if routing.generated_from else {}),
            }
            for i in range(len(tokens))
        ],
        "layers": [
            {
                "layer": layer,
                **{name: _json_rows(getattr(routing, name), row) for name in ARRAYS},
            }
            for row, layer in enumerate(routing.model.moe_layers)
        ],
    }


def _json_rows(array: np.ndarray | None, row: int) -> list | None:
    """One layer of an array as nested lists (floats rounded to 6 places); None (JSON null) where absent."""
    if array is None:
        return None
    values = array[row]
    return (values if np.issubdtype(values.dtype, np.integer) else values.astype(np.float64).round(6)).tolist()


def _json_tokens(raw: Any) -> Tokens:
    """The tokens list: one object per token with whole-number id, sequence, position (start/end optional)."""
    if type(raw) is not list or any(type(t) is not dict for t in raw):
        raise TraceFormatError("tokens must be a list of objects")

    def field(name: str, default: int | None = None) -> list:
        if default is None:
            missing = next((i for i, token in enumerate(raw) if name not in token), None)
            if missing is not None:
                raise TraceFormatError(f"token {missing} lacks {name!r}")
        return [token.get(name, default) for token in raw]

    text = field("text")
    if any(type(t) is not str for t in text):
        raise TraceFormatError("every token text must be a string")
    return Tokens(
        ids=whole_column(field("id"), "token id", 0),
        text=tuple(text),
        offsets=np.stack(
            [whole_column(field("start", 0), "token start", 0), whole_column(field("end", 0), "token end", 0)], axis=1
        ),
        sequence=whole_column(field("sequence"), "token sequence", 0),
        position=whole_column(field("position"), "token position", 0),
    )


def _json_arrays(raw: Any, model: ModelInfo, num_tokens: int) -> dict[str, np.ndarray]:
    """The layers list: one object per MoE layer, in order, with [T, E] logits/probs and [T, k] experts/weights."""
    num_layers = len(model.moe_layers)
    if type(raw) is not list or len(raw) != num_layers or any(type(layer) is not dict for layer in raw):
        raise TraceFormatError(f"layers must be a list of one object per MoE layer ({num_layers})")
    for row, layer in enumerate(raw):
        if whole(layer.get("layer"), f"layers[{row}].layer", 0) != model.moe_layers[row]:
            raise TraceFormatError(f"layers[{row}] is layer {layer['layer']}, but model.moe_layers[{row}] is "
                                   f"{model.moe_layers[row]}")  # fmt: skip
        if layer.get("experts") is None:
            raise TraceFormatError(f"layers[{row}] lacks 'experts'")
    present = ["experts", *(name for name in OPTIONAL if raw[0].get(name) is not None)]
    mixed = [name for name in OPTIONAL if len({layer.get(name) is None for layer in raw}) > 1]
    if mixed:
        raise TraceFormatError(f"{mixed[0]!r} must be given for every layer or for none")
    check_budget(model, num_tokens, present)
    shapes = {name: (num_layers, num_tokens, widths(model)[name]) for name in present}
    return {
        name: nested_array([layer[name] for layer in raw], shape, f"layers' {name}", integer=name == "experts")
        for name, shape in shapes.items()
    }


def from_json_dict(data: Any) -> RoutingTrace:
    """Inverse of to_json_dict; every field is checked (moe_core.traces.checks) before anything is built."""
    model, texts, truncated = header_parts(data)
    tokens = _json_tokens(data.get("tokens"))
    arrays = _json_arrays(data.get("layers"), model, len(tokens))
    return build(model, texts, truncated, tokens, arrays, header_ranked(data), header_generated(data, len(texts)))


def to_parquet_bytes(routing: RoutingTrace, scores_dtype: type = np.float32) -> bytes:
    """One row per (layer, token); the model and texts ride in the schema metadata. Absent arrays get no column;
    `scores_dtype=np.float16` halves logits and probs (a compact trace for large E)."""
    num_layers, num_tokens = routing.experts.shape[:2]
    tokens = routing.tokens

    def per_token(values: np.ndarray) -> np.ndarray:
        return np.tile(values, num_layers)

    def list_column(array: np.ndarray) -> pa.Array:
        flat = array.reshape(num_layers * num_tokens, -1)
        return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])

    table = pa.table(
        {
            "layer": np.repeat(np.asarray(routing.model.moe_layers, dtype=np.int64), num_tokens),
            "token": per_token(np.arange(num_tokens)),
            "id": per_token(tokens.ids),
            "text": pa.array(list(tokens.text) * num_layers, pa.string()),
            "sequence": per_token(tokens.sequence),
            "position": per_token(tokens.position),
            "start": per_token(tokens.offsets[:, 0]),
            "end": per_token(tokens.offsets[:, 1]),
            **{
                name: list_column(array if name in ("experts", "weights") else array.astype(scores_dtype))
                for name in ARRAYS
                if (array := getattr(routing, name)) is not None
            },
        }
    )
    table = table.replace_schema_metadata({_METADATA_KEY: json.dumps(_header(routing)).encode()})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _parquet_file(data: bytes) -> tuple[pq.ParquetFile, Any]:
    """The file (not yet read) and its header; the token text stays dictionary-encoded until checked."""
    try:
        file = pq.ParquetFile(io.BytesIO(data), read_dictionary=["text"])
        return file, json.loads((file.schema_arrow.metadata or {})[_METADATA_KEY])
    except (pa.ArrowException, OSError, KeyError, TypeError, ValueError, RecursionError) as error:
        raise TraceFormatError(f"not a routing-trace Parquet file ({type(error).__name__})") from None


def _kind_of(kind: str, type_: pa.DataType) -> bool:
    if kind == "string":
        value = type_.value_type if pa.types.is_dictionary(type_) else type_
        return pa.types.is_string(value) or pa.types.is_large_string(value)
    if kind == "int":
        return pa.types.is_integer(type_)
    if not (pa.types.is_list(type_) or pa.types.is_large_list(type_) or pa.types.is_fixed_size_list(type_)):
        return False
    value = type_.value_type
    return pa.types.is_integer(value) or (kind == "number list" and pa.types.is_floating(value))


def _check_parquet_layout(file: pq.ParquetFile, model: ModelInfo, arrays: Sequence[str]) -> int:
    """Columns and their types, and sizes from the file's metadata (before reading): returns T."""
    schema, meta = file.schema_arrow, file.metadata

    def fits(name: str, kind: str) -> bool:
        if schema.get_field_index(name) < 0:
            return name in OPTIONAL
        return _kind_of(kind, schema.field(name).type)

    wrong = [name for name, kind in PARQUET_COLUMNS.items() if not fits(name, kind)]
    if wrong:
        raise TraceFormatError(f"the Parquet trace's columns do not match: {', '.join(wrong)} missing or mistyped")
    num_layers = len(model.moe_layers)
    if meta.num_rows == 0 or meta.num_rows % num_layers:
        raise TraceFormatError(f"the Parquet trace has {meta.num_rows} rows, not one per MoE layer and token")
    num_tokens = meta.num_rows // num_layers
    check_budget(model, num_tokens, arrays)
    read = [schema.get_field_index(name) for name in _columns(arrays)]
    chunks = [meta.row_group(g).column(c) for g in range(meta.num_row_groups) for c in read]
    if sum(chunk.total_uncompressed_size for chunk in chunks) > MAX_PARQUET_DECODED_BYTES:
        raise TraceFormatError(f"the Parquet trace unpacks to over {MAX_PARQUET_DECODED_BYTES // 2**20} MB")
    if max(chunk.num_values for chunk in chunks) > MAX_TRACE_VALUES:
        raise TraceFormatError(f"a column of the Parquet trace holds over {MAX_TRACE_VALUES:,} values")
    return num_tokens


def _int_values(column: pa.Array, what: str) -> np.ndarray:
    values = column.to_numpy(zero_copy_only=False)
    if values.dtype.kind == "u" and values.size and int(values.max()) > INT64_MAX:
        raise TraceFormatError(f"{what} holds a number too large to store")
    return values.astype(np.int64)


def _texts(column: pa.Array) -> tuple[str, ...]:
    """Token texts, their decoded length bounded first (a dictionary can repeat one long string per row)."""
    if pa.types.is_dictionary(column.type):
        lengths = pc.binary_length(column.dictionary).to_numpy(zero_copy_only=False)[column.indices.to_numpy()]
    else:
        lengths = pc.binary_length(column).to_numpy(zero_copy_only=False)
    if int(lengths.sum()) > MAX_TRACE_BYTES:
        raise TraceFormatError(f"the Parquet trace's token texts are longer than {MAX_TRACE_MB} MB")
    return tuple(column.to_pylist())


def _list_values(column: pa.Array, shape: tuple[int, int], what: str) -> np.ndarray:
    """[rows, width] from a list column, every list of exactly `width` values."""
    width = shape[1]
    if not pa.types.is_fixed_size_list(column.type):
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        if (lengths != width).any():
            raise TraceFormatError(f"every {what} list must hold {width} values")
    values = column.flatten()
    if values.null_count or len(values) != np.prod(shape):
        raise TraceFormatError(f"the Parquet trace's {what} must be {width} values per row, none missing")
    return values.to_numpy(zero_copy_only=False).reshape(shape)


def _columns(arrays: Sequence[str]) -> list[str]:
    """The Parquet columns read for `arrays`: the token columns, then the arrays asked for."""
    return [name for name in PARQUET_COLUMNS if PARQUET_COLUMNS[name] in ("int", "string") or name in arrays]


def _present_arrays(file: pq.ParquetFile, wanted: Sequence[str] | None) -> list[str]:
    """The arrays to read: experts always, and the optional ones the file has and the caller wants."""
    names = set(file.schema_arrow.names)
    return ["experts", *(name for name in OPTIONAL if name in names and (wanted is None or name in wanted))]


def _row_places(ints: dict[str, np.ndarray], model: ModelInfo, num_tokens: int) -> np.ndarray:
    """Each row's place in layer-major order, from its `layer` and `token` columns (not from row order); every
    (layer, token) must occur exactly once."""
    layer_row = np.searchsorted(np.asarray(model.moe_layers), ints["layer"])
    known = (layer_row < len(model.moe_layers)) & (
        np.asarray(model.moe_layers)[np.minimum(layer_row, len(model.moe_layers) - 1)] == ints["layer"]
    )
    if not known.all():
        raise TraceFormatError(f"the Parquet trace has a row for layer {ints['layer'][~known][0]}, not an MoE layer")
    if (ints["token"] < 0).any() or (ints["token"] >= num_tokens).any():
        raise TraceFormatError(f"the Parquet trace's token column must run from 0 to {num_tokens - 1}")
    places = layer_row * num_tokens + ints["token"]
    if np.bincount(places, minlength=len(places)).max() > 1:
        raise TraceFormatError("the Parquet trace has two rows for one layer and token")
    return places


def from_parquet_bytes(data: bytes, arrays: Sequence[str] | None = None) -> RoutingTrace:
    """Inverse of to_parquet_bytes: header and layout checked from the metadata before the data is read.

    `arrays`: the optional arrays to read (None: all the file has); the others are not read at all."""
    file, header = _parquet_file(data)
    model, texts, truncated = header_parts(header)
    present = _present_arrays(file, arrays)
    num_tokens = _check_parquet_layout(file, model, present)
    num_layers = len(model.moe_layers)
    try:
        table = file.read(columns=_columns(present))
        columns = {name: table.column(name).combine_chunks() for name in table.column_names}
    except (pa.ArrowException, OSError) as error:
        raise TraceFormatError(f"the Parquet trace cannot be read ({type(error).__name__})") from None
    if any(column.null_count for column in columns.values()):
        raise TraceFormatError("the Parquet trace has missing values")
    ints = {
        name: _int_values(columns[name], f"column {name}") for name, kind in PARQUET_COLUMNS.items() if kind == "int"
    }
    order = np.argsort(_row_places(ints, model, num_tokens))  # row of each place
    per_place = {name: values[order].reshape(num_layers, num_tokens) for name, values in ints.items()}
    if any((per_place[name] != per_place[name][0]).any() for name in TOKEN_COLUMNS):
        raise TraceFormatError("the Parquet trace's token columns differ between layers")
    first_layer = order[:num_tokens]
    tokens = Tokens(
        ids=per_place["id"][0],
        text=_texts(columns["text"].take(pa.array(first_layer))),
        offsets=np.stack([per_place["start"][0], per_place["end"][0]], axis=1),
        sequence=per_place["sequence"][0],
        position=per_place["position"][0],
    )
    routing = {
        name: _list_values(columns[name], (num_layers * num_tokens, widths(model)[name]), name)[order]
        .reshape(num_layers, num_tokens, -1)
        .astype(np.int64 if name == "experts" else np.float32)
        for name in present
    }
    return build(model, texts, truncated, tokens, routing, header_ranked(header), header_generated(header, len(texts)))


def to_json_text(routing: RoutingTrace) -> str:
    return json.dumps(to_json_dict(routing))


def save_trace(routing: RoutingTrace, path: Path, scores_dtype: type = np.float32) -> None:
    """Write by extension: .json or .parquet (`scores_dtype` applies to Parquet's logits and probs)."""
    if path.suffix == ".json":
        path.write_text(to_json_text(routing), encoding="utf-8")
    elif path.suffix == ".parquet":
        path.write_bytes(to_parquet_bytes(routing, scores_dtype))
    else:
        raise ValueError(f"cannot save a trace as {path.suffix!r}: use .json or .parquet")


def check_size(num_bytes: int) -> None:
    """The documented size limit, checked before a file is parsed."""
    if num_bytes > MAX_TRACE_BYTES:
        raise TraceFormatError(
            f"the file is {num_bytes / 10**6:.1f} MB; traces up to {MAX_TRACE_MB} MB can be read (trace fewer tokens)"
        )


def load_trace_bytes(data: bytes, filename: str, arrays: Sequence[str] | None = None) -> RoutingTrace:
    """Read an uploaded or saved trace, choosing the format by the file name; TraceFormatError says why not.

    `arrays`: the optional arrays to keep (None: all the file has); Parquet then reads only those columns."""
    if not filename.endswith((".json", ".parquet")):
        raise TraceFormatError(f"{filename[:80]}: a trace file ends in .json or .parquet")
    check_size(len(data))
    if filename.endswith(".parquet"):
        return from_parquet_bytes(data, arrays)
    try:
        parsed = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise TraceFormatError("not valid JSON: the file is not UTF-8 text") from None
    except RecursionError:
        raise TraceFormatError("not valid JSON for a trace: nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, and integers of more than 4300 digits
        raise TraceFormatError(f"not valid JSON ({str(error).splitlines()[0][:120]})") from None
    routing = from_json_dict(parsed)
    if arrays is None:
        return routing
    return replace(routing, **{name: None for name in OPTIONAL if name not in arrays})


def load_trace(path: str | Path, arrays: Sequence[str] | None = None) -> RoutingTrace:
    """Read a trace file (the CLI's way in): the size limit is checked before the file is read."""
    path = Path(path)
    try:
        check_size(path.stat().st_size)
        return load_trace_bytes(path.read_bytes(), path.name, arrays)
    except OSError as error:
        raise TraceFormatError(f"cannot read {path.name}: {error.strerror}") from None
