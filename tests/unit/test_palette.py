"""Expert colours: fixed, distinct, readable."""

from __future__ import annotations

import pytest

from app.palette import OKABE_ITO, expert_colors, text_color_on


def test_eight_experts_use_okabe_ito() -> None:
    """Up to 8 experts get the colour-blind-safe Okabe-Ito colours, in order."""
    assert expert_colors(8) == OKABE_ITO


@pytest.mark.parametrize("num_experts", [8, 16, 20, 64, 128])
def test_colours_are_distinct_hex(num_experts: int) -> None:
    """Every expert gets its own valid #RRGGBB colour, for any E."""
    colors = expert_colors(num_experts)
    assert len(colors) == num_experts == len(set(colors))
    assert all(len(c) == 7 and c.startswith("#") and int(c[1:], 16) >= 0 for c in colors)


def test_text_colour_contrasts() -> None:
    """Dark text on light backgrounds, light text on dark ones."""
    assert text_color_on("#F0E442") == "#000000"
    assert text_color_on("#0072B2") == "#FFFFFF"
