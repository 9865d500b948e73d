"""The shared trace cache: one object for every session, read-only, bounded by bytes, computed once per key."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app.memo import BytesLRU, nbytes
from moe_core.traces.synthetic import random_trace


def test_the_same_object_is_shared_and_read_only() -> None:
    cache: BytesLRU = BytesLRU(10**9)
    first = cache.get("k", lambda: random_trace(10, 4, 2))
    again = cache.get("k", lambda: pytest.fail("computed twice"))
    assert first is again
    with pytest.raises(ValueError, match="read-only"):
        first.experts[0, 0, 0] = 3


def test_bytes_bound_drops_the_least_recently_used() -> None:
    """Each trace below holds the same bytes; room for two: reading 'a' keeps it, so 'b' is the one dropped."""
    size = nbytes(random_trace(50, 8, 2))
    assert size == 50 * 8 * 4 * 2 + 50 * 2 * (8 + 4) + nbytes(random_trace(50, 8, 2).tokens)
    cache: BytesLRU = BytesLRU(2 * size)
    for key in ("a", "b"):
        cache.get(key, lambda: random_trace(50, 8, 2))
    cache.get("a", lambda: pytest.fail("a was cached"))
    cache.get("c", lambda: random_trace(50, 8, 2))
    assert "a" in cache and "c" in cache and "b" not in cache
    assert cache.bytes == 2 * size


def test_concurrent_requests_for_one_key_compute_it_once() -> None:
    calls: list[int] = []
    lock = threading.Lock()

    def slow() -> object:
        with lock:
            calls.append(1)
        time.sleep(0.2)
        return random_trace(5, 4, 1)

    cache: BytesLRU = BytesLRU(10**9)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: cache.get("same", slow), range(6)))
    assert len(calls) == 1 and all(r is results[0] for r in results)


def test_a_failed_computation_is_not_cached_and_others_may_retry() -> None:
    cache: BytesLRU = BytesLRU(10**9)
    with pytest.raises(RuntimeError):
        cache.get("k", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert cache.get("k", lambda: np.zeros(3)).shape == (3,)
