"""AppTest helpers: run app/main.py with URL parameters, and read what it drew."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app" / "main.py")
TIMEOUT = 180  # first run loads the model


def run_app(params: dict[str, str] | None = None, setup: Callable[[AppTest], None] | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in (params or {}).items():
        at.query_params[key] = value
    at.run()
    if setup is not None:
        setup(at)
        at.run()
    return at


def page_html(at: AppTest) -> str:
    """All markdown the page rendered (token spans, legends, CSS)."""
    return "\n".join(str(m.value) for m in at.markdown)


@pytest.fixture
def app_runner() -> Callable[..., AppTest]:
    return run_app
