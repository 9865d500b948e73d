"""Checks on every field of a trace read from a file: types, ranges and shapes.

A trace file comes from anywhere (an upload, another machine), so nothing in it is trusted: a bad field is
refused here with one plain line, the same for the CLI and the app, instead of a traceback or an oversized
allocation later in a view (one position of 5e7 once made the capacity view allocate 5.5 GB).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain, pairwise
from typing import Any

import numpy as np

from moe_core.traces.types import DROPPED, ModelInfo, RoutingTrace, Tokens, rank_slots

FORMAT_VERSION = 1
MAX_TRACE_MB = 50  # documented limit: a trace file over 50 MB is refused before it is parsed
MAX_TRACE_BYTES = MAX_TRACE_MB * 10**6  # decimal MB, the unit Streamlit's upload box counts in: one limit everywhere
MAX_TRACE_VALUES = 25_000_000  # routing numbers L·T·(2E + 2k): about what 50 MB of JSON can hold
MAX_EXPERTS = 4096  # routed experts E (the largest released models have a few hundred)
MAX_LAYERS = 4096
MAX_TOKEN_ID = 2**31 - 1  # above every vocabulary (a few hundred thousand ids); larger is not a token id
MAX_LABEL_CHARS = 500  # model name, architecture, scoring, device, dtype, each note
MAX_NOTES = 64
INT64_MAX = 2**63 - 1
MODEL_LABELS = ("name", "architecture", "scoring")  # required text fields of the model description


class TraceFormatError(ValueError):
    """The file is not a routing trace this version can read; the message says why in one line."""


LIMITS = {  # every reader's dimensions, checked here before any array is sized by them
    "experts": (1, MAX_EXPERTS),
    "k": (1, MAX_EXPERTS),
    "layers": (1, MAX_LAYERS),
    "tokens": (0, MAX_TRACE_VALUES),
    "token id": (0, MAX_TOKEN_ID),
}


def check_limits(what: str, **sizes: int) -> None:
    """Refuse, in one line naming `what`, any of experts / k / layers / tokens / token_id outside LIMITS: a forged
    count (one map value of 5e7 once sized an array of 5e7 experts per token and took the server down)."""
    for name, value in sizes.items():
        key = name.replace("_", " ")
        low, high = LIMITS[key]
        if not low <= value <= high:
            shown = f"{value:,}" if abs(value) < 10**20 else f"a {len(str(abs(value)))}-digit number"
            raise TraceFormatError(f"{what}: {key} = {shown} is outside {low:,} to {high:,} (no model has that)")


def _kind(value: Any) -> str:
    """A JSON value's type in words, for messages (never the value itself, which may be huge)."""
    names = {bool: "true/false", int: "a whole number", float: "a decimal number", str: "text", list: "a list",
             dict: "an object", type(None): "null"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


def whole(value: Any, what: str, low: int, high: int = INT64_MAX) -> int:
    """An int (not a bool, not 8.0) in [low, high]."""
    if type(value) is not int:
        raise TraceFormatError(f"{what} must be a whole number, got {_kind(value)}")
    if not low <= value <= high:
        shown = value if abs(value) < 10**20 else f"a {len(str(abs(value)))}-digit number"
        raise TraceFormatError(f"{what} must be between {low} and {high}, got {shown}")
    return value


def label(value: Any, what: str) -> str:
    """A short one-line string."""
    if type(value) is not str:
        raise TraceFormatError(f"{what} must be text, got {_kind(value)}")
    if len(value) > MAX_LABEL_CHARS:
        raise TraceFormatError(f"{what} is {len(value)} characters long; at most {MAX_LABEL_CHARS} are allowed")
    return value


def _list(value: Any, what: str, max_items: int = INT64_MAX) -> list | tuple:
    """A list (a tuple too: to_json_dict's own output before it becomes JSON)."""
    if type(value) not in {list, tuple}:
        raise TraceFormatError(f"{what} must be a list, got {_kind(value)}")
    if len(value) > max_items:
        raise TraceFormatError(f"{what} has {len(value)} entries; at most {max_items} are allowed")
    return value


def model_info(raw: Any) -> ModelInfo:
    """The model description, every field checked: E >= 1, 1 <= k <= E, MoE layers increasing within the model."""
    if type(raw) is not dict:
        raise TraceFormatError("the trace has no 'model' object")
    required = (*MODEL_LABELS, "num_experts", "top_k", "num_layers", "moe_layers")
    missing = [name for name in required if name not in raw]
    if missing:
        raise TraceFormatError(f"the trace's model description lacks {', '.join(repr(m) for m in missing)}")
    num_experts = whole(raw["num_experts"], "model.num_experts", 1, MAX_EXPERTS)
    num_layers = whole(raw["num_layers"], "model.num_layers", 1, MAX_LAYERS)
    raw_layers = _list(raw["moe_layers"], "model.moe_layers")
    layers = [whole(v, "each of model.moe_layers", 0, num_layers - 1) for v in raw_layers]
    if not layers or any(b <= a for a, b in pairwise(layers)):
        raise TraceFormatError("model.moe_layers must list at least one layer, in increasing order without repeats")
    context = raw.get("context_length")
    return ModelInfo(
        **{name: label(raw[name], f"model.{name}") for name in MODEL_LABELS},
        num_experts=num_experts,
        top_k=whole(raw["top_k"], "model.top_k", 1, num_experts),
        num_layers=num_layers,
        moe_layers=tuple(layers),
        num_shared_experts=whole(raw.get("num_shared_experts", 0), "model.num_shared_experts", 0, MAX_EXPERTS),
        context_length=None if context is None else whole(context, "model.context_length", 1),
        device=label(raw.get("device", "cpu"), "model.device"),
        dtype=label(raw.get("dtype", "float32"), "model.dtype"),
        notes=tuple(label(n, "each of model.notes") for n in _list(raw.get("notes", []), "model.notes", MAX_NOTES)),
    )


def header_generated(header: dict, num_texts: int) -> tuple[int | None, ...]:
    """The header's "generated_from": per text, the position where generated tokens begin, or null."""
    raw = header.get("generated_from", [])
    values = _list(raw, "generated_from")
    if values and len(values) != num_texts:
        raise TraceFormatError(f"generated_from must give one position (or null) per text ({num_texts})")
    return tuple(None if v is None else whole(v, "each of generated_from", 0) for v in values)


def header_ranked(header: dict) -> bool:
    """The header's "slots_ranked" (true where absent: files from before it existed came from this tool)."""
    value = header.get("slots_ranked", True)
    if type(value) is not bool:
        raise TraceFormatError(f"slots_ranked must be true or false, got {_kind(value)}")
    return value


def header_parts(header: Any) -> tuple[ModelInfo, tuple[str, ...], tuple[bool, ...]]:
    """(model, texts, truncated) from the header every format shares."""
    if type(header) is not dict:
        raise TraceFormatError("a trace is a JSON object with 'model', 'texts', 'tokens' and 'layers'")
    version = header.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        shown = version if type(version) is int else _kind(version)
        raise TraceFormatError(f"unsupported trace format version {shown} (this reader knows {FORMAT_VERSION})")
    model = model_info(header.get("model"))
    texts = _list(header.get("texts"), "texts")
    if not texts or any(type(t) is not str for t in texts):
        raise TraceFormatError("texts must be a non-empty list of strings")
    truncated = _list(header.get("truncated", []), "truncated")
    if any(type(t) is not bool for t in truncated) or len(truncated) not in {0, len(texts)}:
        raise TraceFormatError(f"truncated must be one true/false per text ({len(texts)})")
    return model, tuple(texts), tuple(truncated)


def widths(model: ModelInfo) -> dict[str, int]:
    """The last dimension of each routing array: E for logits and probs, k for experts and weights."""
    return {"logits": model.num_experts, "probs": model.num_experts, "experts": model.top_k, "weights": model.top_k}


ARRAYS = ("logits", "probs", "experts", "weights")  # every routing array, in file order; only experts is required


def check_budget(model: ModelInfo, num_tokens: int, arrays: Sequence[str] = ARRAYS) -> None:
    """Refuse a trace whose arrays would be larger than any trace under the size limit (before allocating)."""
    values = len(model.moe_layers) * num_tokens * sum(widths(model)[name] for name in arrays)
    if values > MAX_TRACE_VALUES:
        raise TraceFormatError(
            f"the trace holds {values:,} routing numbers; at most {MAX_TRACE_VALUES:,} are allowed (shorter texts)"
        )


def nested_array(raw: Any, shape: Sequence[int], what: str, integer: bool) -> np.ndarray:
    """A JSON nested list of exactly `shape`, of whole numbers (or any numbers), as an array."""
    level = [raw]
    for size in shape:
        if any(type(item) is not list for item in level) or any(len(item) != size for item in level):
            raise TraceFormatError(f"{what} must be nested lists of shape {list(shape)}")
        level = list(chain.from_iterable(level))
    allowed = {int} if integer else {int, float}
    found = set(map(type, level))
    if not found <= allowed:
        wrong = next(v for v in level if type(v) not in allowed)
        raise TraceFormatError(f"{what} must hold {'whole ' if integer else ''}numbers, found {_kind(wrong)}")
    try:
        with np.errstate(over="ignore"):
            return np.array(level, dtype=np.int64 if integer else np.float32).reshape(tuple(shape))
    except OverflowError:
        raise TraceFormatError(f"{what} holds a number too large to store") from None


def whole_column(values: list, what: str, low: int, high: int = INT64_MAX) -> np.ndarray:
    """A JSON list of whole numbers in [low, high] as int64 (range checked before converting: no overflow)."""
    if not set(map(type, values)) <= {int}:
        wrong = next(v for v in values if type(v) is not int)
        raise TraceFormatError(f"every {what} must be a whole number, found {_kind(wrong)}")
    if values and (min(values) < low or max(values) > high):
        bad = next(v for v in values if not low <= v <= high)
        whole(bad, f"every {what}", low, high)
    return np.asarray(values, dtype=np.int64)


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def check_tokens(tokens: Tokens, texts: tuple[str, ...]) -> None:
    """Ids >= 0; sequences in order; positions 0, 1, … within each sequence; offsets inside their text."""
    count = len(tokens)
    if count == 0:
        raise TraceFormatError("the trace holds no tokens")
    if len(tokens.text) != count or tokens.offsets.shape != (count, 2):
        raise TraceFormatError("every token needs its text and its start/end")
    if (tokens.ids < 0).any():
        raise TraceFormatError(f"token {_first_bad(tokens.ids < 0)} has a negative id")
    sequence = tokens.sequence
    if (sequence < 0).any() or (sequence >= len(texts)).any() or (np.diff(sequence) < 0).any():
        raise TraceFormatError(f"token sequences must be 0 to {len(texts) - 1} (one per text), in order")
    expected = np.arange(count) - np.searchsorted(sequence, sequence, side="left")
    if not np.array_equal(tokens.position, expected):
        bad = _first_bad(tokens.position != expected)
        raise TraceFormatError(
            f"token positions must count 0, 1, 2, … within each sequence; token {bad} has position "
            f"{tokens.position[bad]}, expected {expected[bad]}"
        )
    start, end = tokens.offsets[:, 0], tokens.offsets[:, 1]
    lengths = np.asarray([len(t) for t in texts], dtype=np.int64)[sequence]
    outside = (start < 0) | (end < start) | (end > lengths)
    if outside.any():
        raise TraceFormatError(f"token {_first_bad(outside)}'s start/end lie outside its text")


def check_vocabulary(tokens: Tokens, vocabulary_size: int, model: str) -> None:
    """Token ids inside the vocabulary of the model the trace names, when that model's tokenizer is known."""
    outside = tokens.ids >= vocabulary_size
    if outside.any():
        bad = _first_bad(outside)
        raise TraceFormatError(
            f"token {bad} has id {tokens.ids[bad]}, outside the vocabulary of {model[:80]} ({vocabulary_size} ids)"
        )


def check_routing(model: ModelInfo, arrays: dict[str, np.ndarray]) -> None:
    """Experts in [DROPPED, E); probs and weights finite; logits may be ±inf (a masked router) but not NaN.

    `arrays` holds experts and any of the optional arrays (a compact trace lacks the others)."""
    if "experts" not in arrays:
        raise TraceFormatError("the trace has no experts: every trace needs the experts each token went to")
    experts = arrays["experts"]
    outside = (experts < DROPPED) | (experts >= model.num_experts)
    if outside.any():
        bad = experts.reshape(-1)[_first_bad(outside.reshape(-1))]
        raise TraceFormatError(
            f"expert index {bad} is outside 0 to {model.num_experts - 1} (or {DROPPED} for a dropped slot)"
        )
    for name in ("probs", "weights"):
        if name in arrays and not np.isfinite(arrays[name]).all():
            raise TraceFormatError(f"the trace's {name} contain NaN or infinity")
    if "logits" in arrays and np.isnan(arrays["logits"]).any():
        raise TraceFormatError("the trace's logits contain NaN")


def build(
    model: ModelInfo,
    texts: tuple[str, ...],
    truncated: tuple[bool, ...],
    tokens: Tokens,
    arrays: dict[str, np.ndarray],
    slots_ranked: bool = True,
    generated_from: tuple[int | None, ...] = (),
) -> RoutingTrace:
    """The trace, once its tokens and routing have passed their checks (the header passed header_parts). Where
    gate weights exist, slots are put in descending weight: then slot 0 is the first choice, whatever the writer's
    order; without weights, `slots_ranked` says whether the writer's order is the rank order."""
    check_tokens(tokens, texts)
    check_routing(model, arrays)
    if arrays.get("weights") is not None and len(tokens):
        arrays = {**arrays}
        arrays["experts"], arrays["weights"] = rank_slots(arrays["experts"], arrays["weights"])
        slots_ranked = True
    try:
        values = {name: arrays.get(name) for name in ARRAYS}
        return RoutingTrace(model, texts, tokens, truncated=truncated, slots_ranked=slots_ranked,
                            generated_from=generated_from, **values)  # fmt: skip
    except ValueError as error:
        raise TraceFormatError(str(error)) from error
