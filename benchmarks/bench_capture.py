"""Capture overhead: trace() against a plain forward of the same text, on the bundled demo model.

    python -m benchmarks.bench_capture [--tokens 512 2048] [--repeats 30]

Both are measured in one run, interleaved (plain, trace, plain, trace, ...) so machine noise hits both alike;
the printed figure is the median of the per-pair ratios. `plain` tokenises and runs the model; `trace`
does the same plus hooks, padding removal and the copy to numpy. Target: at most 1.03.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from moe_core.capture import trace
from moe_core.models import load_model
from moe_core.tokens import tokenize

TARGET = 1.03


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=30)
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
    for _ in range(repeats):
        start = time.perf_counter()
        plain()
        middle = time.perf_counter()
        captured()
        end = time.perf_counter()
        plain_times.append(middle - start)
        trace_times.append(end - middle)
        ratios.append((end - middle) / (middle - start))
    ratio = statistics.median(ratios)
    print(f"demo model, {len(ids)} tokens, {repeats} interleaved pairs, {torch.get_num_threads()} threads")
    print(f"  plain forward  median {statistics.median(plain_times) * 1000:7.2f} ms")
    print(f"  trace()        median {statistics.median(trace_times) * 1000:7.2f} ms")
    verdict = "PASS" if ratio <= TARGET else "ABOVE TARGET"
    print(f"  capture overhead ratio (median of pairs): {ratio:.3f}  target <= {TARGET}  {verdict}")


if __name__ == "__main__":
    main()
