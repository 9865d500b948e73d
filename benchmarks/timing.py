"""Timing shared by the benchmarks: ratios from paired runs in one process (these machines are noisy)."""

from __future__ import annotations

import time
from collections.abc import Callable


def paired(first: Callable[[], object], second: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best time of each, the two run alternately so that drifts in machine load hit both alike."""
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for index, run in enumerate((first, second)):
            start = time.perf_counter()
            run()
            best[index] = min(best[index], time.perf_counter() - start)
    return best[0], best[1]
