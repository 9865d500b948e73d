"""Saving and loading a RoutingTrace as JSON (the CLI contract) or Parquet (one row per layer × token).

Both round-trip exactly what the app needs, so a trace recorded on a GPU server can be viewed anywhere.
Loading validates everything and raises TraceFormatError with a plain message, never a traceback.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from moe_core.trace import ModelInfo, RoutingTrace, Tokens

FORMAT_VERSION = 1
_METADATA_KEY = b"moe_routing_trace"


class TraceFormatError(ValueError):
    """The file is not a routing trace this version can read."""


def _header(routing: RoutingTrace) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "model": {**asdict(routing.model), "moe_layers": list(routing.model.moe_layers)},
        "texts": list(routing.texts),
        "truncated": list(routing.truncated),
    }


def to_json_dict(routing: RoutingTrace) -> dict[str, Any]:
    """The CLI's JSON: model, tokens, and per layer logits / probs / experts / weights as nested lists."""
    tokens = routing.tokens
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
            }
            for i in range(len(tokens))
        ],
        "layers": [
            {
                "layer": layer,
                "logits": routing.logits[row].round(6).tolist(),
                "probs": routing.probs[row].round(6).tolist(),
                "experts": routing.experts[row].tolist(),
                "weights": routing.weights[row].round(6).tolist(),
            }
            for row, layer in enumerate(routing.model.moe_layers)
        ],
    }


def _model_info(raw: Any) -> ModelInfo:
    if not isinstance(raw, dict):
        raise TraceFormatError("the trace has no 'model' object")
    known = {f.name for f in fields(ModelInfo)}
    values = {key: value for key, value in raw.items() if key in known}
    values["moe_layers"] = tuple(values.get("moe_layers", ()))
    values["notes"] = tuple(values.get("notes", ()))
    try:
        return ModelInfo(**values)
    except TypeError as error:
        raise TraceFormatError(f"the trace's model description is incomplete: {error}") from error


def _build(header: dict[str, Any], tokens: Tokens, arrays: dict[str, np.ndarray]) -> RoutingTrace:
    if header.get("format_version") != FORMAT_VERSION:
        raise TraceFormatError(f"unsupported trace format version {header.get('format_version')!r}")
    model = _model_info(header.get("model"))
    texts = tuple(str(t) for t in header.get("texts", ()))
    if len(tokens) == 0 or not texts:
        raise TraceFormatError("the trace holds no tokens")
    if not np.isfinite(arrays["weights"]).all():
        raise TraceFormatError("the trace's weights contain NaN or infinity")
    try:
        return RoutingTrace(model, texts, tokens, truncated=tuple(header.get("truncated", ())), **arrays)
    except ValueError as error:
        raise TraceFormatError(str(error)) from error


def from_json_dict(data: Any) -> RoutingTrace:
    """Inverse of to_json_dict, validating shapes and types."""
    if not isinstance(data, dict):
        raise TraceFormatError("a trace is a JSON object with 'model', 'tokens' and 'layers'")
    try:
        raw_tokens = data["tokens"]
        tokens = Tokens(
            ids=np.asarray([t["id"] for t in raw_tokens], dtype=np.int64),
            text=tuple(str(t["text"]) for t in raw_tokens),
            offsets=np.asarray([[t.get("start", 0), t.get("end", 0)] for t in raw_tokens], dtype=np.int64).reshape(
                -1, 2
            ),
            sequence=np.asarray([t["sequence"] for t in raw_tokens], dtype=np.int64),
            position=np.asarray([t["position"] for t in raw_tokens], dtype=np.int64),
        )
        layers = data["layers"]
        arrays = {
            "logits": np.asarray([layer["logits"] for layer in layers], dtype=np.float32),
            "probs": np.asarray([layer["probs"] for layer in layers], dtype=np.float32),
            "experts": np.asarray([layer["experts"] for layer in layers], dtype=np.int64),
            "weights": np.asarray([layer["weights"] for layer in layers], dtype=np.float32),
        }
    except (KeyError, TypeError, ValueError) as error:
        raise TraceFormatError(f"the trace is malformed ({type(error).__name__}: {error})") from error
    return _build(data, tokens, arrays)


def to_parquet_bytes(routing: RoutingTrace) -> bytes:
    """One row per (layer, token); the model and texts ride in the schema metadata."""
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
            "logits": list_column(routing.logits),
            "probs": list_column(routing.probs),
            "experts": list_column(routing.experts),
            "weights": list_column(routing.weights),
        }
    )
    table = table.replace_schema_metadata({_METADATA_KEY: json.dumps(_header(routing)).encode()})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def from_parquet_bytes(data: bytes) -> RoutingTrace:
    try:
        table = pq.read_table(io.BytesIO(data))
        header = json.loads(table.schema.metadata[_METADATA_KEY])
    except (pa.ArrowException, OSError, KeyError, TypeError, json.JSONDecodeError) as error:
        raise TraceFormatError(f"not a routing-trace Parquet file ({type(error).__name__})") from error
    try:
        layers = np.asarray(header["model"]["moe_layers"])
        num_layers = len(layers)
        columns = {name: table.column(name).combine_chunks() for name in table.column_names}
        num_tokens = len(table) // max(num_layers, 1)
        first = slice(0, num_tokens)

        def column(name: str) -> np.ndarray:
            return columns[name].to_numpy(zero_copy_only=False)[first]

        def stacked(name: str, dtype: type) -> np.ndarray:
            values = columns[name].flatten().to_numpy(zero_copy_only=False)
            return values.reshape(num_layers, num_tokens, -1).astype(dtype)

        tokens = Tokens(
            ids=column("id").astype(np.int64),
            text=tuple(str(t) for t in column("text")),
            offsets=np.stack([column("start"), column("end")], axis=1).astype(np.int64),
            sequence=column("sequence").astype(np.int64),
            position=column("position").astype(np.int64),
        )
        arrays = {
            "logits": stacked("logits", np.float32),
            "probs": stacked("probs", np.float32),
            "experts": stacked("experts", np.int64),
            "weights": stacked("weights", np.float32),
        }
    except (KeyError, TypeError, ValueError, pa.ArrowException) as error:
        raise TraceFormatError(f"the Parquet trace is malformed ({type(error).__name__}: {error})") from error
    return _build(header, tokens, arrays)


def to_json_text(routing: RoutingTrace) -> str:
    return json.dumps(to_json_dict(routing))


def save_trace(routing: RoutingTrace, path: Path) -> None:
    """Write by extension: .json or .parquet."""
    if path.suffix == ".json":
        path.write_text(to_json_text(routing), encoding="utf-8")
    elif path.suffix == ".parquet":
        path.write_bytes(to_parquet_bytes(routing))
    else:
        raise ValueError(f"cannot save a trace as {path.suffix!r}: use .json or .parquet")


def load_trace_bytes(data: bytes, filename: str) -> RoutingTrace:
    """Read an uploaded or saved trace, choosing the format by the file name."""
    if filename.endswith(".parquet"):
        return from_parquet_bytes(data)
    if filename.endswith(".json"):
        try:
            return from_json_dict(json.loads(data.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise TraceFormatError(f"not valid JSON ({error})") from error
    raise TraceFormatError(f"{filename}: a trace file ends in .json or .parquet")
