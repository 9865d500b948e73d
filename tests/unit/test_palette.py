"""Expert colours: fixed, distinct, readable."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest

from app.palette import OTHER_COLOR, expert_colors, text_color_on

# Machado, Oliveira & Fernandes (2009), severity 1.0, applied to linear sRGB.
SIMULATIONS = {
    "normal vision": np.eye(3),
    "protanopia": np.array([[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                            [-0.003882, -0.048116, 1.051998]]),
    "deuteranopia": np.array([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                              [-0.011820, 0.042940, 0.968881]]),
}  # fmt: skip
SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])  # fmt: skip
D65 = np.array([0.95047, 1.0, 1.08883])


def _lab(color: str, simulation: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of a #RRGGBB colour as a viewer with the simulated vision sees it."""
    srgb = np.array([int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    xyz = SRGB_TO_XYZ @ np.clip(simulation @ linear, 0, 1) / D65
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _closest(colors: tuple[str, ...], simulation: np.ndarray) -> float:
    """The smallest CIELAB distance (ΔE*ab) between two of the colours."""
    labs = [_lab(color, simulation) for color in colors]
    return min(float(np.linalg.norm(a - b)) for a, b in itertools.combinations(labs, 2))


@pytest.mark.parametrize("vision", list(SIMULATIONS))
@pytest.mark.parametrize(("num_experts", "least"), [(8, 30.0), (16, 12.0)])
def test_expert_colours_stay_apart_under_colour_vision_deficiency(vision: str, num_experts: int, least: float) -> None:
    """Any two of the first 8 expert colours differ by at least 30 ΔE*ab, of all 16 by at least 12, for normal
    vision and simulated protanopia and deuteranopia; none comes within 15 of the white page or the "other" grey.
    Okabe-Ito, the palette before, had pink and grey 7 apart under deuteranopia and would fail."""
    colors = expert_colors(num_experts)
    assert _closest(colors, SIMULATIONS[vision]) >= least
    for background in ("#FFFFFF", OTHER_COLOR):
        page = _lab(background, SIMULATIONS[vision])
        assert min(float(np.linalg.norm(_lab(c, SIMULATIONS[vision]) - page)) for c in colors) >= 15
    okabe_ito = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#999999")
    assert _closest(okabe_ito, SIMULATIONS["deuteranopia"]) < 8  # the simulation tells a known weak pair


def test_fewer_experts_take_a_prefix() -> None:
    """E experts take the first E colours: expert 3 is the same colour with 4 experts as with 16."""
    assert expert_colors(4) == expert_colors(16)[:4] and expert_colors(8) == expert_colors(16)[:8]


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
