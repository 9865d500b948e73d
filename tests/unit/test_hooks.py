"""Capture on a shared model under concurrency: each caller records exactly its own forward passes."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch

from moe_core import hooks
from moe_core.capture import recording, trace
from moe_core.hooks import forward_lock, hooks_active
from moe_core.routers import find_moe_blocks
from moe_core.tiny_models import build_tiny_model

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


def _first_experts(model: torch.nn.Module) -> torch.nn.Module:
    return find_moe_blocks(model, "mixtral")[0][0].experts


def test_two_passes_share_the_forward_lock(mixtral: torch.nn.Module, demo_tokenizer: Any) -> None:
    """Two threads trace at once and meet inside their passes (a barrier in a pre-hook of the first MoE layer):
    with passes serialised the first would wait there for a pass that cannot start, and the barrier times out.
    Each still gets exactly its own routing."""
    texts = TEXTS[:2]
    alone = [trace(mixtral, demo_tokenizer, text) for text in texts]
    meet = threading.Barrier(2, timeout=10)

    def wait_for_the_other(*_: Any) -> None:
        meet.wait()

    def traced(text: str) -> Any:
        with hooks_active([(_first_experts(mixtral), "pre", wait_for_the_other)]):
            return trace(mixtral, demo_tokenizer, text)

    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(traced, texts))
    for mine, reference in zip(together, alone, strict=True):
        np.testing.assert_array_equal(mine.experts, reference.experts)


def test_an_ablation_never_overlaps_a_pass(
    mixtral: torch.nn.Module, demo_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A visitor's trace asked for while the ablation proof zeroes an expert waits until the proof has put every
    weight back: its pass starts after the last ablation ends, and its routing is that of the intact model."""
    from moe_core import verification

    reference = trace(mixtral, demo_tokenizer, TEXTS[3])
    ablating, ablation_ends, original = threading.Event(), [], verification.expert_zeroed

    @contextlib.contextmanager
    def slow_zeroed(*args: Any) -> Iterator[None]:
        with original(*args):
            ablating.set()
            time.sleep(0.005)
            yield
        ablation_ends.append(time.perf_counter())

    monkeypatch.setattr(verification, "expert_zeroed", slow_zeroed)
    pass_starts: list[float] = []

    def visitor() -> Any:
        ablating.wait(timeout=30)
        with hooks_active([(_first_experts(mixtral), "pre", lambda *_: pass_starts.append(time.perf_counter()))]):
            return trace(mixtral, demo_tokenizer, TEXTS[3])

    with ThreadPoolExecutor(1) as pool:
        visit = pool.submit(visitor)
        verdict = verification.verify_model(mixtral, demo_tokenizer, max_layers=1)
        routed = visit.result()
    assert verdict.passed, verdict.detail
    assert ablation_ends and pass_starts and min(pass_starts) > max(ablation_ends)
    np.testing.assert_array_equal(routed.experts, reference.experts)


def test_the_forward_lock_refuses_exclusive_inside_shared_and_nests_shared_inside_exclusive(
    mixtral: torch.nn.Module, demo_tokenizer: Any
) -> None:
    """Upgrading shared to exclusive would deadlock two threads doing it, so it is refused; the holder of the
    exclusive side can trace (verify_model does), and another thread's pass waits for it."""
    lock = forward_lock(mixtral)
    with lock.shared(), pytest.raises(RuntimeError, match="exclusive side while holding the shared"), lock.exclusive():
        pass
    done = threading.Event()
    with lock.exclusive():
        assert len(trace(mixtral, demo_tokenizer, TEXTS[0]).tokens) > 0
        other = threading.Thread(target=lambda: (trace(mixtral, demo_tokenizer, TEXTS[1]), done.set()))
        other.start()
        assert not done.wait(0.5)  # blocked on the exclusive side
    other.join(timeout=30)
    assert done.is_set()


def test_a_pass_takes_one_thread_while_another_session_works(
    mixtral: torch.nn.Module, demo_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alone on an idle machine a pass keeps torch's threads; while another thread is busy() (another session's
    script run) it runs on one, and the caller's setting is back afterwards."""
    monkeypatch.setattr(hooks, "_machine_busy", lambda: False)
    default = torch.get_num_threads()
    torch.set_num_threads(2)
    seen: list[int] = []
    probe = [(_first_experts(mixtral), "pre", lambda *_: seen.append(torch.get_num_threads()))]
    try:
        with hooks_active(probe):
            trace(mixtral, demo_tokenizer, TEXTS[0])
            working, release = threading.Event(), threading.Event()

            def other_session() -> None:
                with hooks.busy():
                    working.set()
                    release.wait(timeout=30)

            thread = threading.Thread(target=other_session)
            thread.start()
            working.wait(timeout=30)
            trace(mixtral, demo_tokenizer, TEXTS[0])
            release.set()
            thread.join()
        assert seen == [2, 1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(default)
