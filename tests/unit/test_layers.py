"""The layers of docs/architecture.md hold: the pure layers (the trace, the static capacity rule, the analyses,
the engine readers, the corpus summaries, the command line's parser and the app's chart builders) import
neither torch, transformers nor Streamlit, so reading and drawing a saved trace never pays for a model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE = [
    "moe_core.defaults",
    "moe_core.traces.types",
    "moe_core.traces.io",
    "moe_core.traces.checks",
    "moe_core.traces.synthetic",
    "moe_core.capacity.simulate",
    "moe_core.analyses.capacity",
    "moe_core.analyses.drops",
    "moe_core.analyses.flow",
    "moe_core.analyses.gates",
    "moe_core.analyses.load",
    "moe_core.analyses.matrix",
    "moe_core.analyses.routing",
    "moe_core.analyses.corpus",
    "moe_core.engines",
    "moe_core.corpus.summary",
    "moe_core.corpus.shards",
    "moe_core.cli.main",
    "moe_core.analyses.compare",
    "moe_core.analyses.series",
    "moe_core.series.store",
]
CHARTS = ["app.charts.capacity", "app.charts.gates", "app.charts.load", "app.charts.matrix", "app.charts.routing"]
CHILD = """
import importlib, sys
importlib.import_module(sys.argv[1])
print(sorted(m for m in ('torch', 'transformers', 'streamlit') if m in sys.modules))
"""


def _heavy_imports(module: str) -> str:
    run = subprocess.run([sys.executable, "-c", CHILD, module], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 0, run.stderr[-400:]
    return run.stdout.strip()


@pytest.mark.parametrize("module", PURE)
def test_pure_library_layers_import_no_model_stack(module: str) -> None:
    assert _heavy_imports(module) == "[]"


@pytest.mark.parametrize("module", CHARTS)
def test_chart_builders_need_no_model(module: str) -> None:
    """A chart builder is frame → Altair: no torch or transformers (gates.py imported torch for a scoring name)."""
    assert _heavy_imports(module) == "[]"
