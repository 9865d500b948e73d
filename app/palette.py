"""Expert colours: stable across views and exports, told apart on a projector and under colour-vision deficiency
up to 16 experts; past 20, the most frequent few keep theirs and the rest share one grey."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

# Up to 16 experts. Okabe-Ito's E0/E5 (orange pair) and E1/E4 (blue pair) merged on a projector, and its pink and
# grey were 7 CIELAB units apart under deuteranopia. These are published palettes' colours (Tol, ColorBrewer,
# Tableau, IBM, Okabe-Ito) picked farthest-point first: each prefix keeps the largest smallest distance under normal
# vision, deuteranopia and protanopia (Machado et al. 2009), 32 units for the first 8 and 14 for all 16; lightness
# 30–86, away from the white page and the "other" grey. tests/unit/test_palette.py measures it.
CLASSROOM = (
    "#B2DF8A", "#785EF0", "#882255", "#99DDFF", "#CC3311", "#FFB000", "#44BB99", "#7570B3",
    "#E15759", "#8DA0CB", "#F1CE63", "#FE6100", "#6A3D9A", "#499894", "#FC8D62", "#EE3377",
)  # fmt: skip
TABLEAU_20 = (
    "#4E79A7", "#A0CBE8", "#F28E2B", "#FFBE7D", "#59A14F", "#8CD17D", "#B6992D", "#F1CE63", "#499894", "#86BCB6",
    "#E15759", "#FF9D9A", "#79706E", "#BAB0AC", "#D37295", "#FABFD2", "#B07AA1", "#D4A6C8", "#9D7660", "#D7B5A6",
)  # fmt: skip
DROPPED_COLOR = "#FFFFFF"
OTHER_COLOR = "#D4D4D4"  # experts outside the coloured few of a many-expert trace
OTHER_SHADE = -2  # the value a chart colours OTHER_COLOR (-1 is DROPPED)
COLOURED_EXPERTS = 16  # past TABLEAU_20's size only the most frequent experts keep their colour


@lru_cache(maxsize=32)
def expert_colors(num_experts: int) -> tuple[str, ...]:
    """One colour per expert. ≤16: CLASSROOM; ≤20: Tableau 20; more: golden-angle hues in 3 lightness bands.

    With 64+ experts no palette is tellable apart by eye, so the views also label experts by number.
    """
    if num_experts <= len(CLASSROOM):
        return CLASSROOM[:num_experts]
    if num_experts <= len(TABLEAU_20):
        return TABLEAU_20[:num_experts]
    colors = []
    for expert in range(num_experts):
        hue = (expert * 0.381966) % 1.0
        lightness = (0.45, 0.62, 0.75)[expert % 3]
        red, green, blue = colorsys.hls_to_rgb(hue, lightness, 0.65)
        colors.append(f"#{round(red * 255):02X}{round(green * 255):02X}{round(blue * 255):02X}")
    return tuple(colors)


def coloured_experts(
    experts: Sequence[int] | np.ndarray, num_experts: int, keep: int = COLOURED_EXPERTS
) -> tuple[int, ...] | None:
    """Which experts keep their colour: None (all) up to len(TABLEAU_20) experts; past it the `keep` most frequent
    in `experts` (ties: lower expert first), in expert order. 256 golden-angle hues are not tellable apart, so
    the rest are drawn in one grey, named in tooltips."""
    if num_experts <= len(TABLEAU_20):
        return None
    chosen = np.asarray(experts).reshape(-1)
    counts = np.bincount(chosen[chosen >= 0], minlength=num_experts)
    top = np.argsort(-counts, kind="stable")[:keep]
    return tuple(sorted(int(e) for e in top if counts[e] > 0))


def text_color_on(background: str) -> str:
    """Black or white, whichever reads better on `background` (WCAG relative luminance)."""
    channels = [int(background[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return "#000000" if luminance > 0.179 else "#FFFFFF"


# Sequential ramps drawn with interpolate="rgb", so heat_ink can tell the cell colour Vega draws (d3's 9-step
# schemes "blues" and "purples").
BLUES = ("#F7FBFF", "#DEEBF7", "#C6DBEF", "#9ECAE1", "#6BAED6", "#4292C6", "#2171B5", "#08519C", "#08306B")
PURPLES = ("#FCFBFD", "#EFEDF5", "#DADAEB", "#BCBDDC", "#9E9AC8", "#807DBA", "#6A51A3", "#54278F", "#3F007D")


def ramp_color(fraction: float, ramp: tuple[str, ...]) -> str:
    """The colour at `fraction` (clipped to [0, 1]) of a ramp, linearly interpolated in RGB as Vega does."""
    position = min(max(float(fraction), 0.0), 1.0) * (len(ramp) - 1)
    low = min(int(position), len(ramp) - 2)
    mix = position - low
    a, b = ramp[low], ramp[low + 1]
    channels = (round((1 - mix) * int(a[i : i + 2], 16) + mix * int(b[i : i + 2], 16)) for i in (1, 3, 5))
    return "#" + "".join(f"{c:02X}" for c in channels)


def heat_ink(fraction: float, ramp: tuple[str, ...]) -> str:
    """Text colour for a number printed on a heatmap cell at `fraction` of the ramp (white on dark cells)."""
    return text_color_on(ramp_color(fraction, ramp))
