"""Expert colours: fixed, distinct, readable."""

from __future__ import annotations

import math
import re

import pytest

from app.palette import expert_colors, text_color_on


def test_eight_experts_use_okabe_ito() -> None:
    """Up to 8 experts get the colour-blind-safe Okabe-Ito colours (Okabe & Ito 2008, as published; its black
    is a mid grey here, to stay readable under dark text), in order."""
    published = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#999999")
    assert expert_colors(8) == published


@pytest.mark.parametrize("num_experts", [8, 16, 20, 64, 128])
def test_colours_are_distinct_hex(num_experts: int) -> None:
    """Every expert gets its own valid #RRGGBB colour, for any E."""
    colors = expert_colors(num_experts)
    assert len(colors) == num_experts == len(set(colors))
    assert all(re.fullmatch(r"#[0-9A-F]{6}", c) for c in colors), colors


@pytest.mark.parametrize("num_experts", [8, 20])
def test_small_palettes_are_far_apart(num_experts: int) -> None:
    """Up to 20 experts, any two colours differ by at least 25 (of 441) in RGB distance (Tableau 20's closest
    light/dark pair is 30 apart): a near-duplicate colour would fail."""
    rgb = [tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in expert_colors(num_experts)]
    closest = min(math.dist(a, b) for n, a in enumerate(rgb) for b in rgb[n + 1 :])
    assert closest >= 25, closest


def test_text_colour_contrasts() -> None:
    """Dark text on light backgrounds, light text on dark ones."""
    assert text_color_on("#F0E442") == "#000000"
    assert text_color_on("#0072B2") == "#FFFFFF"
