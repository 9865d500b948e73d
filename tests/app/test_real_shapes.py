"""Every view on a DeepSeek-V3-shaped trace (61 layers, 256 experts, top-8, 4,096 tokens), through AppTest: no
error, and what the page sends stays small, aggregated or windowed, never the [L, T, E] scores.

A trace of that shape with its scores is 0.5 GB, ten times the upload limit, so the upload's parser is replaced
by one that hands back the trace built here: the page then runs exactly as for an uploaded file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

import moe_core.traces.io
from app.components import TEXT_WINDOW
from app.view_registry import VIEWS
from moe_core.traces.synthetic import random_trace
from moe_core.traces.types import RoutingTrace
from tests.app.conftest import page_html, run_app

pytestmark = pytest.mark.slow

CHART_BYTES = 1_000_000  # a chart's spec plus its Arrow data (the page's largest is the load heatmap's ~190 KB)
PAGE_TEXT_BYTES = 300_000  # the markdown of a view: a window of the routed text with its top-8 tooltips
SHAPE = (4096, 256, 8, 61)  # tokens, experts, top-k, MoE layers


@pytest.fixture(scope="module")
def deepseek() -> RoutingTrace:
    tokens, experts, top_k, layers = SHAPE
    return random_trace(tokens, num_experts=experts, top_k=top_k, num_layers=layers, scoring="sigmoid")


@pytest.fixture
def uploaded(deepseek: RoutingTrace, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any uploaded file opens as the DeepSeek-shaped trace."""
    monkeypatch.setattr(moe_core.traces.io, "load_trace_bytes", lambda data, name: deepseek)
    yield


def _upload(at) -> None:
    at.file_uploader(key="upload").set_value(("deepseek-v3.parquet", b"stand-in", "application/octet-stream"))


@pytest.mark.parametrize("view", VIEWS)
def test_every_view_draws_a_deepseek_shaped_trace_within_bounds(view: str, uploaded: None) -> None:
    """Each view draws its charts without an error; no chart carries more than CHART_BYTES (spec and data), and
    the page's text stays under PAGE_TEXT_BYTES."""
    at = run_app({"text": "hello", "view": view, "layer": "30", "vs": "upload"}, setup=_upload)
    if view == "compare":  # side B: the same trace again, through the view's own upload box
        at.file_uploader(key="compare_upload").set_value(("b.parquet", b"stand-in", "application/octet-stream"))
        at.run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    assert "256 experts, top-8" in at.caption[0].value and "61 MoE layers" in at.caption[0].value
    charts = at.get("vega_lite_chart")
    assert charts, view
    for chart in charts:
        size = len(chart.proto.spec) + sum(len(d.data.data) for d in chart.proto.datasets)
        assert size < CHART_BYTES, (view, chart.proto.spec[:200], size)
    assert len(page_html(at)) < PAGE_TEXT_BYTES


def _routed_token_numbers(at) -> list[int]:
    """The token numbers (#n in each span's tooltip) of the routed text drawn on the page."""
    box = next(m.value for m in at.markdown if 'class="routed-box' in str(m.value))
    return [int(n) for n in re.findall(r'class="tok [^"]*" title="#(\d+) ', box)]


@pytest.mark.parametrize(
    ("view", "key", "first"), [("routing", "text_start", 0), ("capacity", "drops_text_start", 4096 - TEXT_WINDOW)]
)
def test_long_routed_text_is_drawn_a_window_at_a_time(view: str, key: str, first: int, uploaded: None) -> None:
    """Past TEXT_WINDOW tokens the routed text draws one window: at first the text's start (the capacity view:
    its end, where drops pile up), then the one the slider picks, and the caption says which tokens of how many."""
    at = run_app({"text": "hello", "view": view, "layer": "30"}, setup=_upload)
    assert _routed_token_numbers(at) == list(range(first, first + TEXT_WINDOW))
    at.slider(key=key).set_value(1024).run()
    assert not at.exception, [e.value for e in at.exception]
    assert _routed_token_numbers(at) == list(range(1024, 1024 + TEXT_WINDOW))
    assert f"Tokens 1,024–{1024 + TEXT_WINDOW - 1:,} of 4,096." in [c.value for c in at.caption]


def test_a_window_start_beyond_a_shorter_text_is_brought_within_it(
    deepseek: RoutingTrace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The text window and the grid window at the end of a 4,096-token trace, then a 1,000-token one: no
    exception (Streamlit raises on a slider value above its max), both windows at the shorter text's end."""
    shorter = random_trace(1000, num_experts=8, top_k=2, num_layers=4)
    traces = {"long.parquet": deepseek, "short.parquet": shorter}
    monkeypatch.setattr(moe_core.traces.io, "load_trace_bytes", lambda data, name: traces[name])
    upload = lambda name: lambda at: at.file_uploader(key="upload").set_value((name, name.encode(), "x"))  # noqa: E731
    at = run_app({"view": "routing"}, setup=upload("long.parquet"))
    at.slider(key="text_start").set_value(4096 - TEXT_WINDOW)
    at.slider(key="grid_start").set_value(4096 - 64).run()
    assert _routed_token_numbers(at)[0] == 4096 - TEXT_WINDOW
    upload("short.parquet")(at)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert _routed_token_numbers(at) == list(range(1000 - TEXT_WINDOW, 1000))
    assert at.slider(key="grid_start").value == 1000 - 64
