"""Every view, through AppTest: what its charts encode and the rows they got, against moe_core computed here."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow.ipc as ipc
import pytest

from app.loading import presets
from app.palette import COLOURED_EXPERTS, OTHER_COLOR
from app.view_registry import VIEWS
from app.views.gate_weights import PREFERENCE_LABELS
from app.views.token_routing import CONSISTENCY_LABELS, neighbour_labels
from moe_core.capacity.simulate import simulate_capacity
from moe_core.capture.record import trace
from moe_core.models import load_model
from tests.app.conftest import run_app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def routing():
    """The default page's trace, computed independently of the app."""
    loaded = load_model()
    return trace(loaded.model, loaded.tokenizer, next(iter(presets().values())))


def charts(at) -> list[tuple[dict, list[pd.DataFrame]]]:
    """(Vega-Lite spec, its datasets as DataFrames) for every chart on the page."""
    found = []
    for element in at.get("vega_lite_chart"):
        spec = json.loads(element.proto.spec)
        frames = [ipc.open_stream(d.data.data).read_pandas() for d in element.proto.datasets]
        found.append((spec, frames))
    return found


def frame_with(found: list[tuple[dict, list[pd.DataFrame]]], *columns: str) -> pd.DataFrame:
    for _, frames in found:
        for frame in frames:
            if set(columns) <= set(frame.columns):
                return frame
    raise AssertionError(f"no chart data with columns {columns}")


def _clean(at) -> None:
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]


def test_token_routing_grid_is_the_top1_of_every_layer(routing) -> None:
    """The grid gets one row per (token, layer) of its first 64-token window with that token's top-1 expert;
    colour = expert at full strength (no opacity), the weight a separate dot; the tokens' text on the x axis."""
    from app.charts.labels import labels_of_expr, token_label

    at = run_app({"view": "routing"})
    _clean(at)
    found = charts(at)
    grid = frame_with(found, "token", "layer", "top1", "top1_weight")
    assert len(grid) == 64 * 4 and len(routing.tokens) > 64
    expected = routing.experts[:, :64, 0]
    np.testing.assert_array_equal(grid.sort_values(["layer", "token"])["top1"].to_numpy(), expected.reshape(-1))
    spec = found[0][0]
    cells, dots = spec["layer"]
    assert cells["encoding"]["color"]["field"] == "top1" and "opacity" not in json.dumps(cells)
    assert dots["encoding"]["size"]["field"] == "top1_weight"
    labels = labels_of_expr(cells["encoding"]["x"]["axis"]["labelExpr"])
    assert labels == [token_label(text) for text in routing.tokens.text[:64]]
    assert f"tokens 0–63 of {len(routing.tokens)}" in spec["title"]["subtitle"]


def test_gate_view_shows_probs_and_the_picked_token(routing) -> None:
    """Heatmap = probs of a 64-token window × 8 experts; distribution = probs of the token from the URL."""
    at = run_app({"view": "gates", "token": "5", "layer": "2"})
    _clean(at)
    found = charts(at)
    heat = frame_with(found, "token", "expert", "prob", "rank", "ink")
    assert len(heat) == 64 * 8
    top = heat["prob"].idxmax()
    assert heat.loc[top, "ink"] == "#FFFFFF" and heat.loc[heat["prob"].idxmin(), "ink"] == "#000000"
    assert "labelExpr" in found[0][0]["layer"][0]["encoding"]["x"]["axis"]
    np.testing.assert_allclose(heat["prob"].to_numpy().reshape(64, 8), routing.probs[2, :64], atol=1e-6)
    picked = next(f for _, frames in found for f in frames if {"expert", "weight"} <= set(f.columns))
    np.testing.assert_allclose(picked["prob"], routing.probs[2, 5], atol=1e-6)
    assert sorted(picked.query("rank > 0")["expert"]) == sorted(routing.experts[2, 5])
    entropy = frame_with(found, "entropy")
    p = routing.probs[2, 0].astype(np.float64)
    assert entropy["entropy"].iloc[0] == pytest.approx(-(p * np.log2(p)).sum(), rel=1e-4)
    assert at.number_input(key="token").value == 5


def test_load_view_counts_first_choices(routing) -> None:
    """Bars = tokens whose first choice is each expert, per layer; the uniform line is T/E."""
    at = run_app({"view": "load"})
    _clean(at)
    found = charts(at)
    assert "facet" not in found[0][0] and "width" not in found[0][0]  # one chart, stretched to the page
    load = frame_with(found, "layer", "expert", "top1", "top1_uniform")
    for layer in range(4):
        expected = np.bincount(routing.experts[layer, :, 0], minlength=8)
        np.testing.assert_array_equal(load.query("layer == @layer")["top1"], expected)
    assert set(load["top1_uniform"]) == {len(routing.tokens) / 8}
    balance = at.dataframe[0].value
    counts = np.bincount(routing.experts[0].reshape(-1), minlength=8)
    assert balance["max_over_mean"].iloc[0] == pytest.approx(counts.max() / counts.mean())


@pytest.mark.parametrize("factor", [0.5, 1.5])
def test_capacity_view_fill_matches_the_simulation(routing, factor: float) -> None:
    """Fill bars = simulate_capacity's kept and overflow per expert; the capacity rule sits at C."""
    at = run_app({"view": "capacity", "cf": str(factor)})
    _clean(at)
    found = charts(at)
    result = simulate_capacity(routing, factor)
    fill = frame_with(found, "expert", "slots", "count")
    kept = fill.query("slots == 'kept'").sort_values("expert")["count"].to_numpy()
    overflow = fill.query("slots == 'dropped'").sort_values("expert")["count"].to_numpy()
    np.testing.assert_array_equal(kept, result.fill[0])
    np.testing.assert_array_equal(overflow, result.demand[0] - result.fill[0])
    capacity = frame_with(found, "capacity")["capacity"].iloc[0]
    assert capacity == max(1, math.ceil(factor * 2 * len(routing.tokens) / 8))
    assert len(found) == 7  # fill, prompt curve, batch by domain, per text or batch, controls, CF sweep, step-through


def test_flow_view_counts_transitions(routing) -> None:
    """Cell (a, b) counts tokens with first choice a at layer 0 and b at layer 1."""
    at = run_app({"view": "flow", "layer": "0"})
    _clean(at)
    found = charts(at)
    flow = frame_with(found, "source", "target", "count", "share", "label")
    expected = np.zeros((8, 8), dtype=int)
    np.add.at(expected, (routing.experts[0, :, 0], routing.experts[1, :, 0]), 1)
    np.testing.assert_array_equal(flow.sort_values(["source", "target"])["count"].to_numpy().reshape(8, 8), expected)
    shown = flow.query("not thin and count > 0")
    assert (shown["label"] == [f"{share:.0%}" for share in shown["share"]]).all()  # the number is the colour


def test_flow_view_shows_every_pair_against_chance(routing) -> None:
    """The overview has all three layer pairs, each with its followed share and both chance levels."""
    from moe_core.analyses.flow import flow_summary

    at = run_app({"view": "flow", "layer": "1"})
    _clean(at)
    overview = frame_with(charts(at), "pair", "series", "value")
    assert sorted(set(overview["pair"])) == ["0→1", "1→2", "2→3"]
    expected = flow_summary(routing)
    followed = overview[overview["series"].str.startswith("follow")].sort_values("pair")["value"].to_numpy()
    np.testing.assert_allclose(followed, expected["followed"], rtol=1e-6)
    assert [m.value for m in at.metric][1:] == [f"{expected['shuffled'][1]:.0%}", "12%"]


def _upload(payload: bytes):
    return lambda at: at.file_uploader(key="upload").set_value(("trace.json", payload, "application/json"))


@pytest.mark.parametrize(
    ("family", "sums_to_one"),
    [
        ("deepseek_v3", "sigmoid: scores need not sum to 1"),  # sigmoid, biased selection
        ("deepseek_v4", "sqrtsoftplus: scores need not sum to 1"),  # hash-routed layer 0, scores above 1
        ("zaya", "softmax: the scores sum to 1"),  # a skip class with weight 0
        ("longcat_flash", "softmax: the scores sum to 1"),  # zero-computation experts
        ("gemma4_text", "probabilities: the scores sum to 1"),  # the router reports probabilities
    ],
)
def test_unusual_routers_render_in_every_view(demo_tokenizer, family: str, sums_to_one: str) -> None:
    """Traces of routers unlike Mixtral's render in all views, and the gate view says whether scores sum to 1."""
    from moe_core.proof.tiny_models import build_tiny_model
    from moe_core.traces.io import to_json_text

    routing = trace(build_tiny_model(family), demo_tokenizer, "Routers differ: 12 + 30 = 42, def f(x): return x")
    payload = to_json_text(routing).encode()
    layer = str(routing.model.moe_layers[0])
    for view in VIEWS:
        at = run_app({"view": view, "layer": layer}, setup=_upload(payload))
        _clean(at)
        if view == "flow" and len(routing.model.moe_layers) == 1:  # LongCat's tiny model: one MoE layer
            assert any("single MoE layer" in info.value for info in at.info)
        elif view == "compare":  # an uploaded trace has no model to re-run: the view says what side B can be
            assert any("Another dtype needs the model" in info.value for info in at.info)
        else:
            assert at.get("vega_lite_chart"), view
    gates = charts(run_app({"view": "gates", "layer": layer}, setup=_upload(payload)))
    assert sums_to_one in json.dumps([spec.get("title") for spec, _ in gates])


def test_many_experts_render(demo_tokenizer) -> None:
    """A 64-expert, top-8 trace (OLMoE-sized) renders; the routing view colours the 16 most frequent experts and
    one grey 'other' (64 hues could not be told apart)."""
    from moe_core.traces.io import to_json_text
    from moe_core.traces.synthetic import random_trace

    payload = to_json_text(random_trace([40, 30], num_experts=64, top_k=8, num_layers=3, seed=3)).encode()
    at = run_app({"view": "routing"}, setup=_upload(payload))
    _clean(at)
    spec = charts(at)[0][0]
    colours = set(spec["layer"][0]["encoding"]["color"]["scale"]["range"])
    assert len(colours) == COLOURED_EXPERTS + 1 and OTHER_COLOR in colours
    for view in ("gates", "load", "capacity", "flow"):
        _clean(run_app({"view": view}, setup=_upload(payload)))


def test_token_routing_table_is_mixtrals_consecutive_repeats(routing) -> None:
    """The neighbours table shows consecutive_repeats of the page's trace, above chance on the demo model."""
    from moe_core.analyses.routing import consecutive_repeats

    at = run_app({"view": "routing"})
    _clean(at)
    shown = at.table[0].value.reset_index(drop=True)  # four layers: an HTML table, columns by their labels
    expected = consecutive_repeats(routing)
    rates = ["first_choice", "first_choice_chance", "first_choice_text_chance"]
    rates += ["any_choice", "any_choice_chance", "any_choice_text_chance"]
    expected[rates] = expected[rates] * 100  # shown as percentages
    labels = neighbour_labels(routing.model.top_k)
    pd.testing.assert_frame_equal(shown, expected.rename(columns=labels), check_dtype=False)
    assert (shown[labels["any_choice"]] > shown[labels["any_choice_chance"]]).all()


def test_load_view_coactivation_matches_the_analysis(routing) -> None:
    """The co-activation heatmap at the chosen layer carries coactivation_frame's counts and shares."""
    from moe_core.analyses.load import coactivation_frame

    at = run_app({"view": "load", "layer": "2"})
    _clean(at)
    shown = next(f for _, frames in charts(at) for f in frames if {"source", "target", "share"} <= set(f.columns))
    expected = coactivation_frame(routing, 2)
    pd.testing.assert_frame_equal(shown[expected.columns].reset_index(drop=True), expected, check_dtype=False)


def test_token_routing_shows_token_id_consistency(routing) -> None:
    """The second table is token_id_consistency of the page's trace; on the demo model the ids' usual expert
    beats the shuffled baseline at every layer (OpenMoE's context-independent routing)."""
    from moe_core.analyses.routing import token_id_consistency

    at = run_app({"view": "routing"})
    _clean(at)
    shown = at.table[1].value.reset_index(drop=True)
    expected = token_id_consistency(routing)
    expected[["consistency", "shuffled"]] = expected[["consistency", "shuffled"]] * 100  # shown as percentages
    pd.testing.assert_frame_equal(shown, expected.rename(columns=CONSISTENCY_LABELS), check_dtype=False)
    assert (shown[CONSISTENCY_LABELS["consistency"]] > shown[CONSISTENCY_LABELS["shuffled"]]).all()


def test_token_routing_says_when_no_id_repeats() -> None:
    """A text with no repeated token has nothing to measure: a hint instead of an empty table."""
    at = run_app({"view": "routing", "text": "Quick"})
    _clean(at)
    assert any("appears twice" in info.value for info in at.info)


def test_load_view_routes_the_held_out_domains() -> None:
    """The domain chart shows domain_share_frame of the held-out batch traced here, one row per domain."""
    from app.loading import domain_batch
    from moe_core.analyses.load import domain_share_frame
    from moe_core.batches import held_out_texts

    loaded = load_model()
    expected = domain_share_frame(trace(loaded.model, loaded.tokenizer, domain_batch()), 1, tuple(held_out_texts()))
    at = run_app({"view": "load", "layer": "1"})
    _clean(at)
    shown = frame_with(charts(at), "domain", "expert", "share")
    pd.testing.assert_frame_equal(shown[expected.columns].reset_index(drop=True), expected, check_dtype=False)
    assert set(shown["domain"]) == {"arithmetic", "code", "german", "markup", "prose"}


def test_gate_view_closer_look_runs_every_expert(routing) -> None:
    """The Closer Look table and heatmap at the chosen layer equal the library's, computed here on the model."""
    from moe_core.analyses.experts import norm_preference, similarity_frame
    from moe_core.experts import experts_input, moe_block, output_norms, weight_similarity

    loaded = load_model()
    block = moe_block(loaded.model, 1)
    hidden = experts_input(loaded.model, loaded.tokenizer, routing.texts, block)
    expected = norm_preference(routing, 1, output_norms(loaded.model, block, hidden, 8, 2))
    at = run_app({"view": "gates", "layer": "1"})
    _clean(at)
    shown = at.table[0].value.iloc[0]
    assert shown[PREFERENCE_LABELS["first_is_largest"]] == pytest.approx(expected["first_is_largest"].iloc[0] * 100)
    assert shown[PREFERENCE_LABELS["rank_correlation"]] == pytest.approx(round(expected["rank_correlation"].iloc[0], 2))
    similarity = frame_with(charts(at), "source", "target", "similarity")
    np.testing.assert_allclose(
        similarity["similarity"], similarity_frame(weight_similarity(block.experts, 8))["similarity"], atol=1e-6
    )


def test_gate_view_closer_look_needs_a_model() -> None:
    """An uploaded trace has no model to run the experts: a caption says so, nothing breaks."""
    from moe_core.traces.io import to_json_text
    from moe_core.traces.synthetic import random_trace

    payload = to_json_text(random_trace([20], num_experts=8, top_k=2)).encode()
    at = run_app({"view": "gates"}, setup=_upload(payload))
    _clean(at)
    assert any("needs the model" in caption.value for caption in at.caption)


def test_gate_view_closer_look_says_when_the_family_cannot_run_its_experts(tmp_path, demo_tokenizer) -> None:
    """Switch hands its experts a one-hot mask instead of (index, weights): the section says it is not
    available for this family, and the rest of the view still draws."""
    from moe_core.proof.tiny_models import build_tiny_model

    build_tiny_model("switch_transformers").save_pretrained(tmp_path)
    demo_tokenizer.save_pretrained(tmp_path)
    at = run_app({"view": "gates", "model": str(tmp_path)})
    _clean(at)
    assert at.get("vega_lite_chart")
    assert any("Not available for this family" in info.value for info in at.info)
