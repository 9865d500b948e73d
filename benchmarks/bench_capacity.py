"""Vectorised capacity simulation against the plain-loop reference: same answer, ≥ 100× faster.

Run from the repository root:

    python -m benchmarks.bench_capacity

Each case builds a random trace, times `simulate_capacity` and `simulate_capacity_reference` in the same run
(best of several repeats, time.perf_counter), checks the kept masks are identical, and prints the speed-up
with PASS/FAIL against the target. Exits 1 if any case fails, so it can gate CI.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from moe_core.capacity import simulate_capacity, simulate_capacity_reference
from moe_core.synthetic import random_trace

TARGET_SPEEDUP = 100.0


@dataclass(frozen=True)
class Case:
    name: str
    lengths: list[int]
    num_experts: int
    top_k: int
    num_layers: int
    capacity_factor: float
    policy: str


CASES = [
    Case("4×512 tok, E=8 k=2, L=4, position", [512] * 4, 8, 2, 4, 1.0, "position"),
    Case("4×512 tok, E=8 k=2, L=4, score", [512] * 4, 8, 2, 4, 1.0, "score"),
    Case("8×1024 tok, E=64 k=8, L=4, position", [1024] * 8, 64, 8, 4, 1.25, "position"),
    Case("8×1024 tok, E=64 k=8, L=4, score", [1024] * 8, 64, 8, 4, 1.25, "score"),
]


def best_time(run: Callable[[], object], repeats: int) -> float:
    """Fastest of `repeats` runs, in seconds (the least disturbed by other work on the machine)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    print(f"{'case':<40} {'slots':>8} {'vectorised':>11} {'reference':>11} {'speed-up':>9}  result")
    failed = 0
    for case in CASES:
        trace = random_trace(case.lengths, case.num_experts, case.top_k, num_layers=case.num_layers, seed=0)
        settings = {"capacity_factor": case.capacity_factor, "policy": case.policy}
        fast, slow = simulate_capacity(trace, **settings), simulate_capacity_reference(trace, **settings)
        same = np.array_equal(fast.kept, slow.kept)
        vectorised = best_time(lambda trace=trace, settings=settings: simulate_capacity(trace, **settings), 20)
        reference = best_time(lambda trace=trace, settings=settings: simulate_capacity_reference(trace, **settings), 3)
        speedup = reference / vectorised
        ok = same and speedup >= TARGET_SPEEDUP
        failed += not ok
        verdict = "PASS" if ok else ("FAIL (masks differ)" if not same else "FAIL (too slow)")
        print(
            f"{case.name:<40} {trace.experts.size:>8} {vectorised * 1e3:>9.2f}ms {reference * 1e3:>9.1f}ms "
            f"{speedup:>8.0f}×  {verdict}"
        )
    print(f"target: ≥ {TARGET_SPEEDUP:.0f}× with identical kept masks; {len(CASES) - failed}/{len(CASES)} passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
