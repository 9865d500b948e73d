"""The app in a real browser (Debian chromium via playwright): type, share, download, every view drawn."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import Browser, Page

from app.view_registry import VIEWS
from tests.e2e.browser import PROMPT, VIEWPORT, click_download, submit_prompt, wait_for_charts

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    yield page
    context.close()


def _shown_tokens(page: Page) -> str:
    return "".join(page.locator(".tokens .tok").all_inner_texts())


def test_type_a_prompt_and_see_it_routed(server: str, page: Page) -> None:
    """A person opens the page, types text, submits: the tokens appear coloured and the URL holds the text."""
    page.goto(server)
    wait_for_charts(page)
    submit_prompt(page, "Experts route tokens: 12 + 30 = 42")
    page.wait_for_function("() => document.body.innerText.includes('12 + 30')", timeout=60_000)
    wait_for_charts(page)
    assert "12 + 30 = 42" in _shown_tokens(page).replace("\n", "")
    page.wait_for_function("() => location.search.includes('text=')", timeout=10_000)
    assert "12" in page.url and "text=" in page.url


def test_share_link_restores_the_view(server: str, page: Page) -> None:
    """Opening a share link shows the same prompt, view, layer and capacity factor."""
    page.goto(f"{server}/?text={quote('Share this view')}&view=capacity&layer=2&cf=0.5")
    wait_for_charts(page)
    assert page.locator(PROMPT).input_value() == "Share this view"
    selected = page.locator('[data-testid="stButtonGroup"] button[aria-checked="true"]').inner_text()
    assert selected.strip() == "Capacity and drops"
    sidebar = page.locator('[data-testid="stSidebar"]').inner_text()
    assert re.search(r"Layer\s+2\s", sidebar) and re.search(r"Capacity factor\s+0\.50\s", sidebar), sidebar


def test_download_png(server: str, page: Page, tmp_path: Path) -> None:
    """'Download PNG' delivers a real PNG file of the chart."""
    page.goto(f"{server}/?text={quote('Download me as a picture')}")
    wait_for_charts(page)
    with page.expect_download(timeout=60_000) as download:
        click_download(page, "PNG")
    target = tmp_path / download.value.suggested_filename
    download.value.save_as(target)
    assert target.suffix == ".png" and target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("view", VIEWS)
def test_every_view_draws(server: str, page: Page, view: str, tmp_path: Path) -> None:
    """Each view renders its charts without an error box, and a screenshot of it is saved."""
    page.goto(f"{server}/?view={view}&cf=0.75")
    wait_for_charts(page)
    assert page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]').count() == 0
    folder = Path(os.environ.get("MOE_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=folder / f"{view}.png", full_page=True)
    assert (folder / f"{view}.png").stat().st_size > 10_000


# The stream's tokens while the model writes: null before the stream's heading appears.
STREAMED = """() => {
  const heading = [...document.querySelectorAll('h3')].find(e => e.innerText.startsWith('The model is writing'));
  return heading ? document.querySelectorAll('[data-testid="stMain"] .tok').length : null;
}"""


def test_continue_streams_the_models_tokens_then_shows_their_routing(server: str, page: Page) -> None:
    """Let the model continue: tokens appear a few at a time under "The model is writing" (the count grows in
    several steps, never all at once), then the page shows the generation's routing, says which tokens are the
    model's own and marks exactly those in the routed text."""
    page.goto(f"{server}/?text={quote('def fibonacci(n):')}")
    wait_for_charts(page)
    page.get_by_role("button", name="Let the model continue").click()
    counts: list[int] = []
    done = page.get_by_text("Routing recorded while the model wrote")
    deadline = time.monotonic() + 60
    while not done.count() and time.monotonic() < deadline:
        count = page.evaluate(STREAMED)
        if count is not None and (not counts or counts[-1] != count):
            counts.append(count)
    assert len(counts) >= 3 and counts == sorted(counts), counts
    wait_for_charts(page)
    caption = done.first.inner_text()
    first, last = (int(n) for n in re.search(r"tokens (\d+)–(\d+) are its own", caption).groups())
    own = page.locator('[data-testid="stMain"] .routed-box .tok.own').count()
    assert 0 < own <= last - first + 1  # every own token with text is marked (a piece of a character has none)


def test_training_play_steps_through_the_checkpoints(server: str, page: Page) -> None:
    """The Training view in the browser: Play shows several checkpoints in turn (the step caption changes while
    the script runs, with no reload) and ends on the last one, whose text is coloured like any routed text."""
    from moe_core.series.store import load_series, series_folder

    last = load_series(series_folder("demo-mixtral")).steps[-1]
    page.goto(f"{server}/?view=training&step=0")
    wait_for_charts(page)
    caption = page.get_by_text(re.compile(r"^step [\d,]+ of [\d,]+$"))
    assert caption.inner_text() == f"step 0 of {last:,}"
    page.get_by_role("button", name="▶ Play").click()
    seen = set()
    deadline = time.time() + 60
    while time.time() < deadline and f"step {last:,} of" not in (text := caption.inner_text()):
        seen.add(text)
        time.sleep(0.05)
    assert caption.inner_text() == f"step {last:,} of {last:,}"
    assert len(seen - {f"step 0 of {last:,}"}) >= 3, seen  # frames in between were drawn, not just the end
    assert page.locator(".routed-box .tokens .tok").count() > 100
