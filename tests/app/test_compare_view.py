"""The Compare view (issue 16) through AppTest: side B another dtype, an uploaded dump, or a refused file; every
number on the page equals moe_core's compare() of the same two traces computed here."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.charts.compare import MEASURES
from app.loading import presets
from moe_core.analyses.compare import CATEGORIES, FIRST_CHANGED, SET_CHANGED, compare
from moe_core.capture.record import retrace, trace
from moe_core.models import load_model
from tests.app.conftest import page_html, run_app
from tests.app.test_views import _clean, charts, frame_with

pytestmark = pytest.mark.slow
TEXT = "Guten Tag! def f(x): return x + 1. The cat sat on the mat; 12 + 30 = 42."


@pytest.fixture(scope="module")
def page_trace():
    loaded = load_model()
    return trace(loaded.model, loaded.tokenizer, (TEXT,), name="demo-mixtral")


def test_another_dtype_is_compared_on_the_same_tokens(page_trace) -> None:
    """vs=dtype&vs_dtype=float16: the page's agreement line and metrics are compare() of the page's trace and
    the fp16 model's run of its token ids."""
    at = run_app({"view": "compare", "text": TEXT, "vs": "dtype", "vs_dtype": "float16"})
    _clean(at)
    half = load_model(dtype="float16")
    expected = compare(page_trace, retrace(half.model, half.tokenizer, page_trace, name="fp16"))
    line = frame_with(charts(at), "layer", "measure", "value")
    shown = line.pivot(index="layer", columns="measure", values="value")
    np.testing.assert_allclose(shown[MEASURES["set_agreement"]], expected.layers["set_agreement"], atol=1e-9)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["tokens compared"] == f"{expected.tokens:,}"
    assert metrics["changed at some layer"] == f"{expected.tokens_changed_any_layer:.1%}"
    assert at.query_params["vs_dtype"] in ("float16", ["float16"])  # the link keeps side B


def _dump_with_changes(routing) -> bytes:
    """A vLLM response of the page's own routing with token 3's slots swapped at layer 1 and token 5's second
    expert replaced at layer 2: one first-choice change, one set change."""
    rows = routing.experts.transpose(1, 0, 2).copy()
    rows[3, 1] = rows[3, 1, ::-1]
    rows[5, 2, 1] = next(e for e in range(8) if e not in rows[5, 2])
    return json.dumps(
        {"prompt_token_ids": routing.tokens.ids.tolist(), "prompt_routed_experts": rows.tolist()}
    ).encode()


@pytest.mark.parametrize("layer", [1, 2])
def test_an_uploaded_dump_marks_the_tokens_that_changed(page_trace, layer: int) -> None:
    def upload(at):
        at.radio(key="compare_with").set_value("upload")
        at.run()
        at.file_uploader(key="compare_upload").set_value(("response.json", _dump_with_changes(page_trace),
                                                          "application/json"))  # fmt: skip

    at = run_app({"view": "compare", "text": TEXT, "layer": str(layer)}, setup=upload)
    _clean(at)
    html = page_html(at)
    changed = {1: FIRST_CHANGED, 2: SET_CHANGED}[layer]
    assert html.count(f'class="tok c{changed}"') == 1 and f'title="{CATEGORIES[changed]}"' in html
    other = {1: SET_CHANGED, 2: FIRST_CHANGED}[layer]
    assert f'class="tok c{other}"' not in html


def test_a_dump_of_other_tokens_is_one_sentence(page_trace) -> None:
    other = page_trace.tokens.ids[::-1].tolist()
    rows = page_trace.experts.transpose(1, 0, 2).tolist()
    data = json.dumps({"prompt_token_ids": other, "prompt_routed_experts": rows}).encode()

    def upload(at):
        at.radio(key="compare_with").set_value("upload")
        at.run()
        at.file_uploader(key="compare_upload").set_value(("response.json", data, "application/json"))

    at = run_app({"view": "compare", "text": TEXT}, setup=upload)
    assert not at.exception
    assert len(at.error) == 1 and "not the same tokens" in at.error[0].value.replace("\\", "")


def test_the_default_text_in_bf16() -> None:
    """The page as a first visitor opens it (default text, bf16 side B): drawn, both charts, no error."""
    at = run_app({"view": "compare", "text": next(iter(presets().values()))})
    _clean(at)
    assert len(at.get("vega_lite_chart")) == 2


def test_a_views_own_settings_survive_other_views() -> None:
    """The gate view's token and the Compare view's side B are widgets of one view: two runs on other views
    made Streamlit forget them and the next run raised KeyError. They are kept, and the link still has them."""
    at = run_app({"view": "gates", "token": "3"})
    at.session_state["compare_dtype"] = "float16"
    for view in ("routing", "load", "compare", "flow", "capacity"):
        at.session_state["view"] = view
        at.run()
        _clean(at)
    assert at.session_state["token"] == 3 and at.session_state["compare_dtype"] == "float16"
