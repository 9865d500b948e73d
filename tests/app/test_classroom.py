"""The classroom screen (issue 20) through AppTest: links that carry every switch a teacher sets, the grid's window
said beside its slider, and the routed text shown whole until it is long."""

from __future__ import annotations

import re

import pytest

from app.components import TEXT_FULL_TOKENS
from app.views.token_routing import GRID_WINDOW
from tests.app.conftest import page_html, run_app

LONG = " ".join(f"word{i}" for i in range(120))  # well past one grid window of the demo tokenizer


def _tokens(at) -> int:
    return int(re.search(r"· (\d+) tokens ·", at.caption[0].value).group(1))


def test_a_link_opens_the_grid_window_and_says_which_tokens_it_shows() -> None:
    at = run_app({"text": LONG, "grid": str(GRID_WINDOW)})
    assert not at.exception and not at.warning, [w.value for w in at.warning]
    total = _tokens(at)
    assert total > 2 * GRID_WINDOW
    assert at.slider(key="grid_start").value == GRID_WINDOW
    assert any(f"tokens {GRID_WINDOW}–{2 * GRID_WINDOW - 1} of {total}" in m.value for m in at.markdown)
    at.slider(key="grid_start").set_value(GRID_WINDOW // 2).run()
    assert at.query_params["grid"] == str(GRID_WINDOW // 2)
    assert any(f"tokens {GRID_WINDOW // 2}–{GRID_WINDOW // 2 + GRID_WINDOW - 1} of {total}" in m.value
               for m in at.markdown)  # fmt: skip


def test_the_grid_window_of_a_link_past_the_text_is_brought_back() -> None:
    at = run_app({"text": LONG, "grid": "100000"})
    assert not at.exception
    assert at.slider(key="grid_start").value == _tokens(at) - GRID_WINDOW


def test_a_link_carries_the_load_count() -> None:
    at = run_app({"text": "A short text for the class.", "view": "load", "count": "topk"})
    assert not at.exception and at.radio(key="load_count").value == "topk"
    at.radio(key="load_count").set_value("top1").run()
    assert "count" not in at.query_params  # the default leaves the link
    at.radio(key="load_count").set_value("topk").run()
    assert at.query_params["count"] == "topk"
    bad = run_app({"text": "A short text.", "view": "load", "count": "all"})
    assert bad.radio(key="load_count").value == "top1" and any("count=all" in w.value for w in bad.warning)


@pytest.mark.slow
def test_a_link_carries_the_capacity_bound_run() -> None:
    """capped=1 opens the capacity view with the capacity-bound forward on (its cascade drawn); the toggle writes
    the link."""
    at = run_app({"text": "Tokens queue for their experts, and the late ones are dropped.", "view": "capacity",
                  "cf": "0.75", "capped": "1"})  # fmt: skip
    assert not at.exception and at.toggle(key="capped_run").value is True
    assert at.query_params["capped"] == "1"
    at.toggle(key="capped_run").set_value(False).run()
    assert "capped" not in at.query_params


def test_text_is_whole_up_to_a_few_hundred_tokens_then_a_box_that_says_it_scrolls() -> None:
    short = run_app({"text": LONG})
    assert _tokens(short) <= TEXT_FULL_TOKENS
    html = page_html(short)
    assert '<div class="routed-box">' in html and "scroll it" not in html and "max-height" not in html
    longer = run_app({"text": " ".join([LONG] * 2)})
    count = _tokens(longer)
    assert count > TEXT_FULL_TOKENS
    html = page_html(longer)
    assert 'class="routed-box scrolls"' in html and f"{count:,} tokens in the box: scroll it" in html


def _marked(at) -> set[str]:
    """The loss marks on the routed text's spans (classes after the expert's)."""
    box = next(m.value for m in at.markdown if 'class="routed-box' in str(m.value))
    return {mark for classes in re.findall(r'class="tok x[-\d]+ ([^"]+)"', box) for mark in classes.split()}


def test_the_drops_text_marks_one_kind_of_loss_at_a_time() -> None:
    """CF 0.5: the marked text shows first-choice losses by default and only them; switching to "every slot
    dropped" shows only that mark, with how many tokens it is; the Δloss bars are offered once the capacity-bound
    run is on."""
    params = {"text": "Tokens queue for their experts, and the late ones are dropped.", "view": "capacity", "cf": "0.5"}
    at = run_app(params)
    assert not at.exception
    chooser = at.radio(key="drop_mark")
    assert chooser.options == ["first choice dropped", "a lower choice dropped", "every slot dropped"]
    assert _marked(at) == {"drop1"}
    chooser.set_value("dropall").run()
    assert _marked(at) == {"dropall"}
    assert re.search(r'<span class="tok dropall">every slot dropped</span>: \d+ of \d+ tokens', page_html(at))
    at.toggle(key="capped_run").set_value(True).run()
    assert not at.exception and "Δloss of the capacity-bound run" in at.radio(key="drop_mark").options


def test_every_view_opens_with_one_sentence_to_notice() -> None:
    """Each view's NOTICE is one plain sentence (no markup, one full stop at its end), drawn first on its page,
    before the collapsed detail; its SHORT_TITLE is one word for the presentation bar."""
    from app.view_registry import VIEWS, view_module

    for view in VIEWS:
        module = view_module(view)
        # a view whose sentence is worded from the model's data (Training) says which: page_notice(model)
        notice = getattr(module, "page_notice", lambda _, m=module: m.NOTICE)("demo-mixtral")
        assert notice.endswith(".") and notice.count(". ") == 0 and "*" not in notice and len(notice) <= 170, view
        assert " " not in module.SHORT_TITLE and module.SHORT_TITLE.lower() in module.TITLE.lower() + view, view
        at = run_app({"text": "The class reads one sentence first.", "view": view})
        html = page_html(at)
        assert f'<p class="notice">{notice}</p>' in html, view
        detail = at.expander[0]
        assert detail.label.startswith("What am I looking at?") and notice not in detail.markdown[0].value
