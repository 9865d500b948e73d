"""Charts as PNG and SVG files, rendered offline by vl-convert with the on-screen colours.

A downloaded file leaves the page behind, so it carries the settings it was drawn with (model, layer, capacity
factor, policy) in its title and in its file name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import altair as alt
import vl_convert as vlc

EXPORT_WIDTH = 900  # px; container-width charts would otherwise export at 300 px
PNG_SCALE = 2
MAX_NAME_PART = 60  # characters of a model name in a file name (hub ids and folder paths can be long)


@dataclass(frozen=True)
class ChartStamp:
    """The settings a chart was drawn with, written on its downloads."""

    model: str
    layer: int
    capacity_factor: float
    policy: str

    def line(self) -> str:
        """One readable line for the chart's title block, e.g. 'demo-mixtral · layer 2 · CF 1.25 · policy score'."""
        return f"{self.model} · layer {self.layer} · CF {self.capacity_factor:.2f} · policy {self.policy}"

    def file_name(self, name: str, extension: str) -> str:
        """The same settings in a file name safe on every file system:
        'gate-heatmap_demo-mixtral_layer2_cf1.25_score.png'."""
        model = re.sub(r"[^A-Za-z0-9.-]+", "-", self.model).strip("-.")[:MAX_NAME_PART] or "model"
        return f"{name}_{model}_layer{self.layer}_cf{self.capacity_factor:.2f}_{self.policy}.{extension}"


def _stamped_title(title: object, line: str) -> dict:
    """The spec's title with the settings line appended to its subtitle (a title-less chart gets the line alone)."""
    if title is None:
        return {"text": line}
    if not isinstance(title, dict):
        return {"text": title, "subtitle": line}
    subtitle = title.get("subtitle")
    lines = [] if subtitle is None else [subtitle] if isinstance(subtitle, str) else list(subtitle)
    return {**title, "subtitle": [*lines, line]}


def export_spec(chart: alt.TopLevelMixin, stamp: ChartStamp | None = None) -> dict:
    """The chart's Vega-Lite spec with a fixed width, all rows inline (no 5000-row cap for files), and the
    stamp's settings line in its title."""
    with alt.data_transformers.disable_max_rows():
        spec = chart.to_dict()
    if spec.get("width") in (None, "container"):
        spec["width"] = EXPORT_WIDTH
    if stamp is not None:
        spec["title"] = _stamped_title(spec.get("title"), stamp.line())
    return spec


def chart_png(chart: alt.TopLevelMixin, stamp: ChartStamp | None = None) -> bytes:
    return vlc.vegalite_to_png(export_spec(chart, stamp), scale=PNG_SCALE)


def chart_svg(chart: alt.TopLevelMixin, stamp: ChartStamp | None = None) -> bytes:
    return vlc.vegalite_to_svg(export_spec(chart, stamp)).encode("utf-8")
