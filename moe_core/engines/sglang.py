"""SGLang's routing: the per-request `routed_experts` and the expert-distribution recorder's `per_token` dump.

Per request (`--enable-return-routed-experts`, `return_routed_experts: true`): `meta_info.routed_experts` (native
/generate) or `sgl_ext.routed_experts` (OpenAI-compatible), base64 of flattened int32, logical [tokens, L, k]
without its shape, so L and k come from --model's config.

Recorder (`--expert-distribution-recorder-mode per_token`): `torch.save` of {"records", "last_physical_to_logical_
map"}; each record one forward pass with `input_ids`, `positions`, `extend_seq_lens`, `topk_ids_of_layer` [all
layers, tokens, slots] of *physical* ids padded with -1 (dense layers and unused slots), mapped here to logical ids.
Loaded with torch.load(weights_only=True): a dump is data, never code.
"""

from __future__ import annotations

import io
from dataclasses import replace
from itertools import pairwise
from typing import Any

import numpy as np

from moe_core.engines.common import (
    ZIP_MAGIC,
    Dump,
    ModelHints,
    Payload,
    Segment,
    assemble,
    b64_bytes,
    integer_array,
    looks_base64,
    serving_rank_order,
)
from moe_core.engines.vllm import NPY_BASE64
from moe_core.traces.checks import MAX_TOKEN_ID, TraceFormatError, check_limits
from moe_core.traces.types import RoutingTrace

ENGINE = "SGLang"
PADDING = -1  # the recorder's value in slots and layers that chose no expert
ROUTED_HOLDERS = ("meta_info", "sgl_ext")  # native /generate and the OpenAI-compatible endpoints


# --- per request -------------------------------------------------------------------------------------------------


def _routed_strings(value: Any) -> list[tuple[dict, dict]]:
    """(response, holder) for every routed_experts string in a response or a list of responses."""
    responses = value if type(value) is list else [value]
    found = []
    for response in responses:
        if type(response) is not dict:
            continue
        candidates = [response, *(c for c in response.get("choices", []) if type(c) is dict)]
        for item in candidates:
            for key in ROUTED_HOLDERS:
                holder = item.get(key)
                if type(holder) is dict and "routed_experts" in holder:
                    found.append((response, holder))
    return found


def _flat_values(text: Any, what: str) -> np.ndarray:
    data = b64_bytes(text, what)
    if len(data) % 4:
        raise TraceFormatError(f"{what} is truncated: {len(data)} bytes is not a whole number of int32 values")
    return np.frombuffer(data, dtype="<i4").astype(np.int64)


def _plausible(grid: np.ndarray, hints: ModelHints) -> bool:
    """A reading of the buffer [tokens, hidden layers, width] as SGLang writes it: dense layers never written (0),
    the MoE layers' routed slots inside 0…E−1."""
    moe = list(hints.moe_layers or ())
    dense = [layer for layer in range(grid.shape[1]) if layer not in moe]
    routed = grid[:, moe, : hints.top_k]
    inside = routed.min(initial=0) >= 0 and (hints.num_experts is None or routed.max(initial=0) < hints.num_experts)
    return bool(inside and not grid[:, dense].any())


def _flat_rows(text: Any, hints: ModelHints, what: str, tokens: int | None = None) -> np.ndarray:
    """Base64 int32 in the capturer's layout [tokens, num_hidden_layers, k + fused shared experts] (dense layers
    stay 0, a valid expert id) to the MoE layers' routed slots [tokens, L, k]. The width is k, or k plus the shared
    experts SGLang may fuse; the reading whose dense layers are zero and routed ids valid is the one kept."""
    if hints.moe_layers is None or hints.top_k is None or hints.num_layers is None:
        raise TraceFormatError("SGLang's routed_experts are flat int32 without their shape: pass --model (its "
                               "config gives the hidden layers, the MoE layers and k)")  # fmt: skip
    values = _flat_values(text, what)
    layers, top_k = hints.num_layers, hints.top_k
    widths = dict.fromkeys((top_k, top_k + hints.num_shared_experts))
    fits = [w for w in widths if len(values) % (layers * w) == 0 and len(values) // (layers * w) > 0]
    fits = [w for w in fits if tokens is None or len(values) == tokens * layers * w]
    readings = {w: values.reshape(-1, layers, w) for w in fits}
    kept = [w for w, grid in readings.items() if _plausible(grid, hints)]
    slots = " or ".join(f"{w}" for w in widths)
    if not readings:
        counted = "" if tokens is None else f" for its {tokens} tokens"
        raise TraceFormatError(f"{what} holds {len(values)} values, not whole tokens of {layers} hidden layers × "
                               f"{slots} slots{counted} ({hints.name}'s layout in SGLang)")  # fmt: skip
    if not kept:
        raise TraceFormatError(f"{what} is not SGLang's layout for {hints.name}: its dense layers are not all 0 or "
                               f"an expert id lies outside 0 to {(hints.num_experts or 1) - 1}")  # fmt: skip
    if len(kept) > 1:
        shown = " or ".join(f"{len(readings[w])} tokens of {w} slots" for w in kept)
        raise TraceFormatError(f"{what} reads as {shown}: the response's input_ids and output_ids would say which "
                               "(were the shared experts fused?)")  # fmt: skip
    return readings[kept[0]][:, list(hints.moe_layers), :top_k]


def _request_ids(response: dict, start: int) -> np.ndarray | None:
    """The routed tokens' ids when the response carries input_ids and output_ids: routing covers positions
    [start, seqlen − 1), the last token never being fed back."""
    pieces = [response.get("input_ids"), response.get("output_ids")]
    if any(type(p) is not list or any(type(v) is not int or not 0 <= v <= MAX_TOKEN_ID for v in p) for p in pieces):
        return None
    ids = np.asarray(pieces[0] + pieces[1], dtype=np.int64)[start:-1]
    return ids if len(ids) else None


def _prompt_length(response: dict) -> int | None:
    """The request's prompt tokens: its input_ids, else meta_info's or usage's prompt_tokens (None: unknown)."""
    if type(response.get("input_ids")) is list:
        return len(response["input_ids"])
    for holder in (response.get("meta_info"), response.get("usage")):
        count = holder.get("prompt_tokens") if type(holder) is dict else None
        if type(count) is int and count >= 0:
            return count
    return None


def _generated_row(response: dict, start: int, rows: int) -> int | None:
    """The row where the generated tokens' routing begins (rows cover positions start…), None if none are."""
    prompt = _prompt_length(response)
    return None if prompt is None or prompt - start >= rows else max(0, prompt - start)


def _request_segments(value: Any, hints: ModelHints, notes: list[str]) -> list[Segment]:
    if type(value) is str:
        return [Segment(_flat_rows(value, hints, "the base64 routed_experts"))]
    segments = []
    for number, (response, holder) in enumerate(_routed_strings(value)):
        start = holder.get("routed_experts_start_len", 0)
        if type(start) is not int or start < 0:
            raise TraceFormatError(f"response {number}'s routed_experts_start_len must be a whole number >= 0")
        ids = _request_ids(response, start)
        what = f"response {number}'s routed_experts"
        rows = _flat_rows(holder["routed_experts"], hints, what, None if ids is None else len(ids))
        segments.append(Segment(rows, ids, start, _generated_row(response, start, len(rows))))
    if not segments:
        raise TraceFormatError("no routed_experts in the SGLang response (was return_routed_experts set?)")
    if any(s.ids is None for s in segments):
        notes.append("SGLang's response has no input_ids/output_ids beside the routing: tokens show by position")
    return segments


# --- the recorder's per_token dump --------------------------------------------------------------------------------


def _load_pt(data: bytes) -> Any:
    """torch.load with weights_only=True (tensors, lists, dicts, numbers only); torch is imported only here."""
    import torch

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # a foreign or damaged file fails in many ways; all mean "cannot read it"
        raise TraceFormatError(f"not a readable torch.save file ({type(error).__name__})") from None


def _numpy(value: Any, what: str, ndim: int) -> np.ndarray:
    """A tensor or list of whole numbers as an int64 array of `ndim` dimensions."""
    if hasattr(value, "numpy") and hasattr(value, "dtype"):
        value = value.detach().cpu().numpy()
    elif type(value) is list:
        try:
            value = np.asarray(value)
        except ValueError:
            raise TraceFormatError(f"{what} is ragged") from None
    return integer_array(value, what, ndim)


def _map(dump: Any) -> np.ndarray:
    if type(dump) is not dict or type(dump.get("records")) is not list:
        raise TraceFormatError("an SGLang per_token dump is a dict with 'records' and 'last_physical_to_logical_map'")
    if "last_physical_to_logical_map" not in dump:
        raise TraceFormatError("the SGLang dump lacks last_physical_to_logical_map (is it a per_token dump?)")
    mapping = _numpy(dump["last_physical_to_logical_map"], "last_physical_to_logical_map", 2)
    if mapping.size == 0 or mapping.min() < 0:
        raise TraceFormatError("last_physical_to_logical_map must map every physical expert to a logical one >= 0")
    check_limits("the SGLang dump's last_physical_to_logical_map", layers=len(mapping), experts=int(mapping.max()) + 1)
    return mapping


Record = tuple[np.ndarray, np.ndarray, np.ndarray, list[int], bool]


def _record(record: Any, number: int, mapping: np.ndarray) -> Record:
    """(physical ids [layers, n, slots] with PADDING, input ids [n], positions [n], tokens per request, decode):
    a pass without extend_seq_lens is a decode step, one token per request, each one the model wrote."""
    if type(record) is not dict:
        raise TraceFormatError(f"record {number} is not a dict")
    missing = [k for k in ("topk_ids_of_layer", "input_ids", "positions") if k not in record]
    if missing:
        raise TraceFormatError(f"record {number} lacks {', '.join(missing)} (is it a per_token dump?)")
    physical = _numpy(record["topk_ids_of_layer"], f"record {number}'s topk_ids_of_layer", 3)
    ids = _numpy(record["input_ids"], f"record {number}'s input_ids", 1)
    positions = _numpy(record["positions"], f"record {number}'s positions", 1)
    layers, count = physical.shape[:2]
    if layers != len(mapping) or len(ids) != count or len(positions) != count:
        raise TraceFormatError(f"record {number}: topk_ids_of_layer {list(physical.shape)}, {len(ids)} input_ids, "
                               f"{len(positions)} positions and a map of {len(mapping)} layers disagree")  # fmt: skip
    if physical.size and (physical.min() < PADDING or physical.max() >= mapping.shape[1]):
        raise TraceFormatError(f"record {number} has a physical expert id outside 0 to {mapping.shape[1] - 1}")
    if (ids < 0).any() or (positions < 0).any():
        raise TraceFormatError(f"record {number} has a negative token id or position")
    decode = record.get("extend_seq_lens") is None
    return physical, ids, positions, _lengths(record.get("extend_seq_lens"), count, number), decode


def _logical(physical: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    rows = np.arange(len(physical))[:, None, None]
    return np.where(physical >= 0, mapping[rows, np.maximum(physical, 0)], PADDING)


def _lengths(raw: Any, count: int, number: int) -> list[int]:
    """Tokens per request in the pass: extend_seq_lens for a prefill, else one token per request (decode)."""
    if raw is None:
        return [1] * count
    lengths = _numpy(raw, f"record {number}'s extend_seq_lens", 1).tolist()
    if any(n < 0 for n in lengths) or sum(lengths) != count:
        raise TraceFormatError(f"record {number}: extend_seq_lens add up to {sum(lengths)}, not its {count} tokens")
    return [n for n in lengths if n]


def _padded_shape(records: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """The MoE layers (rows with any expert) and k (slots in use) of passes padded with -1."""
    used = np.zeros(records[0].shape[0], dtype=bool)
    slots = 0
    for physical in records:
        chosen = physical != PADDING
        used |= chosen.any(axis=(1, 2))
        columns = np.flatnonzero(chosen.any(axis=(0, 1)))
        slots = max(slots, int(columns[-1]) + 1 if len(columns) else 0)
    return np.flatnonzero(used), slots


def _zero_filled_shape(records: list[np.ndarray], notes: list[str]) -> tuple[np.ndarray, int]:
    """The recorder's very first pass fills a buffer created with zeros: layers it never wrote (dense ones) and
    slots past k read 0, a valid physical id. A layer that is 0 in every slot of every token, and trailing slots
    that are 0 throughout, are taken as never written (one token never goes to one expert twice)."""
    layers = np.asarray([layer for layer in range(records[0].shape[0]) if any(r[layer].any() for r in records)])
    if not len(layers):
        return layers, 0
    columns = [c for c in range(records[0].shape[2]) if any(r[layers, :, c].any() for r in records)]
    slots = columns[-1] + 1 if columns else 1
    if len(layers) < records[0].shape[0] or slots < records[0].shape[2]:
        notes.append("the dump pads with 0, not -1 (the recorder's first pass, before any reset): layers and slots "
                     "that are 0 for every token are read as never written, not as routing to expert 0")  # fmt: skip
    return layers, slots


def _routed_shape(records: list[np.ndarray], hints: ModelHints, notes: list[str]) -> tuple[np.ndarray, int]:
    """The MoE layers and k: from the model's config when given, else from the passes padded with -1, else (only
    zero-padded first passes) from what was written; no chosen slot may then be padding."""
    total_layers, width = records[0].shape[0], records[0].shape[2]
    if hints.moe_layers is not None and hints.top_k is not None:
        if max(hints.moe_layers) >= total_layers or hints.top_k > width:
            needs = f"MoE layers up to {max(hints.moe_layers)}, k = {hints.top_k}"
            raise TraceFormatError(f"the SGLang dump has {total_layers} layers × {width} slots, too few for "
                                   f"{hints.name} ({needs})")  # fmt: skip
        layers, slots = np.asarray(hints.moe_layers), hints.top_k
    elif padded := [r for r in records if (r == PADDING).any()]:
        layers, slots = _padded_shape(padded)
    else:
        layers, slots = _zero_filled_shape(records, notes)
    if not len(layers):
        raise TraceFormatError("the SGLang dump records no expert at any layer")
    for number, physical in enumerate(records):
        if (physical[layers, :, :slots] == PADDING).any():
            raise TraceFormatError(f"record {number}: some tokens have no expert in an MoE layer (a partial record)")
    return layers, slots


def _recorder_segments(dump: Any, hints: ModelHints, notes: list[str]) -> tuple[list[Segment], np.ndarray, int]:
    mapping = _map(dump)
    parsed = [_record(record, number, mapping) for number, record in enumerate(dump["records"])]
    parsed = [p for p in parsed if p[0].shape[1]]
    if not parsed:
        raise TraceFormatError("the SGLang dump holds no records with tokens")
    layers, slots = _routed_shape([p[0] for p in parsed], hints, notes)
    segments: list[Segment] = []
    previous_single = False
    for physical, ids, positions, lengths, decode_pass in parsed:
        rows = _logical(physical, mapping)[layers, :, :slots].transpose(1, 0, 2)
        bounds = np.cumsum([0, *lengths])
        pieces = [slice(a, b) for a, b in pairwise(bounds)]
        for piece in pieces:
            if (np.diff(positions[piece]) != 1).any():
                raise TraceFormatError("a request's positions in the SGLang dump do not count up one by one")
        single = len(pieces) == 1
        last = segments[-1] if segments else None
        decode = 0 if decode_pass else None  # a decode pass feeds back tokens the model wrote
        if single and previous_single and last is not None and positions[0] == last.start + len(last.experts):
            written = last.generated_from if last.generated_from is not None or decode is None else len(last.experts)
            joined = Segment(np.concatenate([last.experts, rows]), np.concatenate([last.ids, ids]), last.start, written)
            segments[-1] = joined
        else:
            segments.extend(Segment(rows[p], ids[p], int(positions[p][0]), decode) for p in pieces)
        previous_single = single
    notes.append("SGLang's dump has no request ids: each forward pass gives one sequence per request, and a pass of "
                 "one request that continues the previous one's positions is joined to it")  # fmt: skip
    notes.append("physical experts mapped to logical ones by the dump's last_physical_to_logical_map (if the "
                 "experts were rebalanced while recording, earlier passes used another map)")  # fmt: skip
    return segments, layers, int(mapping.max()) + 1


def read(payload: Payload, hints: ModelHints) -> RoutingTrace:
    """The compact trace of an SGLang response, base64 text or per_token recorder dump."""
    notes: list[str] = []
    if payload.data.startswith(ZIP_MAGIC):
        segments, layers, count = _recorder_segments(_load_pt(payload.data), hints, notes)
        dump = Dump(ENGINE, segments, tuple(int(layer) for layer in layers), count,
                    "the dump's physical-to-logical map", notes)  # fmt: skip
    else:
        value = payload.data.decode("ascii", "replace") if looks_base64(payload.head) else payload.json
        dump = Dump(ENGINE, _request_segments(value, hints, notes), notes=notes)
    ranked, why = serving_rank_order(hints)
    return assemble(replace(dump, slots_ranked=ranked, ranked_why=why), hints)


def sniff(payload: Payload) -> bool:
    """A torch.save zip, base64 text that is not a .npy, or a JSON response with meta_info/sgl_ext routed_experts."""
    head = payload.head.lstrip()
    if head.startswith(ZIP_MAGIC):
        return True
    if looks_base64(head):
        return not head.startswith(NPY_BASE64)
    return bool(_routed_strings(payload.json_or_none()))
