"""Background threads of the server are joined at exit: a process whose warm-up is still inside a torch forward
exits cleanly (status 0) instead of aborting (134, "terminate called without an active exception")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = """
import time, torch
from app import background
steps = []
def work():
    while not background.STOPPING.is_set():  # stands for a multi-step warm-up, one forward per step
        torch.randn(256, 256) @ torch.randn(256, 256)
        steps.append(1)
background.start(work, "busy")
time.sleep(0.5)
import atexit
atexit.register(lambda: print("steps", len(steps) > 0, flush=True))
"""


def test_a_process_exits_cleanly_with_background_torch_work_running() -> None:
    done = subprocess.run([sys.executable, "-c", WORK], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "steps True" in done.stdout
