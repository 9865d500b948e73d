"""The app server and the browser, one of each per test module (starting them costs seconds)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser

from tests.e2e.browser import app_server, chromium


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with app_server() as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched
