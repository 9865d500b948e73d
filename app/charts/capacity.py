"""Capacity charts: fill against C, the drop curve by position, and the step-through fill."""

from __future__ import annotations

import altair as alt
import pandas as pd

from app.charts.common import styled

KEPT, OVERFLOW = "#4C78A8", "#E45756"


def fill_chart(frame: pd.DataFrame, title: str, second: str = "overflow") -> alt.TopLevelMixin:
    """Stacked bars per expert: kept slots and the slots refused (`second`), with a rule at the capacity."""
    long = frame.melt(id_vars="expert", value_vars=["kept", second], var_name="slots", value_name="count")
    bars = (
        alt.Chart(long)
        .mark_bar()
        .encode(
            x=alt.X("expert:O", title="expert"),
            y=alt.Y("count:Q", title="slots", stack=True),
            color=alt.Color("slots:N", title=None, scale=alt.Scale(domain=["kept", second], range=[KEPT, OVERFLOW])),
            order=alt.Order("slots:N", sort="ascending"),
            tooltip=["expert:O", "slots:N", "count:Q"],
        )
    )
    capacity = int(frame["capacity"].iloc[0])
    rule = alt.Chart(pd.DataFrame({"capacity": [capacity]})).mark_rule(color="black", strokeWidth=2, strokeDash=[6, 3])
    label = rule.mark_text(align="left", dx=4, dy=-6, fontSize=13).encode(
        text=alt.value(f"capacity C = {capacity}"), x=alt.value(0)
    )
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
            x=alt.X("start:Q", title="position in the sequence (bin start)"),
            y=alt.Y("value:Q", title="share dropped", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
            color=alt.Color("rate:N", title=None, scale=alt.Scale(range=[OVERFLOW, "#54A24B"])),
            tooltip=["start:Q", "end:Q", "tokens:Q", "rate:N", alt.Tooltip("value:Q", format=".1%")],
        )
        .properties(height=240, title=title)
    )
    return styled(chart)
