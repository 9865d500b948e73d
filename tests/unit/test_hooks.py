"""Capture on a shared model under concurrency: each caller records exactly its own forward passes."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch

from moe_core.capture.hooks import hooks_active
from moe_core.capture.record import recording, trace
from moe_core.capture.routers import find_moe_blocks
from moe_core.proof.tiny_models import build_tiny_model

TEXTS = [f"Visitor {n} asks about {topic}." * (n + 1) for n, topic in enumerate(
    ["experts", "def f(x): return x", "12 + 30 = 42", "Guten Tag", "<b>markup</b>", "routing", "capacity", "drops"]
)]  # fmt: skip


@pytest.fixture(scope="module")
def mixtral() -> torch.nn.Module:
    return build_tiny_model("mixtral")


def test_concurrent_traces_each_get_their_own_routing(mixtral: torch.nn.Module, demo_tokenizer: Any) -> None:
    """Eight threads trace eight different texts at once on one model; each result equals that text traced alone."""
    alone = [trace(mixtral, demo_tokenizer, text) for text in TEXTS]
    start = threading.Barrier(len(TEXTS))

    def traced(text: str) -> Any:
        start.wait()
        return trace(mixtral, demo_tokenizer, text)

    for _ in range(3):
        with ThreadPoolExecutor(len(TEXTS)) as pool:
            together = list(pool.map(traced, TEXTS))
        for mine, reference in zip(together, alone, strict=True):
            np.testing.assert_array_equal(mine.tokens.ids, reference.tokens.ids)
            np.testing.assert_array_equal(mine.experts, reference.experts)
            np.testing.assert_array_equal(mine.logits, reference.logits)


def test_another_threads_forward_is_not_recorded(mixtral: torch.nn.Module, demo_tokenizer: Any) -> None:
    """While one thread records, a forward by another thread (no lock, no hooks of its own) runs in the middle
    of it. The recorder must see only its own pass: per-call hooks on the shared model recorded both."""
    blocks, logits_index = find_moe_blocks(mixtral, "mixtral")
    recording_open, other_done = threading.Event(), threading.Event()
    ids = torch.tensor([demo_tokenizer("Someone else's text, longer than mine.")["input_ids"]])
    mine = torch.tensor([demo_tokenizer("My text.")["input_ids"]])

    def other_visitor() -> None:
        recording_open.wait()
        with torch.inference_mode():
            mixtral(ids)
        other_done.set()

    thread = threading.Thread(target=other_visitor)
    thread.start()
    with recording(blocks, logits_index) as records, torch.inference_mode():
        recording_open.set()
        other_done.wait()
        mixtral(mine)
    thread.join()
    assert [len(r.logits) for r in records] == [1] * len(blocks)
    assert records[0].logits[0].shape[0] == mine.shape[1]


def test_pre_hooks_replace_inputs_only_for_their_caller(mixtral: torch.nn.Module, demo_tokenizer: Any) -> None:
    """A pre-hook that changes a module's input (as the capacity-bound forward does) affects only its own
    thread's pass: another thread's output stays bit-identical to a plain run."""
    ids = torch.tensor([demo_tokenizer("Nobody touches my experts.")["input_ids"]])
    with torch.inference_mode():
        plain = mixtral(ids).logits
    blocks, _ = find_moe_blocks(mixtral, "mixtral")

    def zero_weights(_module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        hidden, index, weights = args
        return (hidden, index, torch.zeros_like(weights)), kwargs

    inside, other_result = threading.Event(), {}

    def other() -> None:
        inside.wait()
        with torch.inference_mode():
            other_result["logits"] = mixtral(ids).logits

    thread = threading.Thread(target=other)
    thread.start()
    with hooks_active([(b.experts, "pre", zero_weights) for b in blocks]), torch.inference_mode():
        inside.set()
        thread.join()
        changed = mixtral(ids).logits
    torch.testing.assert_close(other_result["logits"], plain, rtol=0, atol=0)
    assert not torch.equal(changed, plain)
