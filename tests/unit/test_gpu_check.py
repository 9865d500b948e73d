"""benchmarks/gpu_check.py runs anywhere with --tiny, so the script a lent GPU runs cannot rot."""

from __future__ import annotations

import re

import pytest

from benchmarks import gpu_check


@pytest.mark.slow
def test_tiny_gpu_check_runs_and_reports_every_section(capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 0 means every layer passed the ablation proof; each numbered section prints real numbers."""
    assert gpu_check.main(["--tiny", "--pairs", "2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"1\. capture exactness by ablation: layer 0: pass; layer 1: pass", out), out
    assert len(re.findall(r"2\. \d+ tokens: plain [\d.]+ ms, trace [\d.]+ ms, ratio [\d.]+", out)) == 2, out
    assert re.search(r"3\. capacity-bound forward, 256 tokens: [\d.]+ ms vs plain [\d.]+ ms, ratio [\d.]+", out)
    assert re.search(r"4\. device_map='auto': parameters on \['cpu'\]", out), out
