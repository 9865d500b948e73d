"""Run `python -m moe_core …` in-process for a test: (exit status, stdout, stderr)."""

from __future__ import annotations

import pytest

from moe_core.cli.main import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as stop:  # argparse usage errors
        code = int(stop.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
