"""Capture overhead: trace() against a plain forward of the same text, on the bundled demo model.

    python -m benchmarks.bench_capture [--tokens 512 2048] [--repeats 30]

Both are measured in one run, in pairs whose order alternates (plain then trace, trace then plain, ...), so
machine noise and drift hit both alike;
the printed figure is the median of the per-pair ratios. `plain` tokenises and runs the model; `trace`
does the same plus hooks, padding removal and the copy to numpy. Target: at most 1.03.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from moe_core.capture.record import trace
from moe_core.capture.tokens import tokenize
from moe_core.models import load_model

TARGET = 1.03


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=60)
    args = parser.parse_args()
    loaded = load_model()
    for tokens in args.tokens:
        measure(loaded.model, loaded.tokenizer, tokens, args.repeats)


def measure(model: torch.nn.Module, tokenizer: Any, tokens: int, repeats: int) -> None:
    sentence = "The router sends every token to two of eight experts. def f(x): return x * 2 + 1\n"
    ids = tokenizer(sentence * (tokens // 8))["input_ids"][:tokens]
    text = tokenizer.decode(ids)

    def plain() -> None:
        _, batch, _ = tokenize(tokenizer, [text], None)
        with torch.inference_mode():
            model(**batch, use_cache=False)

    def captured() -> None:
        trace(model, tokenizer, text)

    for warm in (plain, captured, plain, captured):
        warm()
    ratios, plain_times, trace_times = [], [], []
    for pair in range(repeats):
        # Alternate which runs first, so a drift between the two halves of a pair favours neither.
        first, second = (plain, captured) if pair % 2 == 0 else (captured, plain)
        start = time.perf_counter()
        first()
        middle = time.perf_counter()
        second()
        end = time.perf_counter()
        plain_time, trace_time = (middle - start, end - middle) if first is plain else (end - middle, middle - start)
        plain_times.append(plain_time)
        trace_times.append(trace_time)
        ratios.append(trace_time / plain_time)
    ratio = statistics.median(ratios)
    print(f"demo model, {len(ids)} tokens, {repeats} interleaved pairs, {torch.get_num_threads()} threads")
    print(f"  plain forward  median {statistics.median(plain_times) * 1000:7.2f} ms")
    print(f"  trace()        median {statistics.median(trace_times) * 1000:7.2f} ms")
    verdict = "PASS" if ratio <= TARGET else "ABOVE TARGET"
    print(f"  capture overhead ratio (median of pairs): {ratio:.3f}  target <= {TARGET}  {verdict}")


if __name__ == "__main__":
    main()
