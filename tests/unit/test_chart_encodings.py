"""Encodings a person reads at a glance: expert colour never shaded, token text on the axes, legible numbers,
colour and number of one quantity, thin rows greyed, binned entropy, flow chance levels. Hand-built inputs."""

from __future__ import annotations

import dataclasses
import html
import json
import re

import numpy as np
import pandas as pd
import pytest
import vl_convert as vlc

from app.charts.gates import ENTROPY_POINTS, entropy_chart, gate_heatmap_chart, heat_frame
from app.charts.labels import labels_of_expr, token_axis_expr, token_label
from app.charts.load import load_chart
from app.charts.matrix import MIN_ROW_TOKENS, matrix_cells, row_label_expr
from app.charts.routing import grid_frame, token_layer_grid_chart
from app.palette import BLUES, CLASSROOM, PURPLES, heat_ink, ramp_color
from moe_core.analyses.flow import flow_summary, followed_share, transition_frame
from moe_core.analyses.gates import binned_entropy, entropy_frame, gate_heatmap
from moe_core.analyses.load import load_frame
from moe_core.analyses.matrix import matrix_frame
from moe_core.analyses.routing import token_layer_grid
from moe_core.traces.synthetic import random_trace, trace_from_choices


def _with_texts(routing, texts):
    return dataclasses.replace(routing, tokens=dataclasses.replace(routing.tokens, text=tuple(texts)))


def _svg_texts(chart) -> list[str]:
    """Every text Vega drew, unescaped (what a reader sees)."""
    svg = vlc.vegalite_to_svg(chart.to_dict())
    return [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]


# ---- palette -----------------------------------------------------------------------------------------------


def test_ramp_ends_and_midpoint() -> None:
    """0 and 1 are the ramp's ends; halfway between two 9-step stops is their RGB mean, worked out by hand."""
    assert ramp_color(0.0, BLUES) == "#F7FBFF" and ramp_color(1.0, BLUES) == "#08306B"
    assert ramp_color(-3, BLUES) == "#F7FBFF" and ramp_color(7, BLUES) == "#08306B"
    # 1/16 is halfway from stop 0 (#F7FBFF) to stop 1 (#DEEBF7): (247+222)/2 = 234.5 -> 234 (banker's), ...
    assert ramp_color(1 / 16, BLUES) == "#EAF3FB"


def test_heat_ink_is_white_on_dark_cells_and_black_on_pale_ones() -> None:
    """The darkest blue and purple take white numbers; the palest take black."""
    assert heat_ink(1.0, BLUES) == "#FFFFFF" and heat_ink(1.0, PURPLES) == "#FFFFFF"
    assert heat_ink(0.0, BLUES) == "#000000" and heat_ink(0.1, PURPLES) == "#000000"


# ---- token labels ------------------------------------------------------------------------------------------


def test_token_label_is_one_visible_line() -> None:
    """Line breaks become ↵, a blank token ␣, a right-to-left override a [U+202E] label, long tokens are cut."""
    assert token_label("\n") == "↵" and token_label(" ") == "␣" and token_label(" cat") == "cat"
    assert token_label("ab\u202ecd") == "ab[U+202E]cd"
    assert token_label("extraordinarily") == "extraordina…"


def test_token_axis_labels_render_as_text_whatever_they_contain() -> None:
    """Quotes, backslashes, brackets and CJK reach the axis as the tokens' own text: Vega evaluates the label
    expression and draws exactly those strings (no token can end the JSON string and inject code). `if` is one:
    Vega once read the string literal "if" as a signal name and drew no chart at all."""
    texts = ['a"b', "x\\", "]+'q'+[", "猫", "<b>", "if"]
    routing = _with_texts(trace_from_choices([[0], [1], [0], [1], [0], [1]], num_experts=2), texts)
    drawn = _svg_texts(token_layer_grid_chart(token_layer_grid(routing), 2))
    for text in texts:
        assert text in drawn
    assert labels_of_expr(token_axis_expr(texts, 3)) == texts and token_axis_expr(texts, 3).endswith(
        "[datum.value - 3]"
    )


# ---- token × layer grid ------------------------------------------------------------------------------------


def test_grid_colour_is_the_expert_at_full_strength_and_doubt_is_a_separate_dot() -> None:
    """No opacity anywhere: the rect colour is the expert; the dot's size encodes the top-1 weight, largest at
    1/k (an even top-2 split) and absent at 1; dot ink contrasts with the expert's colour."""
    routing = trace_from_choices([[[0, 1], [5, 0], [4, 2]]], [[[0.5, 0.5], [0.9, 0.1], [1.0, 0.0]]], num_experts=8)
    spec = token_layer_grid_chart(token_layer_grid(routing), 8, top_k=2).to_dict()
    assert "opacity" not in json.dumps([layer.get("encoding", {}) for layer in spec["layer"]])
    cells, dots = spec["layer"]
    assert cells["encoding"]["color"]["field"] == "top1"
    assert cells["encoding"]["color"]["legend"]["labelExpr"] == "'E' + datum.label"
    assert dots["encoding"]["size"]["field"] == "top1_weight"
    assert (
        dots["encoding"]["size"]["scale"]["domain"] == [0.5, 1] and dots["encoding"]["size"]["scale"]["range"][1] == 0
    )
    shown = grid_frame(token_layer_grid(routing), 8)
    assert shown["expert"].tolist() == ["E0", "E5", "E4"]
    assert shown["ink"].tolist() == ["#000000", "#000000", "#FFFFFF"]  # #B2DF8A, #FFB000 light; #CC3311 dark


def test_grid_cells_are_drawn_in_the_exact_palette_colours() -> None:
    """The SVG's rects are filled with the experts' own colours with no fill-opacity, however low the weight."""
    routing = trace_from_choices([[[4, 1], [5, 0]]], [[[0.5, 0.5], [0.5, 0.5]]], num_experts=8)
    svg = vlc.vegalite_to_svg(token_layer_grid_chart(token_layer_grid(routing), 8, top_k=2).to_dict())
    paths = re.findall(r'<path[^>]*fill="(#[0-9a-fA-F]{6})"[^>]*>', svg)
    assert {CLASSROOM[4].lower(), CLASSROOM[5].lower()} <= {p.lower() for p in paths}
    assert "fill-opacity" not in svg.split('class="mark-rect')[1].split("</g>")[0]


def test_grid_states_its_window() -> None:
    """A window of tokens 2–3 of 5 says so; the whole text says 'all 5 tokens'."""
    routing = trace_from_choices([[0], [1], [0], [1], [0]], num_experts=2)
    window = token_layer_grid_chart(token_layer_grid(routing, 2, 4), 2, total_tokens=5).to_dict()
    assert "tokens 2–3 of 5" in window["title"]["subtitle"]
    whole = token_layer_grid_chart(token_layer_grid(routing), 2, total_tokens=5).to_dict()
    assert whole["title"]["subtitle"].startswith("all 5 tokens")


# ---- gate heatmap ------------------------------------------------------------------------------------------


def test_rank_numbers_are_white_on_the_darkest_cells() -> None:
    """The window's highest score is the darkest cell: white ink; a score of 0.1 of it: black ink."""
    routing = trace_from_choices([[0, 1], [1, 0]], [[0.9, 0.09], [0.5, 0.5]], num_experts=2)
    shown = heat_frame(gate_heatmap(routing, 0)).set_index(["token", "expert"])
    assert shown.loc[(0, 0), "ink"] == "#FFFFFF" and shown.loc[(0, 1), "ink"] == "#000000"
    spec = gate_heatmap_chart(gate_heatmap(routing, 0), "softmax").to_dict()
    assert spec["layer"][1]["encoding"]["color"] == {"field": "ink", "scale": None, "type": "nominal"}


# ---- matrices ----------------------------------------------------------------------------------------------


def test_matrix_number_is_the_share_and_thin_rows_are_grey() -> None:
    """Row 0 has 10 tokens (7 then 3), row 1 one token: row 0's numbers are its shares; row 1 is thin (no
    numbers), whatever its 100% share; each row label carries the row's tokens."""
    counts = np.array([[7, 3], [0, 1]])
    cells = matrix_cells(matrix_frame(counts, counts.sum(axis=1))).set_index(["source", "target"])
    assert cells.loc[(0, 0), "label"] == "70%" and cells.loc[(0, 1), "label"] == "30%"
    assert cells.loc[(1, 1), "thin"] and cells.loc[(1, 1), "label"] == "" and not cells.loc[(0, 0), "thin"]
    assert 1 < MIN_ROW_TOKENS <= 10
    assert row_label_expr(cells.reset_index()).endswith("[10, 1][datum.value]")


# ---- entropy -----------------------------------------------------------------------------------------------


def test_binned_entropy_by_hand() -> None:
    """Five tokens in at most 2 bins: bins of 3 -> [0, 3) and [3, 5), with their mean, min and max."""
    frame = pd.DataFrame({"entropy": [0.0, 1.0, 2.0, 3.0, 1.0]})
    bins = binned_entropy(frame, 2)
    assert bins["start"].tolist() == [0, 3] and bins["stop"].tolist() == [3, 5] and bins["tokens"].tolist() == [3, 2]
    assert (
        bins["mean"].tolist() == [1.0, 2.0]
        and bins["low"].tolist() == [0.0, 1.0]
        and bins["high"].tolist() == [2.0, 3.0]
    )
    with pytest.raises(ValueError, match="at least 1"):
        binned_entropy(frame, 0)


def test_entropy_curve_is_binned_past_a_few_hundred_tokens() -> None:
    """Past ENTROPY_POINTS tokens the chart gets the bins (≤ ENTROPY_POINTS rows), not one row per token."""
    long = random_trace([ENTROPY_POINTS * 3 + 7], num_experts=4, top_k=1, num_layers=1, seed=0)
    spec = entropy_chart(entropy_frame(long, 0), 4).to_dict()
    rows = [rows for name, rows in spec["datasets"].items() if rows and "mean" in rows[0]]
    assert rows and len(rows[0]) <= ENTROPY_POINTS and "mean of each 4 tokens" in spec["title"]["subtitle"]
    short = random_trace([50], num_experts=4, top_k=1, num_layers=1, seed=0)
    assert "one point per token" in entropy_chart(entropy_frame(short, 0), 4).to_dict()["title"]["subtitle"]


# ---- layer flow --------------------------------------------------------------------------------------------


def test_flow_summary_copying_layers_follow_fully_and_shuffles_give_two_thirds() -> None:
    """Layer 1 copies layer 0 on tokens (0, 0, 1, 1): every token follows its path. Shuffling the next layer
    over 4 tokens gives 2 of the 6 arrangements with both rows pure (share 1) and 4 with rows split (share
    1/2): chance = (2·1 + 4·0.5) / 6 = 2/3."""
    routing = trace_from_choices([[[0], [0], [1], [1]], [[0], [0], [1], [1]]], num_experts=4)
    summary = flow_summary(routing, shuffles=3000)
    assert summary["followed"].item() == 1.0 and summary["even"].item() == 0.25 and summary["tokens"].item() == 4
    assert summary["shuffled"].item() == pytest.approx(2 / 3, abs=0.02)
    assert followed_share(np.array([[3, 1], [0, 0]])) == 0.75


def test_flow_frame_carries_row_totals() -> None:
    """Each cell knows how many tokens its row has: layer 0 (0, 0, 1) -> rows of 2 and 1 tokens."""
    routing = trace_from_choices([[[0], [0], [1]], [[1], [1], [0]]], num_experts=2)
    frame = transition_frame(routing, 0).set_index(["source", "target"])
    assert frame.loc[(0, 1), "row_total"] == 2 and frame.loc[(1, 0), "row_total"] == 1


# ---- expert load -------------------------------------------------------------------------------------------


def test_load_bars_fill_the_width_for_a_few_layers() -> None:
    """4 layers × 8 experts: one chart without a fixed width (Streamlit stretches it to the page, 1920 px
    included); 32 layers × 64 experts: fixed-width small multiples."""
    few = load_chart(load_frame(random_trace([30], num_experts=8, top_k=2, num_layers=4)), "top1", 8).to_dict()
    assert "facet" not in few and "width" not in few
    assert few["layer"][0]["encoding"]["xOffset"]["field"] == "expert"
    many = load_chart(load_frame(random_trace([30], num_experts=64, top_k=2, num_layers=32)), "top1", 64).to_dict()
    assert "facet" in many


# ---- classroom reading (issue 20) ---------------------------------------------------------------------------


def _rects(scene: dict, fill: str) -> list[dict]:
    """Every rect item of the scenegraph painted `fill` (what the browser draws), in drawing order."""
    found = []

    def walk(node: dict) -> None:
        for item in node.get("items", []):
            if node.get("marktype") == "rect" and item.get("fill") == fill:
                found.append(item)
            walk(item)

    walk(scene["scenegraph"])
    return found


def test_capacity_fill_keeps_slots_from_zero_and_drops_above_the_line() -> None:
    """E0 had 5 slots of demand at C = 3: its kept bar runs from the axis (0) to the capacity line, its 2 dropped
    slots sit on top (they were the last to arrive); E1, under capacity, has no red part."""
    from app.charts.capacity import DROPPED, KEPT, fill_chart

    frame = pd.DataFrame({"expert": [0, 1], "kept": [3, 2], "dropped": [2, 0], "capacity": [3, 3]})
    scene = vlc.vegalite_to_scenegraph(fill_chart(frame, "fill").to_dict())
    kept, dropped = _rects(scene, KEPT), [r for r in _rects(scene, DROPPED) if r["height"] > 0]
    bottom = max(r["y"] + r["height"] for r in kept)
    e0_kept = min(kept, key=lambda r: r["x"])
    assert e0_kept["y"] + e0_kept["height"] == pytest.approx(bottom)  # from 0
    assert len(dropped) == 1 and dropped[0]["x"] == pytest.approx(e0_kept["x"])
    assert dropped[0]["y"] + dropped[0]["height"] == pytest.approx(e0_kept["y"])  # on top of the kept slots
    assert dropped[0]["height"] == pytest.approx(e0_kept["height"] * 2 / 3)


def test_matrix_rows_and_columns_share_one_order() -> None:
    """Co-activation has no E0–E0 cell, so E0's row starts at E1: the columns still run E0…E3, as the rows do."""
    from app.charts.load import coactivation_chart
    from moe_core.analyses.load import coactivation_frame

    routing = trace_from_choices([[[0, 1], [1, 2], [2, 3], [3, 0], [0, 2]]], num_experts=4)
    spec = coactivation_chart(coactivation_frame(routing, 0), 0, 4).to_dict()
    encodings = [layer["encoding"] for layer in spec.get("layer", [spec])]
    sorts = {(axis, str(enc[axis]["sort"])) for enc in encodings for axis in ("x", "y") if axis in enc}
    assert {sort for _, sort in sorts} == {"[0, 1, 2, 3]"}, sorts
