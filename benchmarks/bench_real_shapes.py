"""Every view of the app on a DeepSeek-V3-shaped trace, in a real browser: upload, then click to each view.

    python -m benchmarks.bench_real_shapes [--tokens 4096]

DeepSeek-V3 routes 4,096 tokens through 61 MoE layers of 256 experts, top-8. Its full trace ([L, T, E] logits
and scores, 0.5 GB) is far over the upload limit, and an engine dump holds what it routed anyway, so the main
trace is compact: experts and gate weights (12 MB of Parquet). The gate view needs the scores, so a second
trace of the same shape keeps them for as many tokens as fit the limit (256).

Starts the app on a free loopback port and drives Debian's chromium (playwright): uploads each trace through
the sidebar's upload box, times upload to the routing view's charts drawn, then a click on each other view
until its charts are drawn (the script idle, every chart's canvas or SVG there). Also records the largest
websocket message the page received for each view: the payload of its largest chart or text. Prints both per
view; target: each view under 3 s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from playwright.sync_api import Page

from app.view_registry import VIEWS
from benchmarks.bench_browser import CAPTION, WARM_UP_WAIT_S, caption, charts_drawn, wait_or_fail
from moe_core.traces.io import MAX_TRACE_MB, save_trace
from moe_core.traces.synthetic import random_trace
from moe_core.traces.types import RoutingTrace
from tests.e2e.browser import IDLE, VIEWPORT, app_server, chromium, open_upload_box, wait_for_charts

TARGET_S = 3.0
SHAPE = {"num_experts": 256, "top_k": 8, "num_layers": 61, "scoring": "sigmoid"}  # DeepSeek-V3's routing
SCORED_TOKENS = 256  # the longest DeepSeek-V3-shaped trace with its [L, T, E] arrays under the upload limit
UPLOAD = 'input[type="file"]'  # in the sidebar's upload popover, once open_upload_box has opened it
CHART_FRAME = '[data-testid="stVegaLiteChart"]'
VIEW_BUTTONS = '[data-testid="stMain"] [data-testid="stButtonGroup"] button[role="radio"]'


def traces(tokens: int) -> dict[str, RoutingTrace]:
    """The compact trace at the full shape, and one with every array at SCORED_TOKENS tokens."""
    full = random_trace(tokens, **SHAPE)
    return {
        f"compact (experts + weights), {tokens:,} tokens": replace(full, logits=None, probs=None),
        f"with scores, {SCORED_TOKENS} tokens": random_trace(SCORED_TOKENS, seed=1, **SHAPE),
    }


class Frames:
    """Sizes of the websocket messages the page receives (Streamlit's deltas: one per chart or text block)."""

    def __init__(self, page: Page) -> None:
        self.sizes: list[int] = []
        page.on("websocket", lambda socket: socket.on("framereceived", self._received))

    def _received(self, payload: bytes | str) -> None:
        self.sizes.append(len(payload))

    def mark(self) -> int:
        return len(self.sizes)

    def largest_since(self, mark: int) -> int:
        return max(self.sizes[mark:], default=0)


def upload(page: Page, path: Path) -> None:
    """Open a trace file through the sidebar's upload box, as a person would."""
    before = caption(page)
    open_upload_box(page)
    page.locator(UPLOAD).set_input_files(str(path))
    wait_or_fail(page, f"() => {CAPTION} !== {before!r}")


EVERY_CHART_DRAWN = (
    "() => [...document.querySelectorAll('[data-testid=\"stVegaLiteChart\"]')]"
    ".every(c => c.querySelector('canvas, svg.marks'))"
)


def drawn(page: Page) -> int:
    """Until the script is idle and every chart on the page is drawn; returns how many charts there are (the gate
    view of a compact trace has none: it says in a sentence that it needs the scores)."""
    wait_or_fail(page, IDLE)
    wait_or_fail(page, EVERY_CHART_DRAWN)
    return page.locator(CHART_FRAME).count()


def time_views(page: Page, frames: Frames, path: Path) -> dict[str, tuple[float, int, int]]:
    """(seconds until drawn, largest message in bytes, charts) per view: upload for the first, a click after."""
    results = {}
    mark, start = frames.mark(), time.perf_counter()
    upload(page, path)
    charts_drawn(page)
    results[VIEWS[0]] = (time.perf_counter() - start, frames.largest_since(mark), drawn(page))
    for index, view in enumerate(VIEWS[1:], start=1):
        mark, start = frames.mark(), time.perf_counter()
        page.locator(VIEW_BUTTONS).nth(index).click()
        wait_or_fail(page, f"() => location.search.includes('view={view}')")  # written at the end of the run
        charts = drawn(page)
        results[view] = (time.perf_counter() - start, frames.largest_since(mark), charts)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    args = parser.parse_args()
    measured: dict[str, dict[str, tuple[float, int, int]]] = {}
    with tempfile.TemporaryDirectory() as folder, app_server() as url, chromium() as browser:
        files = {}
        for name, routing in traces(args.tokens).items():
            files[name] = Path(folder) / f"{len(files)}.parquet"
            save_trace(routing, files[name])
            size = files[name].stat().st_size / 2**20
            print(f"{name}: {size:.1f} MB of Parquet (limit {MAX_TRACE_MB} MB)", flush=True)
        for name, path in files.items():
            page = browser.new_page(viewport=VIEWPORT)
            frames = Frames(page)
            page.goto(f"{url}/")
            wait_for_charts(page, timeout_ms=300_000)
            time.sleep(WARM_UP_WAIT_S)
            measured[name] = time_views(page, frames, path)
            print(f"{name}: {caption(page)}", flush=True)
            page.close()
    print("\nupload (routing) or click (the others) to every chart drawn: seconds, charts, largest message received")
    names = list(measured)
    print(f"{'view':<10}" + "".join(f"  {n[:40]:>40}" for n in names))
    for view in VIEWS:
        cells = [measured[n][view] for n in names]
        print(f"{view:<10}" + "".join(f"  {f'{s:6.2f} s {c:3d} charts {b / 1024:7.0f} KB':>40}" for s, b, c in cells))
    slowest = max((seconds, view, name) for name in names for view, (seconds, _, _) in measured[name].items())
    verdict = "PASS" if slowest[0] < TARGET_S else "ABOVE TARGET"
    print(f"slowest: {slowest[1]} ({slowest[2]}) {slowest[0]:.2f} s (target < {TARGET_S:g} s per view) {verdict}")


if __name__ == "__main__":
    main()
