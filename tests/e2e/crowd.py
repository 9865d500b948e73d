"""A class opening the app at once: N browser contexts each submit their own text, concurrently, in rounds.

Used by the concurrency test (bounded) and its benchmark. Each visitor's text carries a marker word of its
own, and a visitor counts as served only when its page shows its charts *and* its own marker in the routed
text: a session that showed another visitor's routing would fail, not pass.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from playwright.async_api import Page, async_playwright

from tests.e2e.browser import CHART, CHROMIUM, IDLE, PROMPT, VIEWPORT

TOKEN_TEXT = '() => [...document.querySelectorAll(".tokens .tok")].map(t => t.innerText).join("")'


@dataclass(frozen=True)
class Visit:
    visitor: int
    round: int
    seconds: float | None  # None: the page did not show its own charts in time
    error: str = ""


def visitor_text(visitor: int, round_: int, words: int = 160) -> str:
    """About 500 demo-model tokens, different for every visitor and round, with a unique marker word."""
    marker = f"visitor{visitor}round{round_}"
    body = " ".join(f"{marker} asks how expert {n % 8} routes token {n} of round {round_}." for n in range(words // 10))
    return f"{marker}: {body}"


async def _visit(page: Page, visitor: int, round_: int, timeout_s: float) -> Visit:
    text = visitor_text(visitor, round_)
    marker = f"visitor{visitor}round{round_}"
    start = time.monotonic()
    try:
        area = page.locator(PROMPT)
        await area.fill(text, timeout=timeout_s * 1000)  # a loaded machine draws the sidebar late
        await area.press("Control+Enter")
        deadline = start + timeout_s
        while time.monotonic() < deadline:
            idle = await page.evaluate(IDLE)
            exception = await page.locator('[data-testid="stException"]').count()
            if exception:
                return Visit(visitor, round_, None, await page.locator('[data-testid="stException"]').inner_text())
            if idle and await page.locator(CHART).count() and marker in await page.evaluate(TOKEN_TEXT):
                return Visit(visitor, round_, time.monotonic() - start)
            await asyncio.sleep(0.1)
        alerts = await page.locator('[data-testid="stAlert"]').all_inner_texts()
        return Visit(
            visitor, round_, None, "timed out" + (f"; the page says: {' | '.join(alerts)[:200]}" if alerts else "")
        )
    except Exception as error:  # a visit that broke is a result, not a crash of the whole run
        return Visit(visitor, round_, None, f"{type(error).__name__}: {error}"[:300])


async def _crowd(url: str, visitors: int, rounds: int, timeout_s: float) -> list[Visit]:
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `apt-get install -y chromium`")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            contexts = [await browser.new_context(viewport=VIEWPORT) for _ in range(visitors)]
            pages = [await context.new_page() for context in contexts]
            await asyncio.gather(*(page.goto(f"{url}/?view=routing") for page in pages))
            await asyncio.gather(*(page.wait_for_function(IDLE, timeout=timeout_s * 1000) for page in pages))
            visits: list[Visit] = []
            for round_ in range(rounds):
                visits += await asyncio.gather(*(_visit(p, v, round_, timeout_s) for v, p in enumerate(pages)))
            return visits
        finally:
            await browser.close()


def crowd(url: str, visitors: int, rounds: int, timeout_s: float = 120.0) -> list[Visit]:
    """Every visit of `visitors` concurrent sessions over `rounds` rounds (each round starts when all finished)."""
    return asyncio.run(_crowd(url, visitors, rounds, timeout_s))


def server_memory_mb(pid: int) -> float:
    """Resident memory of the app server process (Linux), to check it stays flat across rounds."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
