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


def busy_share(seconds: float = 0.5) -> float:
    """The share of all cores' time spent busy over the next `seconds` (Linux /proc/stat)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
        idle = values[3] + values[4]  # idle and iowait
        return sum(values) - idle, sum(values)

    busy_0, total_0 = sample()
    time.sleep(seconds)
    busy_1, total_1 = sample()
    return (busy_1 - busy_0) / max(total_1 - total_0, 1)


def wait_until_idle(threshold: float = 0.15, timeout: float = 15.0) -> float:
    """Until the machine is idle (the browser and the server share its cores, and a page reported drawn may
    still be painting for a second or two); returns the seconds waited, at most `timeout`."""
    start = time.perf_counter()
    while busy_share() > threshold and time.perf_counter() - start < timeout:
        pass
    return time.perf_counter() - start
