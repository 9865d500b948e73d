"""The capacity lab through AppTest: the honest drop-towards-the-end charts and the capacity-bound forward,
each chart's data checked against moe_core computed here."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from app.loading import presets
from moe_core.analyses.drops import POOLED, delta_loss_curve
from moe_core.batches import WINDOW_TOKENS
from moe_core.capacity.forward import counterfactual
from moe_core.models import load_model
from tests.app.conftest import page_html, run_app
from tests.app.test_views import _clean, charts

pytestmark = pytest.mark.slow


def _frames_with(at, *columns: str) -> list[pd.DataFrame]:
    return [f for _, frames in charts(at) for f in frames if set(columns) <= set(f.columns)]


def test_equal_length_batch_curve_rises_per_domain_with_equal_slots_per_bin() -> None:
    """At CF 0.75 the pooled line and every domain's line drop more in the last quarter than in the first, and
    every position bin holds the same number of slots (equal-length windows)."""
    at = run_app({"view": "capacity", "cf": "0.75"})
    _clean(at)
    frame = _frames_with(at, "domain", "slot_drop_rate", "slots")[0]
    assert set(frame["domain"]) == {POOLED, "arithmetic", "code", "german", "markup", "prose"}
    for domain, rows in frame.groupby("domain"):
        rates = rows.sort_values("start")["slot_drop_rate"].to_numpy()
        quarter = len(rates) // 4
        assert rates[-quarter:].mean() > rates[:quarter].mean(), domain
    pooled = frame[frame["domain"] == POOLED].sort_values("start")
    assert pooled["end"].max() == WINDOW_TOKENS - 1
    full_bins = pooled[pooled["end"] < WINDOW_TOKENS - 1]
    assert full_bins["slots"].nunique() == 1  # the same texts in every (complete) bin


def test_controls_show_the_serving_order_decides() -> None:
    """Reversed serving puts the drops at the start; shuffled routing keeps the position curve's shape."""
    at = run_app({"view": "capacity", "cf": "0.75"})
    frame = _frames_with(at, "control", "slot_drop_rate")[0]
    curve = {name: rows.sort_values("start")["slot_drop_rate"].to_numpy() for name, rows in frame.groupby("control")}
    position = curve["position order"]
    reversed_ = curve["position order, served last-to-first"]
    shuffled = curve["position order, routing shuffled within each text"]
    assert position[-4:].mean() > position[:4].mean() + 0.2
    assert reversed_[:4].mean() > reversed_[-4:].mean() + 0.2
    assert np.abs(shuffled - position).mean() < 0.05
    sweep = _frames_with(at, "capacity_factor", "slot_drop_rate")[0]
    means = sweep.groupby("capacity_factor")["slot_drop_rate"].mean()
    assert list(means.index) == [0.75, 1.0, 1.25, 2.0] and means.is_monotonic_decreasing


def test_capacity_bound_forward_shows_the_cost_of_drops() -> None:
    """The toggle runs the model capacity-bound: the Δloss-by-position chart equals moe_core's counterfactual
    of the same text, the marks say where they come from, and the end-of-text sentence is there."""
    at = run_app({"view": "capacity", "cf": "0.75"}, setup=lambda at: at.toggle(key="capped_run").set_value(True))
    _clean(at)
    loaded = load_model()
    expected = counterfactual(loaded.model, loaded.tokenizer, (next(iter(presets().values())),), 0.75)
    curve = _frames_with(at, "mean_delta_loss")[0]
    reference = delta_loss_curve(expected.tokens.position, expected.delta_loss)
    np.testing.assert_allclose(curve["mean_delta_loss"], reference["mean_delta_loss"], rtol=1e-4, atol=1e-6)
    labels = [m.label for m in at.metric]
    assert "mean Δloss" in labels and "top-1 prediction changed" in labels
    assert any("capacity-bound forward" in str(c.value) for c in at.caption)
    assert "last quarter" in page_html(at)
    assert "Δloss" in page_html(at)  # tooltips and legend of the shaded text


def test_batch_group_shows_which_texts_of_the_batch_lose() -> None:
    at = run_app({"view": "capacity", "cf": "1.0", "group": "batch"})
    _clean(at)
    bars = _frames_with(at, "sequence", "slot_drop_rate")[0]
    rates = bars.sort_values("sequence")["slot_drop_rate"].to_numpy()
    assert rates[-4:].mean() > rates[:4].mean()


def test_step_through_starts_at_the_first_drop() -> None:
    at = run_app({"view": "capacity", "cf": "0.75"})
    slider = at.slider(key="capacity_step")
    warning = next(w.value for w in at.warning if "First drop at slot" in w.value)
    first = int(warning.split("First drop at slot ")[1].split(":")[0])
    assert slider.value == first < slider.max


def _pooled_rate(slots: Any) -> float:
    """Dropped over assigned slots: what a slot-weighted mean of a drop curve's bins comes to."""
    return float(slots.dropped.sum() / slots.assigned.sum())


def test_per_text_and_per_batch_grouping_side_by_side() -> None:
    """Both groupings are drawn by default; each line's slot-weighted rate is the simulation's own, and at CF 1.0
    a text's own budget drops far more than one budget over the mixed batch (as the demo model was trained)."""
    from moe_core.analyses.capacity import LayerSlots
    from moe_core.analyses.drops import GROUPINGS
    from moe_core.batches import trace_equal_windows
    from moe_core.capacity.simulate import simulate_capacity

    at = run_app({"view": "capacity", "cf": "1.0"})
    _clean(at)
    frame = _frames_with(at, "grouping", "slot_drop_rate", "slots")[0]
    loaded = load_model()
    batch = trace_equal_windows(loaded.model, loaded.tokenizer).trace
    rates = {}
    for group, label in GROUPINGS.items():
        rows = frame[frame["grouping"] == label]
        shown = float((rows["slot_drop_rate"] * rows["slots"]).sum() / rows["slots"].sum())
        slots = LayerSlots.simulated(batch, simulate_capacity(batch, 1.0, group=group), 0)
        assert shown == pytest.approx(_pooled_rate(slots), abs=1e-6)
        rates[group] = shown
    assert rates["sequence"] > 2 * rates["batch"]


def test_windows_are_interleaved_by_domain() -> None:
    """Windows taken in turn by domain: with one budget for the batch, no domain waits at its end."""
    from moe_core.batches import DomainBatch, equal_windows, interleaved

    mixed = interleaved(DomainBatch(("a1", "a2", "b1", "c1", "c2"), ("a", "a", "b", "c", "c")))
    assert mixed.texts == ("a1", "b1", "c1", "a2", "c2") and mixed.domains == ("a", "b", "c", "a", "c")
    domains = equal_windows(load_model().tokenizer).domains
    count = len(set(domains))
    assert len(set(domains[:count])) == count  # the first round holds one window of every domain


@pytest.mark.parametrize("layer_row", [0, 1])
def test_capacity_bound_windows_draw_the_cascade_beside_the_static_curve(layer_row: int) -> None:
    """With the toggle on, the windows also run capacity-bound: the forward's line is that pass's own drops at
    the layer (computed here by moe_core), the static line the simulation's; at the first layer they are the same
    (nothing was dropped before it), past it they differ."""
    from moe_core.analyses.capacity import LayerSlots
    from moe_core.analyses.drops import CASCADE
    from moe_core.batches import trace_equal_windows

    loaded = load_model()
    lab = trace_equal_windows(loaded.model, loaded.tokenizer)
    moe_layer = lab.trace.model.moe_layers[layer_row]
    at = run_app({"view": "capacity", "cf": "1.0", "layer": str(moe_layer)},
                 setup=lambda at: at.toggle(key="capped_run").set_value(True))  # fmt: skip
    _clean(at)
    frame = _frames_with(at, "source", "slot_drop_rate", "slots")[0]
    expected = counterfactual(loaded.model, loaded.tokenizer, lab.windows.texts, 1.0, max_tokens=WINDOW_TOKENS)
    capped = expected.layers[layer_row]
    forward = frame[frame["source"] == CASCADE["forward"]]
    static = frame[frame["source"] == CASCADE["static"]]
    shown = float((forward["slot_drop_rate"] * forward["slots"]).sum() / forward["slots"].sum())
    assert shown == pytest.approx(_pooled_rate(LayerSlots(capped.experts, capped.kept, 8)), abs=1e-6)
    same = np.allclose(forward["slot_drop_rate"].to_numpy(), static["slot_drop_rate"].to_numpy())
    assert same == (layer_row == 0)
    assert any("keep the plain pass's routing" in str(c.value) for c in at.caption)
