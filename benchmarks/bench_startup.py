"""Start-up as a visitor sees it: server launch to first chart, and a new session on a warm server.

    python -m benchmarks.bench_startup

Launches the app as README says (`python -m app`, which loads the bundled demo model at server start) and drives
Debian's chromium. Prints, in seconds: server launch until
its health check answers; the first page open until the title shows and until the first chart is drawn; the
expert load and capacity views' first visits once the background warm-up has traced the built-in batches; then
FRESH_SESSIONS new sessions on the warm server until their first chart, each once the machine is idle (browser and
server share its cores, and a page reported drawn may paint for a second more), alternating with new sessions of
Streamlit's own floor (benchmarks/floor_page.py: a title and one Altair bar chart, served by the same Streamlit at
the same moment). Target: the app's median within FLOOR_TARGET times the floor's, a ratio taken in one run (an
absolute time says more about these shared machines than about the app).
"""

from __future__ import annotations

import statistics
import sys
import time

from playwright.sync_api import Browser

from benchmarks.bench_browser import WARM_UP_WAIT_S, charts_drawn
from benchmarks.timing import wait_until_idle
from tests.e2e.browser import VIEWPORT, chromium, running_app, wait_for_charts

FLOOR_TARGET = 1.3  # a new visitor's first page against Streamlit's floor (issue 20)
FRESH_SESSIONS = 5  # new sessions on each warm server, alternating app and floor; the medians are judged
FLOOR_PAGE = "benchmarks/floor_page.py"


def first_chart_s(browser: Browser, url: str) -> float:
    """A new session on an idle machine: opening `url` until the script is idle and its first chart drawn."""
    wait_until_idle()  # the last page may still be painting: a new visitor comes to an idle server
    fresh = browser.new_page(viewport=VIEWPORT)
    try:
        start = time.perf_counter()
        fresh.goto(url)
        wait_for_charts(fresh)
        return time.perf_counter() - start
    finally:
        fresh.close()


def main() -> int:
    launched = time.perf_counter()
    with running_app() as (url, _pid), chromium() as browser:
        healthy = time.perf_counter() - launched
        page = browser.new_page(viewport=VIEWPORT)
        start = time.perf_counter()
        page.goto(f"{url}/")
        page.wait_for_selector("h1", timeout=120_000)
        title = time.perf_counter() - start
        wait_for_charts(page, timeout_ms=120_000)
        first_chart = time.perf_counter() - start
        launch_to_chart = time.perf_counter() - launched
        time.sleep(WARM_UP_WAIT_S)
        views = {}
        for view in ("load", "capacity"):
            start = time.perf_counter()
            page.goto(f"{url}/?view={view}")
            charts_drawn(page)
            views[view] = time.perf_counter() - start
        with running_app(script=FLOOR_PAGE) as (floor_url, _floor_pid):
            first_chart_s(browser, f"{floor_url}/")  # the floor server's first page pays for its own imports
            fresh_sessions, floor_sessions = [], []
            for _ in range(FRESH_SESSIONS):
                fresh_sessions.append(first_chart_s(browser, f"{url}/"))
                floor_sessions.append(first_chart_s(browser, f"{floor_url}/"))
        warm, floor = statistics.median(fresh_sessions), statistics.median(floor_sessions)
    print(f"server launch to health check: {healthy:.2f} s")
    print(f"first page: title after {title:.2f} s, first chart after {first_chart:.2f} s "
          f"({launch_to_chart:.2f} s after the server was launched)")  # fmt: skip
    print("first visits after the warm-up: " + ", ".join(f"{v} {t:.2f} s" for v, t in views.items()))
    ratio = warm / floor
    ok = ratio <= FLOOR_TARGET
    print(f"new session on a warm, idle server, first chart: median {warm:.2f} s of "
          f"{', '.join(f'{t:.2f}' for t in fresh_sessions)}")  # fmt: skip
    print(f"Streamlit's floor (a title and one bar chart), alternating: median {floor:.2f} s of "
          f"{', '.join(f'{t:.2f}' for t in floor_sessions)}")  # fmt: skip
    print(f"app / floor: {ratio:.2f} (target <= {FLOOR_TARGET:g}) {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
