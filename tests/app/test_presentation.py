"""Presentation mode a teacher can drive: a control bar in the page, large chart and table text, stamped downloads."""

from __future__ import annotations

import json
import re

import altair as alt
import pandas as pd
import pyarrow.ipc
import pytest
import vl_convert as vlc
from streamlit.testing.v1 import AppTest

from app.charts.common import FONT_SIZE, PRESENT_FONT_SIZE
from app.export import ChartStamp, export_spec
from app.view_registry import VIEWS
from tests.app.conftest import run_app

TEXT = "The teacher moves the layer while the class watches the routing change."


def _keys(block: object, kind: str) -> set[str]:
    return {widget.key for widget in getattr(block, kind)}


def _chart_configs(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec).get("config", {}) for chart in at.get("vega_lite_chart")]


def test_control_bar_holds_view_layer_capacity_factor_and_policy() -> None:
    """present=1 draws view, layer, capacity factor and policy in the page (the last two on the capacity view, the
    one that reads them), not in the hidden sidebar."""
    routing = run_app({"text": TEXT, "present": "1"})
    assert "layer" in _keys(routing.main, "select_slider") and not _keys(routing.main, "slider")
    assert "policy" not in _keys(routing.main, "radio") and not _keys(routing.sidebar, "select_slider")
    at = run_app({"text": TEXT, "present": "1", "view": "capacity"})
    assert not at.exception and not at.error
    main = at.main
    assert "layer" in _keys(main, "select_slider") and "capacity_factor" in _keys(main, "slider")
    assert "policy" in _keys(main, "radio") and at.segmented_control(key="view").value == "capacity"
    assert not {"layer", "capacity_factor"} & (_keys(at.sidebar, "select_slider") | _keys(at.sidebar, "slider"))
    assert "policy" not in _keys(at.sidebar, "radio")


def test_control_bar_values_reach_the_view_and_the_link() -> None:
    """Moving the bar's layer, capacity factor and policy redraws the capacity view with them and updates the URL."""
    at = run_app({"text": TEXT, "present": "1", "view": "capacity"})
    at.select_slider(key="layer").set_value(2)
    at.slider(key="capacity_factor").set_value(0.5)
    at.radio(key="policy").set_value("score")
    at.run()
    assert not at.exception and not at.error
    shown = "\n".join(m.value for m in at.markdown)
    assert "**Layer 2:** C = max(1, ⌈0.5 ·" in shown, shown[:2000]
    assert (at.query_params["layer"], at.query_params["cf"], at.query_params["policy"]) == ("2", "0.5", "score")


def test_exit_puts_the_controls_back_in_the_sidebar_with_their_values() -> None:
    """Exit presentation: the sidebar holds layer and capacity factor again, still at the values set in the bar."""
    at = run_app({"text": TEXT, "present": "1", "layer": "1", "cf": "1.5"})
    at.button(key="exit_present").click().run()
    assert not at.exception and at.toggle(key="present").value is False
    assert "layer" in _keys(at.sidebar, "select_slider") and "capacity_factor" in _keys(at.sidebar, "slider")
    assert at.select_slider(key="layer").value == 1 and at.slider(key="capacity_factor").value == 1.5


def test_chart_text_scales_with_the_mode() -> None:
    """Axis, legend, facet header and title fonts are PRESENT_FONT_SIZE in the mode and FONT_SIZE outside it."""
    for params, size in (({"text": TEXT, "view": "load"}, FONT_SIZE), ({"text": TEXT, "view": "load", "present": "1"},
                                                                         PRESENT_FONT_SIZE)):  # fmt: skip
        configs = _chart_configs(run_app(params))
        assert configs, params
        for config in configs:
            assert config["axis"]["labelFontSize"] == size and config["legend"]["labelFontSize"] == size
            assert config["header"]["labelFontSize"] == size and config["title"]["fontSize"] == size + 2


READABLE_PX = 16  # issue 20: axis labels, titles and legends from the back of a room at 1920×1080


def _font_sizes(vega: object) -> list[float]:
    """Every font size a compiled Vega spec sets (config, axes, legends, titles, marks)."""
    if isinstance(vega, dict):
        own = [v for k, v in vega.items() if (k == "fontSize" or k.endswith("FontSize")) and isinstance(v, int | float)]
        signal = [v["value"] for k, v in vega.items() if k == "fontSize" and isinstance(v, dict) and "value" in v]
        return own + signal + [size for value in vega.values() for size in _font_sizes(value)]
    if isinstance(vega, list):
        return [size for value in vega for size in _font_sizes(value)]
    return []


@pytest.mark.parametrize("view", list(VIEWS))
def test_every_chart_reads_at_16_px_in_the_mode(view: str) -> None:
    """In presentation mode every chart of every view, compiled to Vega, sizes axis labels and titles, legends and
    chart titles explicitly (Vega's own defaults are 10–11 px) and no text anywhere below 16 px, token labels
    under a column per token included."""
    at = run_app({"text": TEXT, "view": view, "present": "1"})
    charts = at.get("vega_lite_chart")
    assert not at.exception and charts, view
    for chart in charts:
        vega = vlc.vegalite_to_vega(json.loads(chart.proto.spec))
        config = vega["config"]
        assert config["axis"]["labelFontSize"] >= READABLE_PX and config["legend"]["labelFontSize"] >= READABLE_PX
        assert config["title"]["subtitleFontSize"] >= READABLE_PX
        assert min(_font_sizes(vega)) >= READABLE_PX, (view, sorted(set(_font_sizes(vega))))


def test_tables_become_html_tables_in_the_mode() -> None:
    """show_table's tables are st.table in the mode (CSS can enlarge them), with their labels and percentages;
    outside it the load view's balance table, whose columns carry help, is a grid."""
    assert run_app({"text": TEXT, "view": "load"}).dataframe
    assert not run_app({"text": TEXT, "view": "load", "present": "1"}).dataframe
    present = run_app({"text": TEXT, "present": "1"})
    assert present.table
    shown = pyarrow.ipc.open_stream(present.table[0].proto.arrow_data.styler.display_values).read_pandas()
    assert "same first choice" in present.table[0].value.columns and present.table[0].proto.hide_index
    assert all(re.fullmatch(r"\d+\.\d%", value) for value in shown.iloc[:, 1]), shown  # as st.dataframe shows them
    assert '[data-testid="stTable"] th' in "\n".join(m.value for m in present.markdown)


def _tables_page() -> None:
    import pandas as pd

    from app.components import HTML_TABLE_ROWS, show_table

    for rows in (HTML_TABLE_ROWS, HTML_TABLE_ROWS + 1):
        frame = pd.DataFrame({"share": [0.5] * rows, "rho": [0.51] * rows, "tokens": [7] * rows})
        show_table(frame, {"share": "share of slots"}, percent=("share",))
    show_table(pd.DataFrame({"share": [0.5]}), {"share": "share of slots"}, helps={"share": "of the top-k slots"})


def test_short_tables_are_html_and_long_or_annotated_ones_keep_the_grid() -> None:
    """Up to HTML_TABLE_ROWS rows without column help: an HTML table (no 1.2 MB grid script for the browser to
    load), percentages and other floats formatted as the grid formats them; one row more, or help on a column:
    st.dataframe."""
    from streamlit.testing.v1 import AppTest

    from app.components import HTML_TABLE_ROWS

    at = AppTest.from_function(_tables_page).run()
    assert not at.exception
    assert len(at.table) == 1 and at.table[0].value.columns.tolist() == ["share of slots", "rho", "tokens"]
    shown = pyarrow.ipc.open_stream(at.table[0].proto.arrow_data.styler.display_values).read_pandas()
    assert len(shown) == HTML_TABLE_ROWS
    assert [set(shown.iloc[:, column]) for column in range(3)] == [{"50.0%"}, {"0.510"}, {"7"}]
    assert [len(grid.value) for grid in at.dataframe] == [HTML_TABLE_ROWS + 1, 1]


def test_downloads_carry_the_settings_in_title_and_file_name() -> None:
    """A downloaded chart names model, layer, CF and policy in its subtitle (after the chart's own) and file name."""
    stamp = ChartStamp("org/Some MoE", 3, 1.25, "score")
    chart = alt.Chart(pd.DataFrame({"x": [1]})).mark_point().encode(x="x:Q")
    titled = chart.properties(title=alt.Title("Load", subtitle="dashed: even"))
    assert export_spec(titled, stamp)["title"] == {
        "text": "Load",
        "subtitle": ["dashed: even", "org/Some MoE · layer 3 · CF 1.25 · policy score"],
    }
    assert export_spec(chart.properties(title="Load"), stamp)["title"]["subtitle"] == stamp.line()
    assert export_spec(chart, stamp)["title"] == {"text": stamp.line()}
    assert stamp.file_name("expert-load", "png") == "expert-load_org-Some-MoE_layer3_cf1.25_score.png"
