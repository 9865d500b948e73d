"""Viewing a trace starts fast: `import moe_core` and reading a trace file import neither torch nor transformers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from moe_core.traces.io import save_trace
from moe_core.traces.synthetic import random_trace

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
    """`moe_core.trace` is the function; the trace type lives in moe_core.traces, so no module shadows it."""
    import moe_core

    assert callable(moe_core.trace) and moe_core.trace.__name__ == "trace"
    assert moe_core.RoutingTrace.__name__ == "RoutingTrace"


CHILD = """
import sys
from moe_core.cli.main import main
code = main(sys.argv[1:])
print(code, sorted(m for m in ('torch', 'transformers') if m in sys.modules), file=sys.stderr)
"""


def _imports_of(*argv: str) -> str:
    """The exit code and which of torch / transformers one CLI command imported, as the child prints them."""
    run = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, cwd=ROOT, timeout=120)
    return run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"no output, exit {run.returncode}"


def test_commands_that_need_no_model_import_no_torch(tmp_path: Path, tiny_model_dir: Path) -> None:
    """show (a saved trace, a Megatron-Core dump), compare (two saved traces) and summarize (a traced corpus)
    read files only: no torch or
    transformers (~5 s of imports); trace, which runs a model, does import them."""
    import json

    from moe_core.corpus.runner import CorpusSettings, trace_corpus

    saved = tmp_path / "trace.json"
    save_trace(random_trace([5, 3], num_experts=4, top_k=2, num_layers=2), saved)
    dump = tmp_path / "router_trace_rank0.jsonl"
    dump.write_text(json.dumps({"layer": 0, "num_tokens": 2, "topk": 2, "top_indices": [[0, 1], [1, 2]]}) + "\n")
    documents = tmp_path / "docs.txt"
    documents.write_text("one document\nanother document\n", encoding="utf-8")
    trace_corpus(CorpusSettings(str(tiny_model_dir), str(documents), tmp_path / "corpus", device="cpu"))
    assert _imports_of("show", str(saved)) == "0 []"
    assert _imports_of("compare", str(saved), str(saved)) == "0 []"
    assert _imports_of("show", str(dump)) == "0 []"
    assert _imports_of("summarize", str(tmp_path / "corpus")) == "0 []"
    assert _imports_of("trace", "--text", "hi", "--model", str(tiny_model_dir)) == "0 ['torch', 'transformers']"


HELP_CHILD = """
import sys
from moe_core.cli.main import COMMANDS, main
for argv in (["--help"], *([name, "--help"] for name in COMMANDS)):
    try:
        main(argv)
    except SystemExit:
        pass
print(sorted(m for m in ('torch', 'transformers') if m in sys.modules), file=sys.stderr)
"""


def test_every_help_imports_no_torch() -> None:
    """`--help` of the tool and of every command builds the parser from light modules only."""
    run = subprocess.run([sys.executable, "-c", HELP_CHILD], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert run.stderr.strip().splitlines()[-1] == "[]", run.stderr[-500:]
