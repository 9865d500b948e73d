"""The demo-model training loop: deterministic given its seed, and a resumed run equals an uninterrupted one.

Uses a tiny config and a synthetic token cache in place of the Debian corpus (prepare_data reuses a
finished cache), so it runs anywhere in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import moe_core.train.loop as loop
from moe_core.train.corpus import DOMAINS
from moe_core.train.loop import TrainConfig, batch_for_step, layer_balance_loss, learning_rate, train

TINY = TrainConfig(
    hidden_size=32, intermediate_size=32, num_layers=1, num_heads=2, num_experts=4, top_k=2, max_positions=64,
    seq_len=32, rows_per_domain=1, steps=4, warmup_steps=1, log_every=2, checkpoint_every=2, threads=1,
)  # fmt: skip


def _work(tmp_path: Path, demo_tokenizer: Any, name: str) -> Path:
    """A work folder whose corpus cache is already built: random tokens per domain and the demo tokenizer."""
    work = tmp_path / name
    data = work / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for domain in DOMAINS:
        for split in ("train", "held_out"):
            np.save(data / f"{domain}.{split}.npy", rng.integers(0, 4096, size=2000).astype(np.uint16))
    (data / "done").write_text("ok")
    demo_tokenizer.save_pretrained(work / "tokenizer")
    return work


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_same_seed_same_model(tmp_path: Path, demo_tokenizer: Any) -> None:
    """Two runs with one seed save identical weights; another seed gives different ones."""
    first, second, other = (tmp_path / n for n in ("a-out", "b-out", "c-out"))
    train(TINY, _work(tmp_path, demo_tokenizer, "a"), first)
    train(TINY, _work(tmp_path, demo_tokenizer, "b"), second)
    train(TrainConfig(**{**TINY.__dict__, "seed": 7}), _work(tmp_path, demo_tokenizer, "c"), other)
    a, b, c = _weights(first), _weights(second), _weights(other)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resumed_run_equals_uninterrupted(tmp_path: Path, demo_tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after the step-2 checkpoint and started again, training ends with the same weights."""
    straight = tmp_path / "straight-out"
    train(TINY, _work(tmp_path, demo_tokenizer, "straight"), straight)

    work, resumed = _work(tmp_path, demo_tokenizer, "interrupted"), tmp_path / "resumed-out"

    def crash_at_step_2(config: TrainConfig, streams: dict, step: int) -> torch.Tensor:
        if step == 2:
            raise KeyboardInterrupt
        return batch_for_step(config, streams, step)

    monkeypatch.setattr(loop, "batch_for_step", crash_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        train(TINY, work, resumed)
    monkeypatch.setattr(loop, "batch_for_step", batch_for_step)
    train(TINY, work, resumed)
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_batches_mix_every_domain_equally() -> None:
    """Each batch holds rows_per_domain rows of every domain, and depends only on (seed, step)."""
    streams = {name: np.full(500, i, dtype=np.uint16) for i, name in enumerate(DOMAINS)}
    config = TrainConfig(seq_len=16, rows_per_domain=2)
    batch = batch_for_step(config, streams, 3)
    assert batch.shape == (2 * len(DOMAINS), 16)
    assert batch[:, 0].tolist() == [i for i in range(len(DOMAINS)) for _ in range(2)]
    assert torch.equal(batch, batch_for_step(config, streams, 3))


def test_learning_rate_schedule() -> None:
    """Linear warm-up to the peak, cosine down to the floor at the last step."""
    config = TrainConfig(steps=100, warmup_steps=10, learning_rate=1.0, min_learning_rate=0.1)
    assert learning_rate(config, 0) == pytest.approx(0.1) and learning_rate(config, 9) == pytest.approx(1.0)
    assert learning_rate(config, 100) == pytest.approx(0.1)


def test_balance_loss_by_hand() -> None:
    """Per-layer Switch loss N·Σ f_i·P_i: 1 under uniform probabilities; by hand for a collapsed router."""
    even = torch.zeros(8, 4)  # P = 1/4 each, so N·Σ f_i/4 = 1 whatever f is
    assert layer_balance_loss((even,), 2).item() == pytest.approx(1.0)
    collapsed = torch.tensor([[5.0, 4.0, 0.0, 0.0]] * 8)  # every token: experts 0 and 1, f = (.5, .5, 0, 0)
    p = torch.tensor([5.0, 4.0, 0.0, 0.0]).softmax(dim=0)
    expected = 4 * (0.5 * p[0] + 0.5 * p[1]).item()
    assert layer_balance_loss((collapsed,), 2).item() == pytest.approx(expected, rel=1e-5)
    assert layer_balance_loss((collapsed, even), 2).item() == pytest.approx((expected + 1.0) / 2, rel=1e-5)
