"""MoE Routing Explorer's library: load an MoE model, trace its routing, simulate capacity.

from moe_core import load_model, trace, simulate_capacity
loaded = load_model()                          # the bundled demo model
routing = trace(loaded.model, loaded.tokenizer, "def f(x): return x")
drops = simulate_capacity(routing, capacity_factor=1.0)

Names are imported on first use (PEP 562), so `import moe_core` and reading a trace file (moe_core.traces.io)
import neither torch nor transformers: viewing an uploaded trace starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from moe_core.traces import types as _trace_types  # the trace type lives in moe_core.traces: `trace` is the function

_EXPORTS = {
    "DEMO_MODEL": "moe_core.defaults",
    "ModelInfo": "moe_core.traces.types",
    "ModelLoadError": "moe_core.models",
    "RoutingTrace": "moe_core.traces.types",
    "Tokens": "moe_core.traces.types",
    "counterfactual": "moe_core.capacity.forward",
    "load_model": "moe_core.models",
    "load_trace": "moe_core.traces.io",
    "load_trace_bytes": "moe_core.traces.io",
    "save_trace": "moe_core.traces.io",
    "simulate_capacity": "moe_core.capacity.simulate",
}
__all__ = sorted([*_EXPORTS, "trace"])


def trace(*args: Any, **kwargs: Any) -> _trace_types.RoutingTrace:
    """moe_core.capture.record.trace (imported on the first call): how every token of some texts is routed."""
    from moe_core.capture.record import trace as capture_trace

    return capture_trace(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'moe_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return [*globals(), *__all__]
