"""Viewing a trace starts fast: `import moe_core` and reading a trace file import neither torch nor transformers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from moe_core.synthetic import random_trace
from moe_core.trace_io import save_trace

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_reading_a_trace_imports_no_torch(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"trace{suffix}"
    save_trace(random_trace([5, 3], num_experts=4, top_k=2, num_layers=2), path)
    script = (
        "import sys, moe_core\n"
        "from moe_core import load_trace, simulate_capacity\n"
        f"routing = load_trace({str(path)!r})\n"
        "simulate_capacity(routing, 1.0)\n"
        "print(routing.experts.shape, sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "(2, 8, 2) []"


def test_the_package_still_offers_trace_as_the_function() -> None:
    """`moe_core.trace` (the function) must not be shadowed by the moe_core/trace.py module of the same name."""
    import moe_core

    assert callable(moe_core.trace) and moe_core.trace.__name__ == "trace"
    assert moe_core.RoutingTrace.__name__ == "RoutingTrace"
