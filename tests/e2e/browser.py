"""Running the app for real and driving Debian's chromium with playwright (never `playwright install`).

Shared by the browser tests, the browser benchmark and the README screenshot script.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Browser, Page, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHART = '[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg.marks'
IDLE = "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
PROMPT = '[data-testid="stSidebar"] textarea'
VIEWPORT = {"width": 1440, "height": 1000}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def app_server(timeout: float = 60.0) -> Iterator[str]:
    """Start the app as README says (`python -m app`: the model loads at server start) on a free loopback port;
    always stopped on exit. Yields its URL."""
    with running_app(timeout) as (url, _pid):
        yield url


@contextlib.contextmanager
def running_app(timeout: float = 60.0, script: str | None = None) -> Iterator[tuple[str, int]]:
    """app_server, yielding (URL, the server's process id) for checks on the server process itself. `script`:
    serve that Streamlit script instead (`streamlit run`), with the same server options."""
    port = free_port()
    launcher = ["app"] if script is None else ["streamlit", "run", script]
    command = [
        sys.executable, "-m", *launcher, "--server.headless", "true",
        "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "viewer",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                    if answer.read() == b"ok":
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the app did not start: {process.stderr.read().decode()[-2000:]}") from None
                time.sleep(0.3)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `apt-get install -y chromium` (scripts/test.sh does this)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--disable-background-networking", "--disable-component-update", "--no-first-run"],
        )
        try:
            yield browser
        finally:
            browser.close()


def wait_for_charts(page: Page, timeout_ms: float = 60_000) -> None:
    """Until the script has finished and at least one chart has been drawn."""
    page.wait_for_function(IDLE, timeout=timeout_ms)
    page.wait_for_selector(CHART, timeout=timeout_ms)
    page.wait_for_function(IDLE, timeout=timeout_ms)


UPLOAD_MENU = "…or open a saved trace or engine dump"  # the sidebar popover holding the upload box


def click_download(page: Page, kind: str = "PNG") -> None:
    """Open the first chart's Download menu (a popover, mounted when opened) and click its PNG or SVG button."""
    page.locator('[data-testid="stMain"]').get_by_role("button", name="Download", exact=True).first.click()
    page.get_by_role("button", name=f"Download {kind}").first.click()


def open_upload_box(page: Page) -> None:
    """Open the sidebar's upload popover, so its file input is in the page."""
    page.locator('[data-testid="stSidebar"]').get_by_role("button", name=UPLOAD_MENU).click()
    page.wait_for_selector('[data-testid="stSidebar"] input[type="file"], [data-testid="stPopoverBody"] '
                           'input[type="file"]', state="attached")  # fmt: skip


def submit_prompt(page: Page, text: str) -> None:
    """Type into the sidebar text area and submit it (Ctrl+Enter), as a person would."""
    area = page.locator(PROMPT)
    area.fill(text)
    area.press("Control+Enter")
