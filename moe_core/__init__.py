"""MoE Routing Explorer's library: load an MoE model, trace its routing, simulate capacity.

from moe_core import load_model, trace, simulate_capacity
loaded = load_model()                          # the bundled demo model
routing = trace(loaded.model, loaded.tokenizer, "def f(x): return x")
drops = simulate_capacity(routing, capacity_factor=1.0)
"""

from moe_core.capacity import simulate_capacity
from moe_core.capture import trace
from moe_core.models import DEMO_MODEL, ModelLoadError, load_model
from moe_core.trace import ModelInfo, RoutingTrace, Tokens
from moe_core.trace_io import load_trace_bytes, save_trace

__all__ = [
    "DEMO_MODEL",
    "ModelInfo",
    "ModelLoadError",
    "RoutingTrace",
    "Tokens",
    "load_model",
    "load_trace_bytes",
    "save_trace",
    "simulate_capacity",
    "trace",
]
