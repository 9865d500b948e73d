"""The GPU path in one short run: exactness in bf16, capture and capacity-bound costs, device_map placement.

    python -m benchmarks.gpu_check            # on a CUDA machine: an OLMoE-1B-7B-wide model, 4 layers, bf16
    python -m benchmarks.gpu_check --tiny     # anywhere (CPU, fp32): the same checks on a tiny model, so it cannot rot

Builds a random-initialised OLMoE of real width from a config (64 experts, top-8, hidden 2048; only 4 layers so
that it fits any card), saves it with the demo tokenizer and loads it back through moe_core.load_model, then
prints:

1. capture exactness by ablation on every MoE layer (captured experts = the experts whose zeroing changes the
   token's output), in the model's own dtype;
2. capture overhead against a plain forward at 512 and 4,096 tokens (paired timings, CUDA synchronised);
3. the capacity-bound forward's cost against a plain forward;
4. where `--device auto-map` (`device_map="auto"`) put the layers.

Exits 1 if exactness fails. Numbers go into the README with the card's name.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, OlmoeConfig, OlmoeForCausalLM

from moe_core.batches import held_out_texts
from moe_core.capacity.forward import decide, lm_forward, run_capped
from moe_core.capture.record import forward_text, tokenize_texts, trace_batch
from moe_core.capture.routers import find_moe_blocks
from moe_core.models import BUNDLED_MODELS, DEMO_MODEL, load_model
from moe_core.proof.verification import (
    ExpertClasses,
    ablation_experts,
    captured_sets,
    kept_rows,
    recording_block_inputs,
)

REAL = {
    "hidden_size": 2048,
    "intermediate_size": 1024,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "num_experts": 64,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 4,
}  # OLMoE-1B-7B's widths, 4 layers
TINY = {"hidden_size": 64, "intermediate_size": 32, "num_attention_heads": 4, "num_key_value_heads": 4,
        "num_experts": 16, "num_experts_per_tok": 4, "num_hidden_layers": 2}  # fmt: skip


def build_folder(shape: dict[str, int], folder: Path) -> Path:
    """A random OLMoE of `shape` saved like a checkpoint (safetensors + the demo tokenizer, vocabulary 4,096)."""
    torch.manual_seed(0)
    config = OlmoeConfig(vocab_size=4096, max_position_embeddings=8192, **shape)
    OlmoeForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(BUNDLED_MODELS[DEMO_MODEL]).save_pretrained(folder)
    return folder


def synchronised(run: Callable[[], object]) -> Callable[[], float]:
    def timed() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return timed


def paired_ratio(base: Callable[[], object], other: Callable[[], object], pairs: int) -> tuple[float, float, float]:
    """(median base seconds, median other seconds, median of per-pair ratios), the two alternating."""
    base_t, other_t = synchronised(base), synchronised(other)
    base_t(), other_t()  # warm-up: kernels, allocator
    times = [(base_t(), other_t()) if n % 2 == 0 else tuple(reversed((other_t(), base_t()))) for n in range(pairs)]
    ratios = [o / b for b, o in times]
    return float(np.median([b for b, _ in times])), float(np.median([o for _, o in times])), float(np.median(ratios))


def exactness(loaded: object, texts: list[str]) -> list[str]:
    """Per MoE layer: 'layer N: pass' or what differs (captured experts against ablation ground truth)."""
    model, tokenizer = loaded.model, loaded.tokenizer  # type: ignore[attr-defined]
    blocks, _ = find_moe_blocks(model, model.config.model_type)
    tokenized = tokenize_texts(model, tokenizer, texts, 256)
    with recording_block_inputs(blocks) as calls:
        routing, _ = trace_batch(model, tokenized)
    rows = kept_rows(routing)
    classes = ExpertClasses.of(model, routing.model.num_experts)
    lines = []
    for layer, (block, block_calls) in enumerate(zip(blocks, calls, strict=True)):
        truth = ablation_experts(block, block_calls[0], classes)[rows]
        wrong = int((truth != captured_sets(routing, layer, classes)).any(axis=1).sum())
        lines.append(f"layer {block.layer}: {'pass' if wrong == 0 else f'FAIL, {wrong}/{len(rows)} tokens differ'}")
    return lines


@torch.inference_mode()
def measure(model: torch.nn.Module, tokenizer: object, text: str, lengths: tuple[int, ...], pairs: int) -> None:
    """Print the capture overhead at each length and the capacity-bound forward's cost at the last one."""
    for length in lengths:
        tokenized = tokenize_texts(model, tokenizer, text, length)
        plain, traced, ratio = paired_ratio(
            lambda t=tokenized: forward_text(model, t.batch), lambda t=tokenized: trace_batch(model, t), pairs
        )
        print(f"2. {length} tokens: plain {plain * 1e3:.1f} ms, trace {traced * 1e3:.1f} ms, ratio {ratio:.3f}")
    rule = functools.partial(decide, capacity_factor=1.0, policy="position")
    plain, capped, ratio = paired_ratio(
        lambda: lm_forward(model, tokenized.batch), lambda: run_capped(model, tokenized, rule), pairs
    )
    print(f"3. capacity-bound forward, {lengths[-1]} tokens: {capped * 1e3:.1f} ms vs plain {plain * 1e3:.1f} ms, "
          f"ratio {ratio:.3f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model on whatever device there is (the test)")
    parser.add_argument("--pairs", type=int, default=10)
    args = parser.parse_args(argv)
    shape = TINY if args.tiny else REAL
    lengths = (64, 256) if args.tiny else (512, 4096)
    text = "\n\n".join(held_out_texts().values())
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(f"device: {card}; torch {torch.__version__}; model: OLMoE-shaped {shape}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_folder(shape, Path(tmp) / "olmoe")
        loaded = load_model(str(folder))
        print(f"placement: {loaded.placement.device}, {str(loaded.placement.dtype).removeprefix('torch.')}")
        verdicts = exactness(loaded, list(held_out_texts().values())[:2])
        print("1. capture exactness by ablation: " + "; ".join(verdicts))
        measure(loaded.model, loaded.tokenizer, text, lengths, args.pairs)
        loaded = None  # free the first copy before the device-mapped one loads
        mapped = load_model(str(folder), device="auto-map")
        devices = sorted({str(p.device) for p in mapped.model.parameters()})
        where = getattr(mapped.model, "hf_device_map", None)
        print(f"4. device_map='auto': parameters on {devices}; map: {where if where else 'none (one device)'}")
    return 0 if all(v.endswith("pass") for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
