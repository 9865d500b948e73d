"""Capacity costs measured against the forward pass, as ratios taken in one run (these machines are noisy).

Run from the repository root:

    python -m benchmarks.bench_capacity

Two targets, each on the bundled demo model and on a random OLMoE-shaped model of 32 layers, E=64, k=8 (a
4,096-token text then gives 32 · 4,096 · 8 ≈ 1M slots):

- static simulation: `simulate_capacity` on a trace takes at most 1% of the forward pass that produced it;
- capacity-bound forward: one `run_capped` pass costs at most 1.3× a plain pass of the same text.

Timings alternate the two sides of each pair and keep the best of several runs. Exits 1 if a target fails.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import OlmoeConfig, OlmoeForCausalLM

from benchmarks.timing import paired
from moe_core.batches import held_out_texts
from moe_core.capacity.forward import decide, lm_forward, run_capped
from moe_core.capacity.simulate import simulate_capacity
from moe_core.capture.record import TokenizedBatch, tokenize_texts, trace_batch
from moe_core.models import load_model

SIMULATION_TARGET = 0.01  # share of the forward pass
CAPPED_TARGET = 1.3  # × the plain forward
TOKENS = 4096
REPEATS = 3


@dataclass(frozen=True)
class Row:
    case: str
    measure: str
    ratio: float
    target: float
    detail: str

    @property
    def passed(self) -> bool:
        return self.ratio <= self.target


def olmoe_shaped() -> nn.Module:
    """32 layers, 64 experts, top-8, with a small hidden size: its forward is faster than a real OLMoE's, so
    the ratios here are upper bounds of what a real model of this routing shape would show."""
    torch.manual_seed(0)
    config = OlmoeConfig(
        vocab_size=4096, hidden_size=256, intermediate_size=128, num_hidden_layers=32, num_attention_heads=4,
        num_key_value_heads=4, num_experts=64, num_experts_per_tok=8, max_position_embeddings=8192,
    )  # fmt: skip
    return OlmoeForCausalLM(config).eval()


def best_of(run: Callable[[], object], repeats: int = REPEATS) -> float:
    return paired(run, lambda: None, repeats)[0]


def measure(case: str, model: nn.Module, tokenized: TokenizedBatch) -> list[Row]:
    with torch.inference_mode():
        forward_s = best_of(lambda: trace_batch(model, tokenized), repeats=2)
        routing, _ = trace_batch(model, tokenized)
        simulate_s = best_of(lambda: simulate_capacity(routing, 1.0), repeats=10)
        rule = functools.partial(decide, capacity_factor=1.0, policy="position")
        plain_s, capped_s = paired(
            lambda: lm_forward(model, tokenized.batch), lambda: run_capped(model, tokenized, rule), REPEATS
        )
    slots = routing.experts.size
    return [
        Row(case, "simulation / forward", simulate_s / forward_s, SIMULATION_TARGET,
            f"{simulate_s * 1e3:.1f} ms / {forward_s:.2f} s, {slots:,} slots"),
        Row(case, "capped / plain forward", capped_s / plain_s, CAPPED_TARGET,
            f"{capped_s:.2f} s / {plain_s:.2f} s"),
    ]  # fmt: skip


def main() -> int:
    demo = load_model()
    text = "\n\n".join(held_out_texts().values())
    rows = []
    for case, model in (
        ("demo-mixtral (4 layers, E=8, k=2)", demo.model),
        ("OLMoE-shaped (32, E=64, k=8)", olmoe_shaped()),
    ):
        tokenized = tokenize_texts(model, demo.tokenizer, text, TOKENS)
        rows += measure(f"{case}, {tokenized.batch['input_ids'].shape[1]} tokens", model, tokenized)
    print(f"{torch.get_num_threads()} torch threads, {torch.__version__}")
    print(f"{'case':<48} {'measure':<24} {'ratio':>8} {'target':>7}  result  detail")
    for row in rows:
        verdict = "PASS" if row.passed else "FAIL"
        print(f"{row.case:<48} {row.measure:<24} {row.ratio:>8.4f} {row.target:>7.2f}  {verdict:<6}  {row.detail}")
    return 0 if all(row.passed for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
