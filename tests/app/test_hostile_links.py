"""Hostile links, uploads and texts in the running page: no traceback, and every notice says what happened.

Each case gave a traceback, a live outside link or a silent switch of input before (issue 10 §1 and §5).
"""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from streamlit.testing.v1 import AppTest

import moe_core.traces.io as trace_io
from app.state import MAX_PROMPT_CHARS
from moe_core.traces.io import MAX_TRACE_MB, to_json_dict
from moe_core.traces.synthetic import random_trace
from tests.app.conftest import page_html, run_app

pytestmark = pytest.mark.slow
ATTACKER = "attacker.example"


def _assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _rendered(at: AppTest) -> str:
    """Every warning, error, info and caption of the page, rendered as CommonMark HTML."""
    elements = [*at.warning, *at.error, *at.info, *at.caption, *at.sidebar.warning]
    return "\n".join(MarkdownIt("commonmark").render(str(e.value)) for e in elements)


def _upload(payload: bytes, name: str = "t.json"):
    return lambda at: at.file_uploader(key="upload").set_value((name, payload, "application/json"))


def _trace_json(**model: object) -> bytes:
    """A valid synthetic trace (8 experts, top-2, 2 layers) as JSON, with model fields replaced."""
    data = json.loads(json.dumps(to_json_dict(random_trace([6, 4], num_experts=8, top_k=2, num_layers=2, seed=3))))
    data["model"].update(model)
    return json.dumps(data).encode()


@pytest.mark.parametrize(("raw", "shown", "end"), [("8", 4.0, "maximum"), ("64", 4.0, "maximum"),
                                                   ("0.1", 0.25, "minimum"), ("0.0001", 0.25, "minimum")])  # fmt: skip
def test_capacity_factor_out_of_the_sliders_range_is_clamped(raw: str, shown: float, end: str) -> None:
    """?cf=8 / 64 / 0.1 / 0.0001 raised StreamlitValueAbove/BelowMinError; now the slider shows its nearest end."""
    at = run_app({"text": "hello there", "cf": raw})
    _assert_clean(at)
    assert at.slider(key="capacity_factor").value == shown
    assert any(f"slider's {end}" in w.value for w in at.warning)
    assert float(at.query_params["cf"]) == shown


@pytest.mark.parametrize(("key", "value"), [("cf", "`![](http://attacker.example/x.png)"),
                                            ("policy", "`[click](http://attacker.example/)`")])  # fmt: skip
def test_link_values_echoed_in_notices_stay_text(key: str, value: str) -> None:
    """A value that closes the notice's code span renders no image or link (the browser would fetch it)."""
    at = run_app({"text": "hello", key: value})
    _assert_clean(at)
    html = _rendered(at)
    assert ATTACKER in html and "<img" not in html and "<a " not in html


def test_uploaded_model_name_and_notes_stay_text() -> None:
    """An uploaded trace's model name, architecture and notes are shown as text, never as Markdown."""
    payload = _trace_json(
        name="![](http://attacker.example/x.png)", architecture="[a](http://attacker.example)",
        notes=["[click me](http://attacker.example/)", "<img src=http://attacker.example/y.png>"],
    )  # fmt: skip
    at = run_app({"text": "hello"}, setup=_upload(payload))
    _assert_clean(at)
    html = _rendered(at)
    assert html.count(ATTACKER) >= 4 and "<img" not in html and "<a " not in html


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (_trace_json(num_experts=0), "model.num_experts must be between 1"),
        (_trace_json(num_experts=True), "model.num_experts must be a whole number, got true/false"),
        (_trace_json(moe_layers=[[0], [1]]), "model.moe_layers must be a whole number, got a list"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_hostile_upload_gets_its_reason(payload: bytes, reason: str) -> None:
    """A bad trace file: one error naming the reason (escaped), no traceback, no chart."""
    at = run_app({"text": "hello"}, setup=_upload(payload))
    _assert_clean(at)
    assert len(at.error) == 1 and "not a routing trace" in at.error[0].value
    assert reason in MarkdownIt("commonmark").render(at.error[0].value).replace("\\", "")
    assert not at.get("vega_lite_chart")


def test_upload_with_a_far_position_is_refused() -> None:
    """One position of 5e7 (the capacity view once allocated 5.5 GB for it) is refused before any view runs."""
    data = json.loads(_trace_json())
    data["tokens"][3]["position"] = 50_000_000
    at = run_app({"text": "hello", "view": "capacity"}, setup=_upload(json.dumps(data).encode()))
    _assert_clean(at)
    assert "position 50000000" in at.error[0].value


def test_upload_naming_a_known_model_with_ids_outside_its_vocabulary_is_refused() -> None:
    """A trace that says it comes from the bundled demo model but holds an id its vocabulary cannot have is refused
    with the id and the vocabulary size; the same ids under an unknown model's name are accepted (no tokenizer)."""
    from moe_core.models import DEMO_MODEL, bundled_vocabulary_size

    vocabulary = bundled_vocabulary_size(DEMO_MODEL)
    data = json.loads(_trace_json(name=DEMO_MODEL))
    data["tokens"][2]["id"] = vocabulary
    at = run_app({"text": "hello"}, setup=_upload(json.dumps(data).encode()))
    _assert_clean(at)
    refusal = at.error[0].value.replace("\\", "")  # Markdown-escaped parentheses
    assert f"token 2 has id {vocabulary}, outside the vocabulary of {DEMO_MODEL} ({vocabulary} ids)" in refusal
    data["model"]["name"] = "someone-elses-model"
    at = run_app({"text": "hello"}, setup=_upload(json.dumps(data).encode()))
    _assert_clean(at)
    assert not at.error and at.get("vega_lite_chart")


def test_upload_box_states_and_sets_the_size_limit() -> None:
    """The upload box carries the documented limit (the browser enforces it) and says it in its label."""
    at = run_app({"text": "hello"})
    box = at.get("file_uploader")[0]
    assert box.proto.max_upload_size_mb == MAX_TRACE_MB and f"{MAX_TRACE_MB} MB" in box.proto.label


@pytest.mark.parametrize("where", ["link", "box"])
def test_very_long_model_name_is_not_a_model(where: str) -> None:
    """300+ characters (OSError: File name too long before), from a link or typed in the box: a plain error."""
    name = "/models/" + "x" * 300
    if where == "link":
        at = run_app({"text": "hello", "model": name})
    else:
        at = run_app({"text": "hello"}, setup=lambda at: at.text_input(key="model").set_value(name))
    _assert_clean(at)
    assert at.error and "not a model" in at.error[0].value


def test_server_paths_read_alike_whether_or_not_they_exist(tmp_path: Path) -> None:
    """A folder that exists but is not a model and one that does not exist give the same error."""
    (tmp_path / "secret").mkdir()
    errors = []
    for name in ("secret", "absent"):
        at = run_app({"text": "hello", "model": str(tmp_path / name)})
        _assert_clean(at)
        errors.append(at.error[0].value.replace(name, "X"))
    assert errors[0] == errors[1] and "not available" in errors[0]


def test_compressed_link_bomb_is_cut_with_a_notice() -> None:
    """A ~25 KB link that inflates to 25M characters: the page uses the first 200,000 and says so."""
    packed = base64.urlsafe_b64encode(zlib.compress(b"z " * 12_500_000, 9)).decode().rstrip("=")
    at = run_app({"text": "z." + packed})
    _assert_clean(at)
    assert len(at.text_area(key="prompt").value) == MAX_PROMPT_CHARS
    assert any(f"{MAX_PROMPT_CHARS:,} characters" in w.value for w in at.warning)


def test_typed_text_over_the_cap_is_cut_with_a_notice() -> None:
    """The box no longer drops an over-long paste silently: the text is cut to the cap and the sidebar says so."""
    at = run_app({"text": "ok"}, setup=lambda at: at.text_area(key="prompt").set_value("ab " * 70_000))
    _assert_clean(at)
    assert at.text_area(key="prompt").value == ("ab " * 70_000)[:MAX_PROMPT_CHARS]
    assert any("in the box is longer than" in w.value for w in at.sidebar.warning)


def test_bidi_override_in_a_token_is_neutralised() -> None:
    """U+202E (right-to-left override) in the text shows as a label in the token spans, never as the control."""
    at = run_app({"text": "ok"}, setup=lambda at: at.text_area(key="prompt").set_value("cost \u202e01$ total"))
    _assert_clean(at)
    html = page_html(at)
    assert "[U+202E]" in html and "\u202e" not in html


def test_changing_the_text_after_an_upload_shows_the_text_and_says_so() -> None:
    """With a trace uploaded the page says it shows the file and the link drops the text; editing the text
    switches the page to the text, says so, and puts the text back in the link."""
    at = run_app({"text": "hello"}, setup=_upload(_trace_json(name="uploaded-model")))
    _assert_clean(at)
    assert "uploaded-model" in at.caption[0].value and "text" not in at.query_params
    assert any("Showing the uploaded trace" in i.value for i in at.info)
    at.text_area(key="prompt").set_value("Now route this sentence instead.").run()
    _assert_clean(at)
    assert "demo-mixtral" in at.caption[0].value and at.radio(key="source").value == "text"
    assert any("Showing the text in the sidebar" in i.value for i in at.info)
    assert at.query_params["text"] == "Now route this sentence instead."


def test_picking_a_preset_after_an_upload_shows_the_preset() -> None:
    """A preset chosen while a trace is uploaded is what the page then routes (it silently kept the upload)."""
    at = run_app({"text": "hello"}, setup=_upload(_trace_json(name="uploaded-model")))
    preset = at.selectbox(key="preset")
    preset.set_value(preset.options[0]).run()
    _assert_clean(at)
    assert "demo-mixtral" in at.caption[0].value and at.radio(key="source").value == "text"
    assert at.query_params["text"] == at.text_area(key="prompt").value


def test_uploaded_trace_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Switching views with the same upload does not parse the file again."""
    calls = []
    real = trace_io.load_trace_bytes
    monkeypatch.setattr(trace_io, "load_trace_bytes", lambda *a: calls.append(a[1]) or real(*a))
    at = run_app({"text": "hello"}, setup=_upload(_trace_json()))
    for view in ("load", "flow", "routing"):
        at.segmented_control(key="view").set_value(view).run()
        _assert_clean(at)
    assert calls == ["t.json"]
