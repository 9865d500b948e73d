"""vLLM's routed experts (`--enable-return-routed-experts`): expert ids per token, returned with the request.

The response holds `prompt_routed_experts` [prompt_len, L, k] and, per choice, `routed_experts` [gen_len, L, k]
(int16), as JSON nested lists, numpy arrays (the Python SDK, saved as .npy) or base64 .npy text. Positions served
from the prefix cache are -1 in every slot: their routing was never computed in this request. They are left out
of the trace and said so in its notes, never shown as routing and never as a capacity drop (DROPPED).
Token ids come from `prompt_token_ids` / `choices[i].token_ids` when the response has them (`return_token_ids`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from moe_core.engines.common import (
    NPY_MAGIC,
    Dump,
    ModelHints,
    Payload,
    Segment,
    assemble,
    b64_bytes,
    int_grid,
    integer_array,
    known_runs,
    looks_base64,
    npy_array,
    position_ranges,
    serving_rank_order,
)
from moe_core.traces.checks import MAX_TOKEN_ID, TraceFormatError
from moe_core.traces.types import RoutingTrace

ENGINE = "vLLM"
CACHED = -1  # vLLM's value in every slot of a prefix-cached position
NPY_BASE64 = b"k05VTVBZ"  # base64 of the .npy magic: a file of base64 .npy text starts with it
CHOICE_LISTS = ("choices", "outputs")  # the OpenAI response's and the SDK's (RequestOutput) name


def _array(value: Any, what: str) -> np.ndarray | None:
    """One routing array [n, L, k] from any of vLLM's encodings (None stays None: routing not returned)."""
    if value is None:
        return None
    if type(value) is str:
        data = b64_bytes(value, what)
        if not data.startswith(NPY_MAGIC):
            raise TraceFormatError(f"{what} is base64 but not of a .npy array")
        return integer_array(npy_array(data, what), what, 3)
    return int_grid(value, what)


def _ids(value: Any, what: str) -> np.ndarray | None:
    if value is None:
        return None
    if type(value) is not list or any(type(v) is not int or not 0 <= v <= MAX_TOKEN_ID for v in value):
        raise TraceFormatError(f"{what} must be a list of token ids (whole numbers from 0 to {MAX_TOKEN_ID:,})")
    return np.asarray(value, dtype=np.int64)


def _matched_ids(ids: np.ndarray | None, rows: int, what: str, notes: list[str]) -> np.ndarray | None:
    """Token ids for `rows` routed tokens. A completion's last token has no routing (it was never fed back), so
    one id more than rows is expected and trimmed; any other mismatch is refused."""
    if ids is None or len(ids) == rows:
        return ids
    if len(ids) == rows + 1:
        notes.append(f"{what}: the last generated token has no routing (never fed back to the model), left out")
        return ids[:rows]
    raise TraceFormatError(f"{what} has {len(ids)} token ids but {rows} rows of routing")


@dataclass(frozen=True)
class Part:
    """One completion's routing as read: rows [n, L, k], token ids or None, the request position of row 0."""

    label: str  # for messages and notes ("request 0, choice 1")
    rows: np.ndarray
    ids: np.ndarray | None = None
    start: int = 0
    generated_from: int | None = None  # the row of the first generated token (a choice's routed_experts)


def _choices(response: dict, label: str) -> list[tuple[int, dict, np.ndarray]]:
    """(index, choice, rows) of every choice that carries routed_experts."""
    choices = next((response[key] for key in CHOICE_LISTS if key in response), [])
    if type(choices) is not list or any(type(c) is not dict for c in choices):
        raise TraceFormatError(f"{label}'s choices must be a list of objects")
    routed = [(i, c, _array(c.get("routed_experts"), f"{label}'s choice {i} routed_experts")) for i, c in
              enumerate(choices)]  # fmt: skip
    return [(i, c, rows) for i, c, rows in routed if rows is not None]


def _prompt_tokens(response: dict) -> int:
    """usage.prompt_tokens: where the completions start when the prompt's routing is not in the file."""
    usage = response.get("usage")
    count = usage.get("prompt_tokens") if type(usage) is dict else None
    return count if type(count) is int and count >= 0 else 0


def _response_parts(response: dict, number: int, notes: list[str]) -> list[Part]:
    """One part per choice (the shared prompt's rows, then the choice's), or the prompt alone."""
    label = f"request {number}"
    prompt = _array(response.get("prompt_routed_experts"), f"{label}'s prompt_routed_experts")
    prompt_ids = _ids(response.get("prompt_token_ids"), f"{label}'s prompt_token_ids")
    if prompt is not None and prompt_ids is not None and len(prompt_ids) != len(prompt):
        raise TraceFormatError(f"{label} has {len(prompt_ids)} prompt_token_ids but {len(prompt)} rows of routing")
    routed = _choices(response, label)
    if prompt is None and not routed:
        raise TraceFormatError(f"{label} has no prompt_routed_experts or routed_experts (was the server started "
                               "with --enable-return-routed-experts?)")  # fmt: skip
    if not routed:
        return [Part(f"{label}'s prompt", prompt, prompt_ids)]
    if prompt is None:
        notes.append(f"{label}: the prompt's routing is not in the file; only the generated tokens are shown")
    if len(routed) > 1 and prompt is not None:
        notes.append(f"{label}: its prompt's routing (computed once) is repeated in each of its {len(routed)} choices")
    parts = []
    for i, choice, rows in routed:
        ids = _matched_ids(_ids(choice.get("token_ids"), "token_ids"), len(rows), f"{label}'s choice {i}", notes)
        if prompt is None:
            parts.append(Part(f"{label}, choice {i}", rows, ids, _prompt_tokens(response), 0))
            continue
        whole = None if prompt_ids is None or ids is None else np.concatenate([prompt_ids, ids])
        both = np.concatenate([prompt, rows]) if len(rows) else prompt
        parts.append(Part(f"{label}, choice {i}", both, whole, generated_from=len(prompt)))
    return parts


def _responses(value: Any, notes: list[str]) -> list[Part]:
    """Every part of a response, of a list of responses, or one bare [n, L, k] array."""
    if type(value) is dict:
        return _response_parts(value, 0, notes)
    if type(value) is list and value and all(type(v) is dict for v in value):
        return [part for number, response in enumerate(value) for part in _response_parts(response, number, notes)]
    return [Part("the array", int_grid(value, "the routed experts"))]


def _segments(parts: list[Part], notes: list[str]) -> list[Segment]:
    """Segments of recorded routing; prefix-cached rows (-1 in every slot) left out, and said where."""
    segments = []
    for part in parts:
        label, rows = part.label, part.rows
        cached = (rows == CACHED).all(axis=(1, 2)) if rows.size else np.zeros(len(rows), dtype=bool)
        partial = (rows == CACHED).any(axis=(1, 2)) & ~cached
        if partial.any():
            raise TraceFormatError(f"{label}: position {int(np.flatnonzero(partial)[0])} has -1 in some slots but "
                                   "not all (vLLM marks a prefix-cached position with -1 in every slot)")  # fmt: skip
        if cached.any():
            notes.append(
                f"{label}: positions {position_ranges(np.flatnonzero(cached).tolist())} were served from vLLM's "
                "prefix cache (-1: no routing recorded); left out, not counted as drops"
            )
        segments.extend(known_runs(rows, part.ids, cached, part.start, part.generated_from))
    return segments


def _parts(payload: Payload, notes: list[str]) -> list[Part]:
    if payload.data.startswith(NPY_MAGIC):
        return [Part("the array", integer_array(npy_array(payload.data, payload.name), "the .npy array", 3))]
    if payload.head.lstrip().startswith(NPY_BASE64):
        return [Part("the array", _array(payload.data.decode("ascii", "replace"), "the base64 .npy text"))]
    return _responses(payload.json, notes)


def read(payload: Payload, hints: ModelHints) -> RoutingTrace:
    """The compact trace of a vLLM response (or array) file."""
    notes: list[str] = []
    parts = _parts(payload, notes)
    segments = _segments(parts, notes)
    if not segments:
        raise TraceFormatError("every position of the vLLM dump came from the prefix cache: no routing to show")
    ranked, why = serving_rank_order(hints)
    return assemble(Dump(ENGINE, segments, notes=notes, slots_ranked=ranked, ranked_why=why), hints)


def _is_response(value: Any) -> bool:
    if type(value) is list and value and type(value[0]) is dict:
        value = value[0]
    if type(value) is not dict:
        return type(value) is list and bool(value) and type(value[0]) is list  # a bare nested list
    if "prompt_routed_experts" in value:
        return True
    choices = next((value[key] for key in CHOICE_LISTS if key in value), None)
    return type(choices) is list and any(type(c) is dict and "routed_experts" in c for c in choices)


def sniff(payload: Payload) -> bool:
    """A .npy array, base64 .npy text, or a JSON response with vLLM's routed-experts fields."""
    head = payload.head.lstrip()
    if head.startswith((NPY_MAGIC, NPY_BASE64)):
        return True
    return (not looks_base64(head)) and _is_response(payload.json_or_none())
