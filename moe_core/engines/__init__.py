"""Import routing recorded by serving and training engines (vLLM, SGLang, Megatron-Core) as a RoutingTrace.

One table, FORMATS: each entry sniffs a file and reads it. "auto" takes the first format whose sniffer claims the
file; the CLI (`python -m moe_core show`), Python and the app's upload box all call `read_bytes` / `read_files`.
Engine dumps carry expert ids only, so the traces are compact: logits, probs and weights are None. Every reader
checks what it reads and raises TraceFormatError (one plain line) on anything malformed.

    from moe_core.engines import read_files, model_hints
    routing = read_files(["router_trace_rank0.jsonl", "router_trace_rank1.jsonl"], hints=model_hints("org/model"))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from moe_core.engines import megatron, sglang, vllm
from moe_core.engines.common import ModelHints, Payload
from moe_core.engines.hints import model_hints
from moe_core.traces import io as trace_io
from moe_core.traces.checks import TraceFormatError
from moe_core.traces.types import RoutingTrace

__all__ = [
    "AUTO",
    "FORMATS",
    "UPLOAD_TYPES",
    "EngineFormat",
    "ModelHints",
    "Payload",
    "model_hints",
    "read_bytes",
    "read_files",
    "read_payloads",
]

AUTO = "auto"


@dataclass(frozen=True)
class EngineFormat:
    """One importable layout: what it is called, how to recognise it, how to read it (one file or several)."""

    title: str
    sniff: Callable[[Payload], bool]
    read: Callable[[Payload, ModelHints], RoutingTrace]
    suffixes: tuple[str, ...]  # file endings it comes in (the upload box's accepted types)
    read_many: Callable[[list[Payload], ModelHints], RoutingTrace] | None = None  # several files merged


def _sniff_trace(payload: Payload) -> bool:
    if payload.name.endswith(".parquet") or payload.data.startswith(b"PAR1"):
        return True
    value = payload.json_or_none()
    return isinstance(value, dict) and "format_version" in value


def _read_trace(payload: Payload, _hints: ModelHints) -> RoutingTrace:
    """This tool's own JSON or Parquet (by name, else by content)."""
    name = payload.name if payload.name.endswith((".json", ".parquet")) else (
        "trace.parquet" if payload.data.startswith(b"PAR1") else "trace.json")  # fmt: skip
    return trace_io.load_trace_bytes(payload.data, name)  # looked up on the module: tests may wrap it


FORMATS: dict[str, EngineFormat] = {  # sniffed in this order; the first that claims a file reads it
    "trace": EngineFormat("a routing trace saved by this tool", _sniff_trace, _read_trace, (".json", ".parquet")),
    "megatron": EngineFormat(
        "Megatron-Core router trace (router_trace_rank{r}.jsonl)",
        megatron.sniff,
        megatron.read,
        (".jsonl",),
        megatron.read_many,
    ),
    "sglang": EngineFormat(
        "SGLang routed_experts (response JSON or base64) or per_token recorder dump (.pt)",
        sglang.sniff,
        sglang.read,
        (".json", ".pt", ".txt", ".b64"),
    ),
    "vllm": EngineFormat(
        "vLLM routed experts (response JSON, .npy, or base64 .npy)", vllm.sniff, vllm.read, (".json", ".npy", ".txt")
    ),
}
UPLOAD_TYPES = sorted({suffix.lstrip(".") for f in FORMATS.values() for suffix in f.suffixes})


def detect(payload: Payload) -> str:
    """The name of the first format whose sniffer claims the file."""
    for name, engine in FORMATS.items():
        if engine.sniff(payload):
            return name
    if payload.name.endswith(".parquet") or (payload.name.endswith(".json") and payload.json_or_none() is None):
        return "trace"  # not valid JSON or Parquet: its reader says precisely what is wrong
    formats = "; ".join(engine.title for engine in FORMATS.values())
    raise TraceFormatError(f"{payload.name[:80]}: not a routing file this tool reads (it reads {formats})")


def _format(source: str, payload: Payload) -> EngineFormat:
    if source == AUTO:
        return FORMATS[detect(payload)]
    if source not in FORMATS:
        raise TraceFormatError(f"unknown format {source!r}: choose {AUTO} or one of {', '.join(FORMATS)}")
    return FORMATS[source]


def read_bytes(data: bytes, filename: str, source: str = AUTO, hints: ModelHints | None = None) -> RoutingTrace:
    """One file's routing as a trace: `source` names the format, or "auto" sniffs it (the app's upload box)."""
    return read_payloads([Payload(filename, data)], source, hints)


def read_payloads(payloads: Sequence[Payload], source: str = AUTO, hints: ModelHints | None = None) -> RoutingTrace:
    """Several files are one dump only where the format merges them (Megatron-Core's ranks)."""
    if not payloads:
        raise TraceFormatError("no file given")
    trace_io.check_size(sum(len(p.data) for p in payloads))
    engine = _format(source, payloads[0])
    hints = hints or ModelHints()
    if len(payloads) == 1:
        return engine.read(payloads[0], hints)
    if engine.read_many is None:
        raise TraceFormatError(f"{engine.title} comes in one file; only Megatron-Core's ranks are merged")
    return engine.read_many(list(payloads), hints)


def read_files(paths: Sequence[str | Path], source: str = AUTO, hints: ModelHints | None = None) -> RoutingTrace:
    """Files on disk (the CLI's way in); the size limit is checked before any file is read."""
    paths = [Path(p) for p in paths]
    try:
        trace_io.check_size(sum(p.stat().st_size for p in paths))
        payloads = [Payload(p.name, p.read_bytes()) for p in paths]
    except OSError as error:
        name = Path(error.filename).name if error.filename else "a file"
        raise TraceFormatError(f"cannot read {name}: {error.strerror}") from None
    return read_payloads(payloads, source, hints)
