"""Compact traces (expert ids only, as engine dumps carry them) in every view: what needs only the experts is
drawn from them, and what needs scores or weights says so in one sentence instead of failing."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.view_registry import VIEWS
from moe_core.analyses.load import load_frame
from moe_core.traces.io import to_json_text
from moe_core.traces.synthetic import random_trace
from tests.app.conftest import run_app
from tests.app.test_views import charts, frame_with

pytestmark = pytest.mark.slow

FULL = random_trace([30, 20], num_experts=8, top_k=2, num_layers=3, seed=5)
EXPERTS_ONLY = replace(FULL, logits=None, probs=None, weights=None)


def _upload(routing):
    payload = to_json_text(routing).encode()
    return lambda at: at.file_uploader(key="upload").set_value(("trace.json", payload, "application/json"))


def _messages(at) -> list[str]:
    return [element.value for element in [*at.info, *at.caption]]


@pytest.mark.parametrize("view", VIEWS)
def test_every_view_opens_an_experts_only_trace(view: str) -> None:
    """No exception or error in any view; the gate view names what it lacks."""
    at = run_app({"view": view}, setup=_upload(EXPERTS_ONLY))
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    if view == "gates":
        assert "This trace has no router scores: the gate view needs them." in _messages(at)
    elif view == "compare":  # no model behind an upload: the view says what side B can be
        assert any("Another dtype needs the model" in info.value for info in at.info)
    else:
        assert at.get("vega_lite_chart"), view


def test_load_view_counts_the_experts_and_names_the_missing_losses() -> None:
    """The load chart's counts equal the analysis on the full trace (experts are all it needs), and the aux-loss
    columns the compact trace cannot give are named, not shown as NaN."""
    at = run_app({"view": "load"}, setup=_upload(EXPERTS_ONLY))
    drawn = frame_with(charts(at), "expert", "top1").sort_values(["layer", "expert"]).reset_index(drop=True)
    expected = load_frame(FULL).sort_values(["layer", "expert"]).reset_index(drop=True)
    assert drawn["top1"].tolist() == expected["top1"].tolist()
    assert any("no router scores or router logits: the aux and z-loss columns need them" in m for m in _messages(at))


def test_score_policy_on_a_trace_without_scores_says_what_it_needs() -> None:
    """The capacity view under the score policy cannot rank tokens without scores: one sentence, no traceback."""
    at = run_app({"view": "capacity", "policy": "score"}, setup=_upload(EXPERTS_ONLY))
    assert not at.exception
    assert "This trace has no router scores: the score policy needs them." in [i.value for i in at.info]
