"""Real model shapes (OLMoE 64 experts, Qwen3-30B-A3B 128, DeepSeek-V3 256 experts, top-8, 61 layers, 4,096
tokens): the analyses stay exact and fast enough for a page, and what a chart receives stays small."""

from __future__ import annotations

import json
import re

import altair as alt
import numpy as np
import pandas as pd
import pytest
import vl_convert as vlc

from app.charts.capacity import drop_curve_chart, fill_chart
from app.charts.gates import distribution_chart, entropy_chart, gate_heatmap_chart
from app.charts.load import coactivation_chart, load_chart
from app.charts.matrix import MATRIX_EXPERTS, PAIR_EXPERTS, flow_overview_chart, flow_pair_chart, flow_pairs_chart
from app.charts.routing import token_layer_grid_chart
from app.components import legend, routed_text
from app.memo import PerTrace
from app.palette import COLOURED_EXPERTS, OTHER_SHADE, coloured_experts, expert_colors
from moe_core.analyses.capacity import LayerSlots, drop_curve, fill_frame
from moe_core.analyses.flow import all_pairs_frame, flow_summary, transition_frame
from moe_core.analyses.gates import entropy_frame, gate_heatmap, grouped_gate_heatmap, token_distribution
from moe_core.analyses.load import coactivation_frame, load_frame
from moe_core.analyses.matrix import OTHER, busiest, grouped_matrix_frame, matrix_frame
from moe_core.analyses.routing import token_layer_grid
from moe_core.capacity.simulate import simulate_capacity
from moe_core.metrics import top_k_counts
from moe_core.traces.synthetic import random_trace, trace_from_choices
from moe_core.traces.types import DROPPED, RoutingTrace


def test_top_k_counts_match_a_stable_sort_ties_included() -> None:
    """The partition-based count equals counting a stable argsort's top-k, on random and on heavily tied scores
    (ties go to the lower expert, as torch.topk and a stable sort of -scores pick them)."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        tokens, experts = int(rng.integers(1, 30)), int(rng.integers(1, 12))
        top_k = int(rng.integers(1, experts + 1))
        scores = rng.integers(0, 3, (tokens, experts)).astype(float) if trial % 2 else rng.random((tokens, experts))
        stable = np.argsort(-scores, axis=-1, kind="stable")[:, :top_k]
        np.testing.assert_array_equal(top_k_counts(scores, top_k), np.bincount(stable.ravel(), minlength=experts))


def test_top_k_counts_of_no_tokens_are_zero() -> None:
    assert top_k_counts(np.zeros((0, 4)), 2).tolist() == [0, 0, 0, 0]


# ---- grouping: the experts a chart does not name are counted, not lost ----------------------------------


def test_grouped_flow_other_bucket_is_the_sum_of_the_rest() -> None:
    """6 experts, 2 kept: rows are the two busiest source experts, then OTHER holding the other four rows' counts;
    columns the two busiest targets, then OTHER. Every token is still counted once and every row's shares sum
    to 1."""
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 9, (6, 6))
    frame = grouped_matrix_frame(counts, counts.sum(axis=1), keep=2)
    rows, columns = busiest(counts.sum(axis=1), 2), busiest(counts.sum(axis=0), 2)
    other_rows, other_columns = np.setdiff1d(range(6), rows), np.setdiff1d(range(6), columns)
    cell = frame.set_index(["source", "target"])["count"]
    assert frame["source"].drop_duplicates().tolist() == [*rows, OTHER]
    assert cell[(OTHER, OTHER)] == counts[np.ix_(other_rows, other_columns)].sum()
    assert cell[(rows[0], OTHER)] == counts[rows[0], other_columns].sum()
    assert frame["count"].sum() == counts.sum()
    np.testing.assert_allclose(frame.groupby("source")["share"].sum(), 1.0)


def test_grouped_coactivation_leaves_the_rest_out_and_its_diagonal() -> None:
    """Co-activation pools nothing (a pooled column would count pairs of experts, not tokens): the 2 experts
    with most tokens both ways, without their diagonal, shares over each expert's own tokens."""
    routing = trace_from_choices([[0, 1], [0, 1], [0, 2], [3, 1], [2, 4]], num_experts=5)
    frame = coactivation_frame(routing, 0, keep=2)  # experts 0 and 1 take 3 tokens each
    assert set(zip(frame["source"], frame["target"], strict=True)) == {(0, 1), (1, 0)}
    assert frame.set_index("source").loc[0, "share"] == pytest.approx(2 / 3)


def test_grouped_gate_heatmap_keeps_every_pick() -> None:
    """256 experts, top-8, a 64-token window, 24 named: the named experts' ranks and OTHER's `picked` add up to
    8 per token; OTHER's score is the best of the experts it pools."""
    routing = random_trace(64, num_experts=256, top_k=8, seed=2)
    full = gate_heatmap(routing, 0)
    grouped = grouped_gate_heatmap(full, 24)
    named = grouped[grouped["expert"] >= 0]
    assert named["expert"].nunique() == 24 and len(grouped) == 64 * 25
    picks = (named["rank"] > 0).groupby(named["token"]).sum() + grouped[grouped["expert"] == OTHER].set_index("token")[
        "picked"
    ]
    assert (picks == 8).all()
    rest = full[~full["expert"].isin(named["expert"].unique())]
    other = grouped[grouped["expert"] == OTHER].set_index("token")["prob"]
    np.testing.assert_allclose(other, rest.groupby("token")["prob"].max())


def test_few_experts_are_not_grouped() -> None:
    """Up to `keep` experts, the grouped frames are the plain ones (the demo model's 8 experts stay as they were)."""
    counts = np.arange(16).reshape(4, 4)
    pd.testing.assert_frame_equal(
        grouped_matrix_frame(counts, counts.sum(axis=1), 4), matrix_frame(counts, counts.sum(1))
    )
    heat = gate_heatmap(random_trace(5, num_experts=8, top_k=2), 0)
    assert grouped_gate_heatmap(heat, 24).drop(columns="picked").equals(heat)


# ---- every view's charts at DeepSeek-V3's shape ---------------------------------------------------------

SPEC_BYTES = 1_500_000  # a chart's Vega-Lite spec with its data inline: well under the 4 MB one 256² matrix took
CHART_ROWS = 20_000  # rows of any one chart's data; L × T × E here is 64 million


@pytest.fixture(scope="module")
def deepseek() -> RoutingTrace:
    """DeepSeek-V3's routing shape: 61 MoE layers, 256 experts, top-8, 4,096 tokens, sigmoid scores."""
    return random_trace(4096, num_experts=256, top_k=8, num_layers=61, scoring="sigmoid")


def _specs(routing: RoutingTrace) -> dict[str, dict]:
    """Every chart the five views draw from this trace (layer row 30), as exported specs with their data."""
    experts, layers = routing.model.num_experts, routing.model.moe_layers
    heat = grouped_gate_heatmap(gate_heatmap(routing, 30, 0, 64), 24)
    charts = {
        "grid": token_layer_grid_chart(token_layer_grid(routing, 0, 64), experts, 4096, 8),
        "gates": gate_heatmap_chart(heat, "sigmoid", 4096, experts),
        "distribution": distribution_chart(token_distribution(routing, 30, 5), "sigmoid", "#5"),
        "entropy": entropy_chart(entropy_frame(routing, 30), experts),
        "load": load_chart(load_frame(routing), "topk", experts),
        "coactivation": coactivation_chart(coactivation_frame(routing, 30, keep=MATRIX_EXPERTS), 30, experts),
        "flow overview": flow_overview_chart(flow_summary(routing, shuffles=2), 30),
        "flow pairs": flow_pairs_chart(all_pairs_frame(routing, PAIR_EXPERTS), experts, 30),
        "flow pair": flow_pair_chart(transition_frame(routing, 30, keep=MATRIX_EXPERTS), 30, 31, experts),
        "fill": fill_chart(fill_frame(LayerSlots.simulated(routing, simulate_capacity(routing, 1.0), 30), 4096), "t"),
        "drops": drop_curve_chart(drop_curve(routing.tokens.position, LayerSlots.simulated(
            routing, simulate_capacity(routing, 1.0), 30)), "t"),
    }  # fmt: skip
    assert len(layers) == 61
    with alt.data_transformers.disable_max_rows():
        return {name: chart.to_dict() for name, chart in charts.items()}


@pytest.fixture(scope="module")
def deepseek_specs(deepseek: RoutingTrace) -> dict[str, dict]:
    return _specs(deepseek)


def test_every_chart_at_deepseek_shape_is_small(deepseek_specs: dict[str, dict]) -> None:
    """No chart of a 61-layer, 256-expert, 4,096-token trace sends more than SPEC_BYTES or CHART_ROWS rows: the
    browser never gets the [L, T, E] scores, only aggregates and windows."""
    for name, spec in deepseek_specs.items():
        size = len(json.dumps(spec))
        rows = max(len(rows) for rows in spec.get("datasets", {"": []}).values())
        assert size < SPEC_BYTES and rows < CHART_ROWS, (name, size, rows)


def _marks(vega: dict) -> list[dict]:
    """Every mark of a compiled Vega spec, those inside groups (layers, facets) included."""
    found = []
    for mark in vega.get("marks", []):
        found += [mark, *_marks(mark)]
    return found


def test_no_chart_makes_the_browser_evaluate_an_expression_per_item_it_does_not_need(
    deepseek_specs: dict[str, dict],
) -> None:
    """Streamlit's front end runs Vega's expressions in an interpreter, per mark item: no chart builds an ARIA
    description string per item (a third of drawing the 61 x 256 load heatmap), and the load heatmap, whose
    every ratio is finite, has no per-cell validity filter (another third)."""
    for name, spec in deepseek_specs.items():
        vega = vlc.vegalite_to_vega(spec)
        described = [m.get("name") for m in _marks(vega) if "description" in m.get("encode", {}).get("update", {})]
        assert not described, (name, described)
    load = vlc.vegalite_to_vega(deepseek_specs["load"])
    assert load["marks"][0]["type"] == "rect" and len(load["marks"][0]["from"]) == 1
    filters = [step for data in load["data"] for step in data.get("transform", []) if step["type"] == "filter"]
    assert not filters
    flow = vlc.vegalite_to_vega(deepseek_specs["flow pairs"])  # 60 pairs: no 60-way sort expression per cell
    assert not [step for data in flow["data"] for step in data.get("transform", []) if step["type"] == "formula"]


def test_layer_pairs_are_drawn_in_layer_order() -> None:
    """12 layers: the small multiples run 0 → 1, 1 → 2, …, 10 → 11 (not "10 → 11" before "2 → 3")."""
    routing = random_trace(40, num_experts=8, top_k=2, num_layers=12)
    svg = vlc.vegalite_to_svg(flow_pairs_chart(all_pairs_frame(routing, PAIR_EXPERTS), 8).to_dict())
    headers = [text for text in re.findall(r"<text[^>]*>([^<]*)</text>", svg) if "→" in text]
    assert headers == [f"{layer} → {layer + 1}" for layer in range(11)]


# ---- colours: past 20 experts the most frequent keep theirs, the rest share one grey ------------------------


def test_few_experts_all_keep_their_colour_and_many_only_the_most_frequent() -> None:
    """Up to 20 experts every one is coloured (None); 256: the 16 most frequent top-1 experts, in expert order."""
    assert coloured_experts([0, 1, 1], 8) is None
    top1 = np.repeat(np.arange(40), np.arange(40, 0, -1))  # expert 0 most frequent, 39 least
    assert coloured_experts(top1, 256) == tuple(range(COLOURED_EXPERTS))


def test_grid_greys_the_experts_it_does_not_colour() -> None:
    """A 256-expert grid colours the window's most frequent top-1 experts by their fixed colour and the rest by
    OTHER_SHADE (legend 'other'); its rows shrink so 61 layers fit a screen."""
    routing = random_trace(64, num_experts=256, top_k=8, num_layers=61, seed=3)
    spec = token_layer_grid_chart(token_layer_grid(routing, 0, 64), 256, 64, 8).to_dict()
    cells = spec["layer"][0]["encoding"]["color"]
    shown = cells["scale"]["domain"]
    assert cells["field"] == "shade" and shown[-1] == OTHER_SHADE and len(shown) == COLOURED_EXPERTS + 1
    assert cells["scale"]["range"][:-1] == [expert_colors(256)[e] for e in shown[:-1]]
    assert spec["height"] <= 61 * 14
    data = next(iter(spec["datasets"].values()))
    assert {row["shade"] for row in data} <= set(shown) | {DROPPED}


def test_routed_text_and_chips_grey_the_rest() -> None:
    """The routed text's spans of uncoloured experts take the one grey class, and the chips end with 'the other
    N experts'; the tooltip still names each token's real expert."""
    frame = pd.DataFrame({"token": range(30), "text": [f"w{i}" for i in range(30)], "top1": np.arange(30) % 25,
                          "route": [f"E{i % 25} 1.00" for i in range(30)]})  # fmt: skip
    markup = routed_text(frame, 64)
    # experts 0-4 twice, 5-24 once: E0-E15 are coloured (ties to the lower expert), E16-E24's 9 tokens grey
    assert markup.count('class="tok xo"') == 9 and 'class="tok x15"' in markup
    assert 'title="#29 E4 1.00"' in markup
    chips = legend(64, shown=coloured_experts(frame["top1"], 64))
    assert chips.count('class="chip"') == COLOURED_EXPERTS + 1 and f"the other {64 - COLOURED_EXPERTS}" in chips


def test_per_trace_computes_once_per_trace_object() -> None:
    """A rerun asking again for the same trace's table gets the first result; another trace (even an equal one)
    is computed afresh, and so are other arguments."""
    calls: list[tuple[int, int]] = []

    def table(routing: RoutingTrace, row: int) -> int:
        calls.append((id(routing), row))
        return len(calls)

    cache = PerTrace()
    first, second = random_trace(4, 4, 2), random_trace(4, 4, 2)
    assert cache(table, first, 0) == cache(table, first, 0) == 1
    assert cache(table, second, 0) == 2 and cache(table, first, 1) == 3 and len(calls) == 3


def test_every_pair_frame_counts_each_pair_whole() -> None:
    """all_pairs_frame holds every consecutive pair once, each pair's counts summing to the tokens routed at
    both layers, with row and column places 0… (busiest first, 'other' last)."""
    routing = random_trace(500, num_experts=64, top_k=8, num_layers=5, seed=4)
    frame = all_pairs_frame(routing, 8)
    assert frame.groupby("from_layer")["count"].sum().tolist() == [500] * 4
    assert frame["to_layer"].tolist()[:1] == [1] and frame["row"].max() == frame["column"].max() == 8
    assert (frame[frame["row"] == 8]["source"] == OTHER).all()
