"""Presentation mode in a real browser at projector sizes: the control bar on the first screen, nothing cut short.

Screenshots of every view at both sizes are saved under pytest's temporary folder, in `artefacts/`.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import Browser, Page

from app.view_registry import VIEWS
from tests.e2e.browser import click_download, wait_for_charts

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SIZES = ((1280, 720), (1920, 1080))
TEXT = "A teacher projects this page: the router sends every token to two of eight experts, layer by layer."
# Buttons wider inside than out, any element cut with an ellipsis, and chart text Vega cut with "…".
CUT_SHORT = """() => {
  const main = document.querySelector('[data-testid="stMain"]');
  const cut = [...main.querySelectorAll('*')].filter(e => e.clientWidth > 0 && e.scrollWidth > e.clientWidth
      && (e.tagName === 'BUTTON' || getComputedStyle(e).textOverflow === 'ellipsis'));
  const charts = [...main.querySelectorAll('[data-testid="stVegaLiteChart"] svg text')]
      .filter(t => t.textContent.includes('…'));
  return [...cut, ...charts].map(e => `${e.tagName}: ${e.textContent.slice(0, 50)}`);
}"""
BAR_CONTROLS = ".st-key-control-bar [data-testid='stSlider'], .st-key-control-bar [data-testid='stRadio']"


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artefacts")


def _open(browser: Browser, server: str, size: tuple[int, int], view: str) -> Page:
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    page.goto(f"{server}/?present=1&view={view}&text={quote(TEXT)}")
    wait_for_charts(page)
    page.wait_for_timeout(500)  # Vega lays out its text after the chart element appears
    return page


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_nothing_is_cut_short(server: str, browser: Browser, artefacts: Path, size: tuple[int, int]) -> None:
    """In every view, at 1280×720 and 1920×1080, no button, label or chart text is truncated; screenshots saved."""
    for view in VIEWS:
        page = _open(browser, server, size, view)
        try:
            page.screenshot(path=artefacts / f"presentation-{view}-{size[0]}.png")
            cut = page.evaluate(CUT_SHORT)
            for _ in range(20):  # under load Vega may still be laying out its text: wait (up to 5 s) for it to settle
                if not cut:
                    break
                page.wait_for_timeout(250)
                cut = page.evaluate(CUT_SHORT)
            assert cut == [], (view, size)
            assert page.locator('[data-testid="stMain"] button').count() > 0
        finally:
            page.close()


BAR_PARTS = ".st-key-control-bar [data-testid='stButtonGroup'], " + BAR_CONTROLS + ", .st-key-exit_present"
# Where the view's main chart, or its routed text, begins: the page's first chart or text box.
MAIN_CONTENT = """() => {
  const first = document.querySelector('[data-testid="stMain"]')
      .querySelector('[data-testid="stVegaLiteChart"], .routed-box');
  return first ? first.getBoundingClientRect().top : null;
}"""
SEEN_PX = 60  # of the main chart or text at least this much shows on the first screen (a chart's title row)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize(("view", "controls"), [("routing", 1), ("capacity", 3)])
def test_control_bar_is_one_row_on_the_first_screen(server: str, browser: Browser, size: tuple[int, int],
                                                    view: str, controls: int) -> None:  # fmt: skip
    """The bar holds the view picker, the layer (and on the capacity view capacity factor and order) and exit, side
    by side in one row, all on the first screen; the sidebar is hidden."""
    page = _open(browser, server, size, view)
    try:
        assert page.locator(BAR_CONTROLS).count() == controls
        parts = page.locator(BAR_PARTS)
        boxes = [parts.nth(index).bounding_box() for index in range(parts.count())]
        assert len(boxes) == controls + 2 and all(box is not None for box in boxes)
        for box in boxes:
            assert box["y"] + box["height"] <= size[1] and box["x"] + box["width"] <= size[0]
        bottom_first = min(box["y"] + box["height"] for box in boxes)
        assert all(box["y"] < bottom_first for box in boxes), boxes  # each starts above the lowest one ends: one row
        assert not page.locator('[data-testid="stSidebar"]').is_visible()
    finally:
        page.close()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_every_views_main_chart_starts_on_the_first_screen(server: str, browser: Browser,
                                                           size: tuple[int, int]) -> None:  # fmt: skip
    """One-line header, one-row bar, one sentence of what to notice: the view's first chart (or the routed text)
    begins high enough on a 1280×720 or 1920×1080 screen that its title row and more are seen without scrolling."""
    for view in VIEWS:
        page = _open(browser, server, size, view)
        try:
            top = page.evaluate(MAIN_CONTENT)
            assert top is not None and top <= size[1] - SEEN_PX, (view, size, top)
            assert not page.locator("h1").count()  # the title is in the header line
        finally:
            page.close()


def test_moving_the_bar_layer_redraws_the_view(server: str, browser: Browser) -> None:
    """A teacher presses → on the bar's layer slider: the routed text's heading follows, still in the mode."""
    page = _open(browser, server, SIZES[0], "routing")
    try:
        page.locator(".st-key-control-bar [data-testid='stSlider'] input").first.press("ArrowRight")
        page.wait_for_function("() => document.body.innerText.includes('each token at layer 1')", timeout=60_000)
        assert page.locator(".st-key-control-bar").is_visible()
    finally:
        page.close()


def test_downloaded_chart_is_named_after_its_settings(server: str, browser: Browser) -> None:
    """Download PNG in the mode gives a file named after the chart, model, layer, CF and policy."""
    page = browser.new_page(viewport={"width": 1280, "height": 720}, accept_downloads=True)
    try:
        page.goto(f"{server}/?present=1&view=load&layer=2&cf=1.5&policy=score&text={quote(TEXT)}")
        wait_for_charts(page)
        with page.expect_download(timeout=60_000) as download:
            click_download(page, "PNG")
        # Which chart's button comes first in the page can vary while later charts are still drawing; every chart's
        # file name must carry the same settings stamp.
        name = download.value.suggested_filename
        assert re.fullmatch(r"[a-z0-9-]+_demo-mixtral_layer2_cf1\.50_score\.png", name), name
    finally:
        page.close()
