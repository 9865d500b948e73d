"""Capacity charts: fill against C, the drop curve by position, and the step-through fill."""

from __future__ import annotations

import altair as alt
import pandas as pd

from app.charts.common import styled
from app.charts.labels import expert_axis
from moe_core.analyses.drops import POOLED

KEPT, DROPPED = "#4C78A8", "#E45756"
_LINE_COLORS = ["#222222", "#4C78A8", "#F58518", "#54A24B", "#B279A2", "#E45756", "#72B7B2", "#9D755D"]
RATE_AXIS = alt.Axis(format="%")
POSITION_TITLE = "position in the text (bin start)"


def fill_chart(frame: pd.DataFrame, title: str, second: str = "dropped") -> alt.TopLevelMixin:
    """Stacked bars per expert: kept slots from 0 up to the capacity rule, the slots dropped (`second`) above it,
    as a queue fills (by name, "dropped" sorted first and sat at the bottom: as if the first tokens were dropped)."""
    long = frame.melt(id_vars="expert", value_vars=["kept", second], var_name="slots", value_name="count")
    long["stack"] = (long["slots"] == second).astype(int)  # kept from 0 up to C, the rest above the line
    bars = (
        alt.Chart(long)
        .mark_bar()
        .encode(
            x=alt.X("expert:O", axis=expert_axis(frame["expert"].nunique())),
            y=alt.Y("count:Q", title="slots", stack=True),
            color=alt.Color("slots:N", title=None, scale=alt.Scale(domain=["kept", second], range=[KEPT, DROPPED])),
            order=alt.Order("stack:Q", sort="ascending"),
            tooltip=["expert:O", "slots:N", "count:Q"],
        )
    )
    capacity = int(frame["capacity"].iloc[0])
    rule = alt.Chart(pd.DataFrame({"capacity": [capacity]})).mark_rule(color="black", strokeWidth=2, strokeDash=[6, 3])
    label = rule.mark_text(align="left", dx=4, dy=-6).encode(text=alt.value(f"capacity C = {capacity}"), x=alt.value(0))
    rule = rule.encode(y="capacity:Q")
    label = label.encode(y="capacity:Q")
    return styled((bars + rule + label).properties(height=280, title=title))


def drop_curve_chart(frame: pd.DataFrame, title: str) -> alt.TopLevelMixin:
    """Slot and fully-dropped-token rates per position bin: OpenMoE's 'drop towards the end'."""
    long = frame.melt(
        id_vars=["start", "end", "tokens"], value_vars=["slot_drop_rate", "token_drop_rate"], var_name="rate"
    )
    long["rate"] = long["rate"].map({"slot_drop_rate": "slots dropped", "token_drop_rate": "tokens fully dropped"})
    chart = (
        alt.Chart(long)
        .mark_line(point=True)
        .encode(
            x=alt.X("start:Q", title=POSITION_TITLE),
            y=alt.Y("value:Q", title="share dropped", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
            color=alt.Color("rate:N", title=None, scale=alt.Scale(range=[DROPPED, "#54A24B"])),
            tooltip=["start:Q", "end:Q", "tokens:Q", "rate:N", alt.Tooltip("value:Q", format=".1%")],
        )
        .properties(height=240, title=title)
    )
    return styled(chart)


def _position_axis(frame: pd.DataFrame) -> alt.X:
    """Positions 0 … the last bin's end, shared by a curve and the slot bars under it."""
    return alt.X("start:Q", title=POSITION_TITLE, scale=alt.Scale(domain=[0, int(frame["end"].max()) + 1]))


def _rate_lines(frame: pd.DataFrame, field: str, title: str, columns: int = 3) -> alt.Chart:
    """One line per value of `field`, in order of appearance; the pooled line (listed first) thick and dark."""
    names = list(dict.fromkeys(frame[field]))
    scale = alt.Scale(domain=names, range=_LINE_COLORS[: len(names)])
    legend = alt.Legend(orient="top", columns=columns, labelLimit=500)
    return (
        alt.Chart(frame)
        .mark_line(point=alt.OverlayMarkDef(size=30))
        .encode(
            x=_position_axis(frame),
            y=alt.Y("slot_drop_rate:Q", title="slots dropped", scale=alt.Scale(domain=[0, 1]), axis=RATE_AXIS),
            color=alt.Color(f"{field}:N", title=None, scale=scale, legend=legend),
            strokeWidth=alt.condition(f"datum.{field} == '{POOLED}'", alt.value(4), alt.value(2)),
            tooltip=[
                alt.Tooltip(f"{field}:N", title=title),
                "start:Q",
                "end:Q",
                alt.Tooltip("slot_drop_rate:Q", title="slots dropped", format=".1%"),
                alt.Tooltip("slots:Q", title="slots in this bin"),
            ],
        )
    )


def _slot_bars(frame: pd.DataFrame) -> alt.Chart:
    """Thin bars under a curve: the slots each bin holds (equal bars = a fair comparison across positions)."""
    frame = frame.assign(stop=frame["end"] + 1)
    return (
        alt.Chart(frame)
        .mark_bar(color="#9E9E9E", stroke="white", strokeWidth=1)
        .encode(
            x=_position_axis(frame),
            x2="stop:Q",
            y2=alt.datum(0),  # a ranged x makes Vega-Lite draw a bar as a line at y: give it a floor
            y=alt.Y(
                "slots:Q",
                title="slots",
                scale=alt.Scale(domain=[0, int(frame["slots"].max()) or 1]),
                axis=alt.Axis(values=[0, int(frame["slots"].max())], format=",d"),
            ),
            tooltip=["start:Q", "end:Q", alt.Tooltip("slots:Q", title="slots in this bin")],
        )
        .properties(height=50)
    )


def domain_curves_chart(frame: pd.DataFrame, title: str) -> alt.TopLevelMixin:
    """Drop rate by position, one line per domain plus the pooled line, with the slots per bin beneath."""
    pooled = frame[frame["domain"] == POOLED]
    lines = _rate_lines(frame, "domain", "domain").properties(height=260, title=title)
    return styled(alt.vconcat(lines, _slot_bars(pooled), spacing=4))


def control_curves_chart(frame: pd.DataFrame, title: str) -> alt.TopLevelMixin:
    """The controls: the serving order decides where drops fall, not the tokens."""
    return styled(_rate_lines(frame, "control", "serving", columns=2).properties(height=260, title=title))


def labelled_curves_chart(frame: pd.DataFrame, column: str, legend: str, title: str) -> alt.TopLevelMixin:
    """Pooled drop curves told apart by `column` (capacity grouping, static against the capacity-bound forward),
    each line named in the legend."""
    return styled(_rate_lines(frame, column, legend, columns=1).properties(height=240, title=title))


def sweep_chart(frame: pd.DataFrame, title: str) -> alt.TopLevelMixin:
    """Small multiples: the pooled drop curve at each capacity factor."""
    frame = frame.assign(cf=frame["capacity_factor"].map(lambda f: f"CF {f:g}"))
    chart = (
        alt.Chart(frame)
        .mark_area(line={"color": DROPPED}, color=DROPPED, opacity=0.35)
        .encode(
            x=alt.X("start:Q", title="position"),
            y=alt.Y("slot_drop_rate:Q", title="slots dropped", scale=alt.Scale(domain=[0, 1]), axis=RATE_AXIS),
            tooltip=["cf:N", "start:Q", "end:Q", alt.Tooltip("slot_drop_rate:Q", format=".1%")],
        )
        .properties(height=150, width=200)
        .facet(column=alt.Column("cf:N", title=None, sort=list(dict.fromkeys(frame["cf"]))))
        .properties(title=title)
    )
    return styled(chart)


def sequence_drops_chart(frame: pd.DataFrame, title: str) -> alt.TopLevelMixin:
    """One bar per text of the batch: with one capacity for the whole batch, the later texts lose most."""
    chart = (
        alt.Chart(frame)
        .mark_bar(color=DROPPED)
        .encode(
            x=alt.X("sequence:O", title="text in the batch (served in this order)"),
            y=alt.Y("slot_drop_rate:Q", title="slots dropped", scale=alt.Scale(domain=[0, 1]), axis=RATE_AXIS),
            tooltip=["sequence:O", alt.Tooltip("slot_drop_rate:Q", format=".1%"), "slots:Q"],
        )
        .properties(height=200, title=title)
    )
    return styled(chart)


def delta_loss_chart(frame: pd.DataFrame, title: str) -> alt.TopLevelMixin:
    """Mean Δloss (nats per token) by position: what the drops cost the model's next-token predictions."""
    line = (
        alt.Chart(frame)
        .mark_line(point=True, color="#B00020")
        .encode(
            x=alt.X("start:Q", title=POSITION_TITLE),
            y=alt.Y("mean_delta_loss:Q", title="Δloss (nats per token)"),
            tooltip=["start:Q", "end:Q", "tokens:Q", alt.Tooltip("mean_delta_loss:Q", title="Δloss", format="+.3f")],
        )
    )
    zero = alt.Chart(pd.DataFrame({"y": [0]})).mark_rule(color="#777", strokeDash=[4, 3]).encode(y="y:Q")
    return styled((zero + line).properties(height=240, title=title))
