"""A class on one server: 8 concurrent visitors against one visitor alone, measured in the same run.

    python -m benchmarks.bench_concurrency [--visitors 8] [--rounds 5]

Starts the app on the bundled demo model and drives Debian's chromium (playwright, async). First one visitor
alone submits texts of ~500 tokens (`--rounds` times, median = the baseline), then `--visitors` browser contexts
submit different texts at the same moment, `--rounds` times. A visit ends when its page shows charts and its own
marker word in the routed text. Prints p50/p95 time-to-charts, failures and the server's memory after each
round. Targets: no failures, p95 at most 8× the single visitor's time.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from tests.e2e.browser import running_app
from tests.e2e.crowd import crowd, server_memory_mb

TARGET_P95_RATIO = 8.0


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with running_app() as (url, pid):
        crowd(url, 1, 1)  # warm the server: the model and the first page once
        alone = [v.seconds for v in crowd(url, 1, args.rounds) if v.seconds is not None]
        single = statistics.median(alone) if alone else float("nan")
        memory = [server_memory_mb(pid)]
        times: list[float] = []
        failures = []
        for _ in range(args.rounds):
            visits = crowd(url, args.visitors, 1)
            times += [v.seconds for v in visits if v.seconds is not None]
            failures += [v for v in visits if v.seconds is None]
            memory.append(server_memory_mb(pid))
    p50, p95 = (percentile(times, q) if times else float("nan") for q in (0.5, 0.95))
    ratio = p95 / single
    print(f"one visitor alone: median {single:.2f} s over {len(alone)} texts")
    print(f"{args.visitors} concurrent visitors × {args.rounds} rounds: p50 {p50:.2f} s, p95 {p95:.2f} s, "
          f"{len(failures)} failed of {args.visitors * args.rounds}")  # fmt: skip
    print("server memory after warm-up and each round (MB): " + ", ".join(f"{m:.0f}" for m in memory))
    ok = not failures and ratio <= TARGET_P95_RATIO
    print(f"p95 / single = {ratio:.2f}  target <= {TARGET_P95_RATIO:g} with no failures  {'PASS' if ok else 'FAIL'}")
    for failure in failures[:5]:
        print(f"  failed: visitor {failure.visitor} round {failure.round}: {failure.error}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
