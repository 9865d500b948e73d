"""Chart export: real PNG/SVG files at the fixed export width, in the on-screen colours."""

from __future__ import annotations

import struct

import pandas as pd

from app.charts.routing import token_layer_grid_chart
from app.export import EXPORT_WIDTH, PNG_SCALE, chart_png, chart_svg, export_spec
from app.palette import expert_colors


def _chart():
    grid = pd.DataFrame(
        {"token": [0, 1, 0, 1], "position": [0, 1, 0, 1], "text": ["a", "<b>", "a", "<b>"], "layer": [0, 0, 1, 1],
         "top1": [0, 3, 5, 7], "top1_weight": [0.9, 0.6, 0.5, 1.0]}
    )  # fmt: skip
    return token_layer_grid_chart(grid, 8)


def test_png_is_a_png_at_least_the_export_width() -> None:
    """PNG signature, and the image is at least EXPORT_WIDTH × scale pixels wide (axes and legend add more)."""
    data = chart_png(_chart())
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width = struct.unpack(">I", data[16:20])[0]
    assert width >= EXPORT_WIDTH * PNG_SCALE


def test_svg_uses_the_on_screen_palette() -> None:
    """The SVG is drawn with the app's expert colours, and token text stays escaped."""
    svg = chart_svg(_chart()).decode()
    assert svg.lstrip().startswith("<svg")
    for color in (expert_colors(8)[0], expert_colors(8)[7]):
        assert color.lower() in svg.lower()
    assert "<b>" not in svg


def test_export_spec_has_fixed_width_and_all_rows() -> None:
    """Container-width charts get the fixed export width; every data row is inline."""
    spec = export_spec(_chart())
    assert spec["width"] == EXPORT_WIDTH
    assert sum(len(rows) for rows in spec["datasets"].values()) == 4
