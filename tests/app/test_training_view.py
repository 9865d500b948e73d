"""The Training view (issue 16 §2) through AppTest, on the demo model's shipped series: its curves are the
series' own agreement with the final step (counted here with numpy), the text is the chosen snapshot's first
choices, a link's step and text are kept (or moved to the nearest there is), and a model without a series is
not offered the view."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from moe_core.series.store import load_series, series_folder
from tests.app.conftest import page_html, run_app
from tests.app.test_views import _clean, charts, frame_with

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def series():
    return load_series(series_folder("demo-mixtral"))


def test_saturation_curves_are_the_share_of_tokens_on_their_final_first_choice(series) -> None:
    at = run_app({"view": "training"})
    _clean(at)
    curve = frame_with(charts(at), "step", "layer", "top1_match_final")
    final = series.traces[-1].experts
    for row, layer in enumerate(series.traces[-1].model.moe_layers):
        expected = [float(np.mean(t.experts[row, :, 0] == final[row, :, 0])) for t in series.traces]
        shown = curve[curve["layer"] == layer].sort_values("step")
        assert shown["step"].tolist() == list(series.steps)
        np.testing.assert_allclose(shown["top1_match_final"], expected, atol=1e-9)
    notice = next(m.value for m in at.markdown if 'class="notice"' in m.value)
    assert "OpenMoE" in notice and "%" in notice  # the sentence is worded from the series' numbers


def test_the_text_shows_the_chosen_snapshots_first_choices_and_the_link_keeps_them(series) -> None:
    """step=150 is no checkpoint: the nearest (140) is shown; stext=2 is the third text (German); every coloured
    span's class is that snapshot's first choice at layer 1 for the German tokens, in order."""
    at = run_app({"view": "training", "layer": "1", "step": "150", "stext": "2"})
    _clean(at)
    step = at.select_slider(key="series_step").value
    assert step == min(series.steps, key=lambda s: (abs(s - 150), s))
    routing = series.traces[series.steps.index(step)]
    rows = routing.tokens.sequence == 2
    expected = [e for e, text in zip(routing.experts[1, rows, 0], np.asarray(routing.tokens.text)[rows],
                                     strict=True) if text]  # fmt: skip
    boxes = page_html(at).split('class="routed-box')[1:]
    assert len(boxes) == 1  # the one text of the view
    shown = [int(x) for x in re.findall(r'class="tok x(\d+)', boxes[0])]
    assert shown == [int(e) for e in expected]
    assert at.query_params["step"] in (str(step), [str(step)]) and at.query_params["stext"] in ("2", ["2"])


def test_a_model_without_a_series_is_not_offered_the_view(tiny_model_dir: Path) -> None:
    at = run_app({"model": str(tiny_model_dir), "view": "training", "text": "the cat sat"})
    _clean(at)
    assert any("no Training view" in w.value for w in at.warning)
    assert at.session_state["view"] == "routing"
    assert "training" not in at.get("button_group")[0].proto.options.__repr__().lower()


def test_a_damaged_series_is_said_in_one_sentence(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A model folder whose series.json is not a manifest: the view is offered, says so, and raises nothing."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "series").mkdir()
    (model / "series" / "series.json").write_text("{not json")
    at = run_app({"model": str(model), "view": "training", "text": "the cat sat"})
    _clean(at)
    assert any("training series cannot be read" in w.value for w in at.warning)
