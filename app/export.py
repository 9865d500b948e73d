"""Charts as PNG and SVG files, rendered offline by vl-convert with the on-screen colours."""

from __future__ import annotations

import altair as alt
import vl_convert as vlc

EXPORT_WIDTH = 900  # px; container-width charts would otherwise export at 300 px
PNG_SCALE = 2


def export_spec(chart: alt.TopLevelMixin) -> dict:
    """The chart's Vega-Lite spec with a fixed width, all rows inline (no 5000-row cap for files)."""
    with alt.data_transformers.disable_max_rows():
        spec = chart.to_dict()
    if spec.get("width") in (None, "container"):
        spec["width"] = EXPORT_WIDTH
    return spec


def chart_png(chart: alt.TopLevelMixin) -> bytes:
    return vlc.vegalite_to_png(export_spec(chart), scale=PNG_SCALE)


def chart_svg(chart: alt.TopLevelMixin) -> bytes:
    return vlc.vegalite_to_svg(export_spec(chart)).encode("utf-8")
