"""A class opening the same server at once: every visitor gets its own charts, and memory stays flat."""

from __future__ import annotations

import pytest

from tests.e2e.browser import running_app
from tests.e2e.crowd import crowd, server_memory_mb

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

VISITORS, ROUNDS = 8, 2  # bounded for CI; benchmarks/bench_concurrency.py runs 5 rounds and times them


def test_eight_concurrent_visitors_each_get_their_own_routing() -> None:
    """Eight browser contexts submit different ~500-token texts at the same moment, twice. Each page must show
    charts and its own marker word in the routed text (another visitor's routing would fail), with no exception;
    the server's memory after the second round is within 150 MB of the first (the model is not loaded again)."""
    with running_app() as (url, pid):
        first = crowd(url, VISITORS, 1)
        after_first = server_memory_mb(pid)
        second = crowd(url, VISITORS, ROUNDS - 1)
        after_second = server_memory_mb(pid)
    failed = [visit for visit in first + second if visit.seconds is None]
    assert not failed, failed
    assert after_second - after_first < 150, (after_first, after_second)
