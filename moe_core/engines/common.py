"""What every engine importer shares: the file as read, the dump as segments, and one way to a RoutingTrace.

An engine dump holds expert ids and little else (no router scores, usually no weights, often no token ids or
sequence boundaries). Each reader turns its layout into a `Dump` of `Segment`s; `assemble` alone decides how
tokens are labelled, where E and the layer numbers come from, and what the notes say, so the four formats tell a
reader the same things in the same words.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from moe_core.traces.checks import TraceFormatError, build, check_budget, check_limits
from moe_core.traces.types import ModelInfo, RoutingTrace, Tokens

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format
SNIFF_BYTES = 4096  # how much of a file the sniffers look at before parsing it


@dataclass(frozen=True)
class Payload:
    """One file as uploaded or read: its name and bytes, with the JSON parsed at most once (sniff and read share
    it)."""

    name: str
    data: bytes

    @property
    def head(self) -> bytes:
        return self.data[:SNIFF_BYTES]

    @cached_property
    def json(self) -> Any:
        """The file as JSON; TraceFormatError (one line) when it is not."""
        return parse_json(self.data, self.name)

    def json_or_none(self) -> Any:
        """The JSON, or None when the file is not JSON (for sniffers, which must never raise)."""
        if self.head.lstrip()[:1] not in {b"{", b"["}:
            return None
        try:
            return self.json
        except TraceFormatError:
            return None


def parse_json(data: bytes, what: str) -> Any:
    """JSON text to Python, every failure one plain line."""
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise TraceFormatError(f"{what[:80]}: not valid JSON (the file is not UTF-8 text)") from None
    except RecursionError:
        raise TraceFormatError(f"{what[:80]}: not valid JSON for a routing dump (nested too deeply)") from None
    except ValueError as error:  # JSONDecodeError, and integers of more than 4300 digits
        raise TraceFormatError(f"{what[:80]}: not valid JSON ({str(error).splitlines()[0][:120]})") from None


@dataclass(frozen=True)
class ModelHints:
    """What the user told us about the model behind a dump (--model / --tokenizer); every field may be unknown.

    `decode(ids)` is the tokenizer's decode; `moe_layers` are the model's layer indices of its MoE layers.
    """

    name: str | None = None
    architecture: str | None = None
    num_experts: int | None = None
    top_k: int | None = None
    num_layers: int | None = None
    moe_layers: tuple[int, ...] | None = None
    num_shared_experts: int = 0  # shared experts an engine may fuse into the routed slots (SGLang)
    grouped_top_k: bool = False  # group-limited/biased top-k (DeepSeek-style): engines leave its slots unsorted
    pipeline_stages: int = 1  # Megatron-Core: stages that each number their layers from 0
    scoring: str | None = None
    context_length: int | None = None
    decode: Callable[[list[int]], str] | None = None
    source: str = ""  # how E and the layers were learned, for the notes ("the config of org/model")


@dataclass(frozen=True)
class Segment:
    """One sequence of a dump. experts [n, L, k] logical ids >= 0; ids [n] token ids, None when the dump has none;
    start: the position of its first token in its request (> 0 when earlier positions came from a cache);
    generated_from: the row where the model's own tokens begin (decode routing), None when all are prompt."""

    experts: np.ndarray
    ids: np.ndarray | None = None
    start: int = 0
    generated_from: int | None = None


@dataclass(frozen=True)
class Dump:
    """An engine's routing, read but not yet a trace. `layers`: the model's layer index of each of the L columns
    when the dump says (None: from the model, else 0…L−1); `num_experts`: E when the dump itself says."""

    engine: str  # "vLLM", "SGLang", "Megatron-Core": how the notes name it
    segments: list[Segment]
    layers: tuple[int, ...] | None = None
    num_experts: int | None = None
    num_experts_source: str = ""
    notes: list[str] = field(default_factory=list)
    slots_ranked: bool = True  # is each row's first slot the first choice? (False: a set, e.g. by expert id)
    ranked_why: str = ""  # why not, for the notes


def int_grid(raw: Any, what: str, depth: int = 3) -> np.ndarray:
    """A JSON nested list of whole numbers, `depth` levels deep and rectangular, as int64 (TraceFormatError if
    not). Checks the whole structure before converting, so a ragged or mixed list is refused in one line."""
    level, shape = [raw], []
    for _ in range(depth):
        if any(type(item) is not list for item in level):
            raise TraceFormatError(f"{what} must be a {depth}-level nested list of whole numbers")
        sizes = {len(item) for item in level}
        if len(sizes) > 1:
            raise TraceFormatError(f"{what} is ragged: its lists differ in length")
        shape.append(sizes.pop() if sizes else 0)
        level = [value for item in level for value in item]
    if any(type(value) is not int for value in level):
        wrong = next(value for value in level if type(value) is not int)
        raise TraceFormatError(f"{what} must hold whole numbers, found {type(wrong).__name__}")
    if level and (min(level) < -(2**31) or max(level) >= 2**31):
        raise TraceFormatError(f"{what} holds a number too large for an expert id")
    return np.asarray(level, dtype=np.int64).reshape(shape)


def integer_array(array: Any, what: str, ndim: int) -> np.ndarray:
    """A numpy (or torch, already converted) array of integers with `ndim` dimensions, as int64."""
    if not isinstance(array, np.ndarray):
        raise TraceFormatError(f"{what} must be an array, got {type(array).__name__}")
    if array.dtype.kind not in "iu":
        raise TraceFormatError(f"{what} must hold whole numbers, got {array.dtype}")
    if array.ndim != ndim:
        raise TraceFormatError(f"{what} must have {ndim} dimensions, got shape {list(array.shape)}")
    if array.size and (int(array.min()) < -(2**31) or int(array.max()) >= 2**31):
        raise TraceFormatError(f"{what} holds a number too large for an expert id or token id")  # not cast to -1
    return array.astype(np.int64)


def _npy_header(stream: io.BytesIO) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from a .npy header, read before any data (so a forged shape allocates nothing)."""
    version = np.lib.format.read_magic(stream)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"unsupported .npy version {version}")
    shape, _, dtype = readers[version](stream)
    return shape, dtype


def npy_array(data: bytes, what: str) -> np.ndarray:
    """A .npy file's array (never pickled objects); the header's size must match the bytes that follow it."""
    stream = io.BytesIO(data)
    try:
        shape, dtype = _npy_header(stream)
        if dtype.hasobject or int(np.prod(shape, dtype=np.float64)) * dtype.itemsize != len(data) - stream.tell():
            raise ValueError("its header does not match its data (truncated, or objects)")
        stream.seek(0)
        return np.load(stream, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise TraceFormatError(f"{what}: not a readable .npy array ({str(error).splitlines()[0][:100]})") from None


def b64_bytes(text: Any, what: str) -> bytes:
    """Strict base64 (whitespace allowed) to bytes; truncated or foreign text is refused in one line."""
    if type(text) is not str:
        raise TraceFormatError(f"{what} must be base64 text, got {type(text).__name__}")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise TraceFormatError(f"{what} is not valid base64 (truncated or not base64 at all)") from None


def looks_base64(head: bytes) -> bool:
    """Whether a file's start is base64 text (a sniffer's test: letters, digits, + / = and whitespace only)."""
    stripped = head.strip()
    allowed = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\r\n\t ")
    return bool(stripped) and set(stripped) <= allowed


def position_ranges(positions: Sequence[int]) -> str:
    """'0–15, 40–41' for a sorted list of positions (short notes, however many positions)."""
    runs: list[tuple[int, int]] = []
    for p in positions:
        if runs and p == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], p)
        else:
            runs.append((p, p))
    shown = [f"{a}–{b}" if b > a else str(a) for a, b in runs[:6]]
    return ", ".join(shown) + (f" and {len(runs) - 6} more runs" if len(runs) > 6 else "")


def _shape_of(dump: Dump) -> tuple[int, int]:
    """(L, k) shared by every segment."""
    shapes = {segment.experts.shape[1:] for segment in dump.segments if len(segment.experts)}
    if not shapes:
        raise TraceFormatError(f"the {dump.engine} dump holds no routed tokens")
    if len(shapes) > 1:
        raise TraceFormatError(f"the {dump.engine} dump's parts disagree on [MoE layers, k]: {sorted(shapes)}")
    num_layers, top_k = shapes.pop()
    check_limits(f"the {dump.engine} dump", layers=num_layers, k=top_k)
    return num_layers, top_k


def _layers(dump: Dump, hints: ModelHints, count: int) -> tuple[tuple[int, ...], str]:
    """The model's layer index of each of the dump's L columns, and where that came from."""
    if dump.layers is not None:
        if hints.moe_layers is not None and tuple(hints.moe_layers) != tuple(dump.layers):
            mismatch = f"the dump's layers {list(dump.layers)[:8]} are not {hints.name}'s MoE layers"
            why = "a partial dump, or pipeline stages numbering layers locally"
            return dump.layers, f"{mismatch} {list(hints.moe_layers)[:8]} ({why})"
        return dump.layers, ""
    if hints.moe_layers is not None:
        if len(hints.moe_layers) != count:
            raise TraceFormatError(
                f"the dump has {count} MoE layers but {hints.name} has {len(hints.moe_layers)}: is it the right model?"
            )
        return hints.moe_layers, ""
    return tuple(range(count)), f"layers numbered 0–{count - 1} in dump order (the model's own numbering is unknown)"


def _num_experts(dump: Dump, hints: ModelHints, highest: int) -> tuple[int, str]:
    """E: the model's config, else the dump's own count, else the highest id + 1 (said so in the notes), always
    inside the experts limit."""
    number, note = _experts_and_source(dump, hints, highest)
    check_limits(f"the {dump.engine} dump", experts=number)
    return number, note


def _experts_and_source(dump: Dump, hints: ModelHints, highest: int) -> tuple[int, str]:
    if hints.num_experts is not None:
        if highest >= hints.num_experts:
            raise TraceFormatError(
                f"expert id {highest} is outside 0 to {hints.num_experts - 1} ({hints.name} has {hints.num_experts})"
            )
        return hints.num_experts, f"E = {hints.num_experts} from {hints.source or hints.name}"
    if dump.num_experts is not None:
        if highest >= dump.num_experts:
            raise TraceFormatError(f"expert id {highest} is outside 0 to {dump.num_experts - 1}")
        return dump.num_experts, f"E = {dump.num_experts} from {dump.num_experts_source}"
    count = highest + 1
    return count, f"E = {count} is the highest expert id + 1 (pass --model to take E from its config)"


def _token_text(hints: ModelHints, ids: np.ndarray | None, start: int, count: int) -> list[str]:
    """Each token's display text: the tokenizer's, else the id ("#1234"), else its position ("?5") when the dump
    has no ids. Bytes of one character show it on the first of their tokens and "" on the rest."""
    if ids is None:
        return [f"?{start + i}" for i in range(count)]
    if hints.decode is None:
        return [f"#{int(token)}" for token in ids]
    return decoded_pieces(hints.decode, ids.tolist())


def decoded_pieces(decode: Callable[[list[int]], str], ids: list[int]) -> list[str]:
    """Each token's display text; the bytes of one character show it on the first of their tokens and "" on the
    rest (so joining the pieces gives back the text)."""
    texts: list[str] = []
    pending: list[int] = []
    for token in ids:
        pending.append(token)
        texts.append("")
        piece = decode(pending)
        if "\ufffd" in piece and len(pending) < 4:  # part of a multi-byte character: wait for the rest
            continue
        texts[-len(pending)] = piece
        pending = []
    if pending:
        texts[-len(pending)] = decode(pending)
    return texts


def _tokens(dump: Dump, hints: ModelHints) -> tuple[Tokens, tuple[str, ...]]:
    """The Tokens table and one text per segment (its token texts joined, so offsets are exact)."""
    ids, text, offsets, sequence, position, texts = [], [], [], [], [], []
    running = 0
    for number, segment in enumerate(dump.segments):
        count = len(segment.experts)
        pieces = _token_text(hints, segment.ids, segment.start, count)
        ends = np.cumsum([len(p) for p in pieces], dtype=np.int64)
        offsets.append(np.stack([ends - [len(p) for p in pieces], ends], axis=1) if count else np.zeros((0, 2)))
        ids.append(segment.ids if segment.ids is not None else np.arange(running, running + count))
        text.extend(pieces)
        texts.append("".join(pieces))
        sequence.append(np.full(count, number))
        position.append(np.arange(count))
        running += count
    tokens = Tokens(
        ids=np.concatenate(ids).astype(np.int64),
        text=tuple(text),
        offsets=np.concatenate(offsets).astype(np.int64).reshape(-1, 2),
        sequence=np.concatenate(sequence).astype(np.int64),
        position=np.concatenate(position).astype(np.int64),
    )
    return tokens, tuple(texts)


def _segment_notes(dump: Dump) -> list[str]:
    shifted = [(n, s.start) for n, s in enumerate(dump.segments) if s.start]
    if not shifted:
        return []
    shown = ", ".join(f"sequence {n} at {start}" for n, start in shifted[:4])
    more = f" (and {len(shifted) - 4} more)" if len(shifted) > 4 else ""
    return [f"some sequences start after position 0 of their request: {shown}{more}; positions here count from 0"]


def assemble(dump: Dump, hints: ModelHints) -> RoutingTrace:
    """The compact RoutingTrace of a dump (experts only: logits, probs and weights None), every field checked."""
    dump = replace(dump, segments=[segment for segment in dump.segments if len(segment.experts)])
    segments = dump.segments
    num_layers, top_k = _shape_of(dump)
    experts = np.concatenate([segment.experts for segment in segments]).transpose(1, 0, 2)  # [L, T, k]
    if (experts < 0).any():
        raise TraceFormatError(f"expert id {int(experts.min())} is negative (not a {dump.engine} marker known here)")
    num_experts, experts_note = _num_experts(dump, hints, int(experts.max()))
    if top_k > num_experts:
        raise TraceFormatError(f"the dump routes each token to {top_k} experts, but there are only {num_experts}")
    layers, layers_note = _layers(dump, hints, num_layers)
    if hints.num_layers is not None and max(layers) >= hints.num_layers:
        raise TraceFormatError(f"the dump names layer {max(layers)}, but {hints.name} has {hints.num_layers} layers")
    tokens, texts = _tokens(dump, hints)
    notes = [
        f"imported from a {dump.engine} routing dump: expert ids only (no router scores or gate weights)",
        experts_note,
        *([layers_note] if layers_note else []),
        *_segment_notes(dump),
        *dump.notes,
        *(
            [f"slots are not in rank order ({dump.ranked_why}): first-choice views count all top-k"]
            if not dump.slots_ranked
            else []
        ),
    ]
    if hints.decode is None:
        notes.append("no tokenizer given: tokens show as #id (or ?position where the dump has no ids)")
    model = ModelInfo(
        name=(hints.name or f"{dump.engine} dump")[:500],
        architecture=hints.architecture or "unknown",
        num_experts=num_experts,
        top_k=top_k,
        scoring=hints.scoring or "unknown",
        num_layers=hints.num_layers if hints.num_layers is not None else max(layers) + 1,
        moe_layers=layers,
        context_length=hints.context_length,
        device="unknown",
        dtype="unknown",
        notes=tuple(note[:500] for note in notes[:64]),
    )
    check_budget(model, len(tokens), ("experts",))
    generated = tuple(segment.generated_from for segment in segments)
    return build(model, texts, (False,) * len(texts), tokens, {"experts": experts}, dump.slots_ranked,
                 generated if any(start is not None for start in generated) else ())  # fmt: skip


def serving_rank_order(hints: ModelHints) -> tuple[bool, str]:
    """Whether a serving engine's (vLLM's, SGLang's) slots are in rank order: its plain top-k sorts them, its
    grouped/biased top-k (DeepSeek-style routers) does not; without the model the order is unknown."""
    if hints.architecture is None:
        return False, "the model is unknown, so whether its top-k sorts its slots is too: pass --model"
    if hints.grouped_top_k:
        return False, f"{hints.name} uses grouped top-k, which the engine leaves unsorted"
    return True, ""


def known_runs(
    rows: np.ndarray, ids: np.ndarray | None, unknown: np.ndarray, offset: int = 0, generated_from: int | None = None
) -> list[Segment]:
    """Split a request's rows [n, L, k] into segments of recorded routing, leaving out the `unknown` [n] rows (an
    engine's "not recorded here" marker, e.g. vLLM's prefix-cached -1): a gap is never shown as routing, nor as a
    drop. Each segment keeps the request position it starts at (`offset`: the request position of row 0) and the
    row where its generated tokens begin (`generated_from`: the row of the request's first generated token)."""
    segments, start = [], None
    for index, gap in enumerate([*unknown.tolist(), True]):
        if not gap and start is None:
            start = index
        elif gap and start is not None:
            written = None if generated_from is None or generated_from >= index else max(0, generated_from - start)
            piece = None if ids is None else ids[start:index]
            segments.append(Segment(rows[start:index], piece, offset + start, written))
            start = None
    return segments
