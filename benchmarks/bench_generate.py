"""Capture during generation against plain generate() of the same tokens (issue 17: target ratio <= 1.05 on the
demo model at 64 new tokens). Greedy, so both write the same tokens; generate_trace asks for one token more (the
last one written is never fed back, so routing it needs that step), and plain generate() is given the same count.

    python -m benchmarks.bench_generate [--tokens 64] [--repeats 7]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.timing import paired
from moe_core.capture.generation import generate_trace
from moe_core.models import load_model

PROMPT = "def fibonacci(n):\n    if n < 2:\n        return n\n    return"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    loaded = load_model()
    model, tokenizer = loaded.model, loaded.tokenizer
    batch = tokenizer(PROMPT, return_tensors="pt")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def plain() -> None:
        with torch.inference_mode():
            model.generate(**batch, max_new_tokens=args.tokens + 1, do_sample=False, pad_token_id=pad, use_cache=True)

    def captured() -> None:
        generate_trace(model, tokenizer, PROMPT, args.tokens)

    plain(), captured()  # warm-up: first calls pay for allocations and kernels
    base, with_capture = paired(plain, captured, args.repeats)
    print(
        f"demo model, {args.tokens} new tokens, best of {args.repeats} (alternating): generate() {base * 1000:.1f} ms, "
        f"with routing capture {with_capture * 1000:.1f} ms, ratio {with_capture / base:.3f} (target <= 1.05)"
    )


if __name__ == "__main__":
    main()
