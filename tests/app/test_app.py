"""The page as a whole: default view, share links, uploads, and every kind of bad input (no tracebacks)."""

from __future__ import annotations

import re
from html import unescape

import pytest

from app.state import encode_prompt
from moe_core.capture.record import trace
from moe_core.models import load_model
from moe_core.traces.io import to_json_text
from tests.app.conftest import page_html, run_app

pytestmark = pytest.mark.slow


def _assert_clean(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def test_opens_on_the_demo_model_with_a_preset_traced() -> None:
    """No input at all: the demo model routes the first preset and the routing view draws its chart."""
    at = run_app()
    _assert_clean(at)
    assert "demo-mixtral" in at.caption[0].value and "8 experts, top-2" in at.caption[0].value
    assert 'class="tok' in page_html(at)
    assert len(at.get("vega_lite_chart")) >= 1
    assert "text" in at.query_params


def test_share_link_restores_the_view() -> None:
    """Prompt, layer, capacity settings and view from the URL are what the widgets show, and are written back."""
    params = {"text": "Share this routing, please.", "layer": "2", "cf": "1.5", "policy": "score", "view": "routing"}
    at = run_app(params)
    _assert_clean(at)
    assert at.text_area(key="prompt").value == params["text"]
    assert at.select_slider(key="layer").value == 2
    assert at.slider(key="capacity_factor").value == 1.5 and at.radio(key="policy").value == "score"
    assert {k: at.query_params[k] for k in params if k != "view"} == {k: v for k, v in params.items() if k != "view"}
    assert not at.warning


def test_long_prompt_link_is_compressed_and_restored() -> None:
    """A long prompt travels compressed in the link and comes back exactly."""
    prompt = "for i in range(10):\n    print(i * i)\n" * 20
    at = run_app({"text": encode_prompt(prompt)})
    _assert_clean(at)
    assert at.text_area(key="prompt").value == prompt


def test_bad_link_values_fall_back_with_notices() -> None:
    """Unknown layer, garbage capacity factor and an unknown view: defaults, each with a visible notice."""
    at = run_app({"text": "hello", "layer": "99", "cf": "lots", "view": "nope"})
    _assert_clean(at)
    notices = " ".join(w.value for w in at.warning)
    assert "Layer 99 is not an MoE layer" in notices and "`cf=lots`" in notices and "`view=nope`" in notices
    assert at.select_slider(key="layer").value == 0


@pytest.mark.parametrize("prompt", ["", "   \n\t "])
def test_empty_prompt_asks_for_text(prompt: str) -> None:
    """Empty or blank text: a friendly prompt to type something, no chart, no error."""
    at = run_app({"text": "ok"}, setup=lambda at: at.text_area(key="prompt").set_value(prompt))
    _assert_clean(at)
    assert any("Type some text" in i.value for i in at.info)
    assert not at.get("vega_lite_chart") and not at.error


def test_huge_prompt_is_truncated_with_a_notice() -> None:
    """100,000 characters: routed up to the model's context, with a visible notice."""
    at = run_app({"text": "ok"}, setup=lambda at: at.text_area(key="prompt").set_value("tokens and experts " * 5300))
    _assert_clean(at)
    assert any("longer than the model's context" in w.value for w in at.warning)


def test_emoji_cjk_rtl_and_controls_render_as_text() -> None:
    """Emoji, CJK, right-to-left text and control characters come through; controls as visible symbols."""
    text = "Hi 🚀 東京 שלום مرحبا a\x00b\x07c"
    at = run_app({"text": "ok"}, setup=lambda at: at.text_area(key="prompt").set_value(text))
    _assert_clean(at)
    html = page_html(at)
    for piece in ("🚀", "東", "京", "ש", "م"):
        assert piece in html
    assert "\u2400" in html and "\u2407" in html and "\x00" not in html


def test_html_and_script_render_as_text() -> None:
    """Markup in the prompt is escaped: it shows as text and never becomes an element."""
    text = '<script>alert("x")</script><b>bold</b><img src=x onerror=alert(1)>'
    at = run_app({"text": "ok"}, setup=lambda at: at.text_area(key="prompt").set_value(text))
    _assert_clean(at)
    html = page_html(at)
    assert "<script" not in html and "<img" not in html and "<b>" not in html
    shown = "".join(re.findall(r'<span class="tok [^"]*"[^>]*>(.*?)</span>', html))
    assert unescape(shown) == text


def test_unknown_model_gets_a_message() -> None:
    """A hub id that cannot be loaded here: a plain error in the page."""
    at = run_app({"text": "hello", "model": "someone/unknown-moe"})
    _assert_clean(at)
    assert at.error and "Cannot use this model" in at.error[0].value


def test_dense_model_gets_a_message(dense_model_dir) -> None:
    """A dense model folder: 'is a dense model: no routers found'."""
    at = run_app({"text": "hello", "model": str(dense_model_dir)})
    _assert_clean(at)
    assert at.error and "dense model: no routers found" in at.error[0].value


def test_corrupt_uploaded_trace_gets_a_message() -> None:
    """A file that is not a trace: a plain error, nothing else drawn."""
    at = run_app(
        {"text": "hello"},
        setup=lambda at: at.file_uploader(key="upload").set_value(("trace.json", b"{broken", "application/json")),
    )
    _assert_clean(at)
    assert at.error and "not a routing trace" in at.error[0].value


def test_uploaded_trace_is_viewed_without_a_model() -> None:
    """A trace recorded elsewhere (e.g. by the CLI on a GPU server) renders as if traced here."""
    loaded = load_model()
    routing = trace(loaded.model, loaded.tokenizer, "A trace from another machine.", name="gpu-server-model")
    payload = to_json_text(routing).encode()
    at = run_app(
        {"text": "hello"},
        setup=lambda at: at.file_uploader(key="upload").set_value(("t.json", payload, "application/json")),
    )
    _assert_clean(at)
    assert "gpu-server-model" in at.caption[0].value and "uploaded trace" in at.caption[0].value
    assert "another" in page_html(at)


def test_presentation_mode_hides_chrome() -> None:
    """present=1 adds the presentation stylesheet (no sidebar, large type)."""
    at = run_app({"text": "hello", "present": "1"})
    _assert_clean(at)
    assert '[data-testid="stSidebar"]' in page_html(at)


def test_operator_allow_list_locks_the_model_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """With MOE_EXPLORER_ALLOWED_MODELS set, the model is a fixed choice and other ids from a link are refused."""
    monkeypatch.setenv("MOE_EXPLORER_ALLOWED_MODELS", "demo-mixtral")
    at = run_app({"text": "hello"})
    _assert_clean(at)
    assert at.selectbox(key="model").options == ["demo-mixtral"]
    locked = run_app({"text": "hello", "model": "someone/other-moe"})
    _assert_clean(locked)
    assert any("`someone/other-moe` is not offered here" in w.value for w in locked.warning)
    assert locked.selectbox(key="model").value == "demo-mixtral" and not locked.error


def test_continue_appends_the_models_own_writing_and_shows_its_routing() -> None:
    """The Continue button appends the model's greedy continuation (generate_trace, the routing it used while
    writing) to the text; the page shows that routing, says so, and marks the model's own tokens."""
    from moe_core.capture.generation import generate_trace
    from moe_core.models import load_model

    at = run_app({"text": "def fibonacci(n):\n"})
    _assert_clean(at)
    at.button(key="continue").click().run()
    _assert_clean(at)
    loaded = load_model()
    written = generate_trace(loaded.model, loaded.tokenizer, "def fibonacci(n):\n", 40)
    expected = written.texts[0]
    assert at.text_area(key="prompt").value == expected
    assert f"· {len(written.tokens)} tokens ·" in at.caption[0].value
    start = written.generated_from[0]
    assert any(f"Routing recorded while the model wrote: tokens {start}–" in c.value for c in at.caption)
    # The model's own writing is marked: exactly the tokens that start at or after the typed text's end.
    routing = written
    starts = routing.tokens.offsets[:, 0]
    expected_own = [unescape(t) for t, start in zip(routing.tokens.text, starts, strict=True)
                    if t and start >= len("def fibonacci(n):\n")]  # fmt: skip
    spans = re.findall(r'<span class="tok ([^"]*)"[^>]*>(.*?)</span>', page_html(at))
    tokens_only = [(classes.split(), text) for classes, text in spans if re.search(r"\bx(\d+|-)\b", classes)]
    own = [unescape(text) for classes, text in tokens_only if "own" in classes]  # the legend chip is no token
    assert len(own) == len(expected_own) > 0
    # the text is coloured by the generation's own first choices at layer 0, not by a re-trace's
    colours = [int(re.search(r"\bx(\d+)\b", " ".join(classes)).group(1)) for classes, _ in tokens_only]
    assert colours == [int(e) for e, t in zip(written.experts[0, :, 0], written.tokens.text, strict=True) if t]
    assert not any("fibonacci" in text for text in own)
    at.text_area(key="prompt").set_value(expected + " edited").run()  # an edited text is no longer the model's
    assert not any("own" in classes.split() for classes in re.findall(r'<span class="tok ([^"]*)"', page_html(at)))


def test_the_load_view_puts_the_prompt_beside_the_models_writing() -> None:
    """After Let the model continue, the load view adds the prompt's and the generated tokens' load side by side
    (phase_load_frame of the generation's trace: each phase's shares sum to 1); a typed text has no such chart."""
    import json

    import pyarrow.ipc

    def phase_charts(at):
        return [c for c in at.get("vega_lite_chart") if "the model's own writing" in json.dumps(
                json.loads(c.proto.spec).get("title", ""))]  # fmt: skip

    typed = run_app({"text": "def fibonacci(n):\n", "view": "load"})
    assert not phase_charts(typed)
    typed.button(key="continue").click().run()
    _assert_clean(typed)
    (chart,) = phase_charts(typed)
    rows = pyarrow.ipc.open_stream(chart.proto.datasets[0].data.data).read_pandas()
    assert rows.groupby("side")["share"].sum().tolist() == pytest.approx([1.0, 1.0])
    assert sorted(side.split(" (")[0] for side in set(rows["side"])) == ["generated", "prompt"]


def test_the_capacity_view_gives_decode_steps_their_own_capacity() -> None:
    """After Let the model continue, the capacity view says the last tokens were decode steps; with the group
    steps none of the model's own tokens loses its first choice (each step's C is one token's), at a capacity
    factor where the prompt's tokens do."""
    at = run_app({"text": "def fibonacci(n):\n    return fibonacci(n - 1) + fibonacci(n - 2)", "view": "capacity",
                  "cf": "0.25"})  # fmt: skip
    at.button(key="continue").click().run()
    _assert_clean(at)
    assert any("one decode step each: choose the capacity group steps" in c.value for c in at.caption)
    at.sidebar.radio(key="group").set_value("steps").run()
    _assert_clean(at)
    assert any("Capacity group steps: the prompt is one prefill group" in c.value for c in at.caption)
    box = next(m.value for m in at.markdown if 'class="routed-box' in str(m.value))
    marks = re.findall(r'class="tok x\d+ ?([^"]*)"', box)
    start = len(marks) - next(int(n) for n in re.findall(r"each of the (\d+) tokens", " ".join(c.value for c in
                                                                                             at.caption)))  # fmt: skip
    assert "drop1" in marks[:start] and "drop1" not in marks[start:]


def test_continue_on_an_empty_text_explains_itself() -> None:
    """Nothing to continue: a warning in the sidebar, the text stays empty, no traceback."""
    at = run_app({"text": " "})
    at.button(key="continue").click().run()
    _assert_clean(at)
    assert any("Cannot continue the text: empty text" in w.value for w in at.sidebar.warning)
    assert at.text_area(key="prompt").value == " "


def test_title_and_status_come_before_any_model_work() -> None:
    """The page title is drawn before the model is loaded: even when loading fails the visitor sees the app's
    title and a clear error, never a blank page."""
    at = run_app({"model": "no-such-org/no-such-model-here"})
    assert at.title[0].value == "MoE Routing Explorer"
    assert at.error and "Cannot use this model" in at.error[0].value
