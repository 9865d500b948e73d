"""Hostile values from links and the model box: escaped, bounded, clamped or refused in plain words (issue 10).

Markdown is checked by rendering it with markdown-it (CommonMark), independently of how it was escaped.
"""

from __future__ import annotations

import base64
import os
import re
import tracemalloc
import zlib
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

import moe_core.models as models
from app.safe_text import md_code, md_text, neutral_bidi
from app.state import (
    CF_SLIDER_MAX,
    CF_SLIDER_MIN,
    COMPRESSED_PREFIX,
    LIBRARY_CF_RANGE,
    MAX_PROMPT_CHARS,
    Settings,
    encode_prompt,
    from_query,
    read_prompt,
)
from moe_core.capacity.simulate import check_capacity_factor
from moe_core.models import ModelLoadError, model_key, resolve

HOSTILE = [
    "`![](http://attacker.example/x.png)",
    "[click](http://attacker.example/)",
    "<img src=http://attacker.example/x.png>",
    "``` ![x](http://attacker.example/y.png) ```",
    "line\n\n# heading\n* item",
    ":red[alarm] :material/home: $x^2$ **bold** _it_ &amp;",
    "- a list item",
    "1. a numbered item",
    "+ plus | a | table |",
]


def _html(markdown: str) -> str:
    return MarkdownIt("commonmark").render(markdown)


def _as_rendered(value: str) -> str:
    """The value on one line (a run of line breaks is one space) as markdown-it writes text: &, <, > and " escaped."""
    for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;")):
        value = value.replace(char, entity)
    return re.sub(r"\n+", " ", value)


def _link(packed_bytes: bytes) -> str:
    return COMPRESSED_PREFIX + base64.urlsafe_b64encode(zlib.compress(packed_bytes, 9)).decode().rstrip("=")


@pytest.mark.parametrize("value", HOSTILE)
def test_md_text_renders_as_the_same_plain_text(value: str) -> None:
    """Escaped text renders as one paragraph of exactly the value's characters: no link, image, tag or emphasis."""
    assert _html(md_text(value)) == f"<p>{_as_rendered(value)}</p>\n"


@pytest.mark.parametrize("value", HOSTILE)
def test_md_code_cannot_be_closed_by_the_value(value: str) -> None:
    """A code span around the value holds all of it, backticks included, and nothing outside it becomes markup."""
    html = _html(f"Ignored {md_code(value)} from the link.")
    assert "<img" not in html and "<a " not in html and html.count("<code>") == 1
    inside = html.split("<code>")[1].split("</code>")[0]
    assert inside == _as_rendered(value)


@pytest.mark.parametrize(
    ("key", "value"), [("cf", "`![](http://attacker.example/x.png)"), ("policy", "[a](http://b.c)")]
)
def test_link_notices_render_without_live_links(key: str, value: str) -> None:
    """?cf= and ?policy= values that try to break out of the notice's code span stay inside it."""
    _, notices = from_query({key: value})
    html = _html(notices[0])
    assert len(notices) == 1 and "<img" not in html and "<a " not in html


def test_bidi_controls_become_labels() -> None:
    """U+202E and the other bidi controls are replaced by visible labels; other text is untouched."""
    assert neutral_bidi("abc\u202edef\u2066g\u200fשלום") == "abc[U+202E]def[U+2066]g[U+200F]שלום"


@pytest.mark.parametrize(("raw", "shown"), [("8", 4.0), ("64", 4.0), ("0.1", 0.25), ("0.0001", 0.25)])
def test_capacity_factor_from_a_link_is_clamped_to_the_slider(raw: str, shown: float) -> None:
    """Valid for the library but outside the slider: clamped to its nearest end, with a notice saying so."""
    settings, notices = from_query({"cf": raw})
    assert settings.capacity_factor == shown and len(notices) == 1
    assert ("maximum" if float(raw) > shown else "minimum") in notices[0]


def test_capacity_factor_inside_the_slider_is_kept_silently() -> None:
    """1.55 is on the slider: no change, no notice."""
    assert from_query({"cf": "1.55"}) == (Settings(capacity_factor=1.55), [])


def test_slider_range_lies_inside_the_librarys() -> None:
    """Both ends of the slider are factors the library accepts (one source: the library's bounds)."""
    low, high = LIBRARY_CF_RANGE
    assert low < CF_SLIDER_MIN < CF_SLIDER_MAX <= high
    check_capacity_factor(CF_SLIDER_MIN)
    check_capacity_factor(CF_SLIDER_MAX)


def test_compressed_link_bomb_is_bounded() -> None:
    """25M characters in a ~25 KB link: decompressed only as far as the cap needs, cut, and flagged."""
    link = _link(b"z " * 12_500_000)
    assert len(link) < 60_000
    tracemalloc.start()
    prompt, cut = read_prompt(link)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert cut and prompt == ("z " * (MAX_PROMPT_CHARS // 2))
    assert peak < 10 * MAX_PROMPT_CHARS  # a few MB, not the 25 MB (or 8.5 GB) of inflating it all


def test_link_at_the_cap_is_not_flagged() -> None:
    """Exactly MAX_PROMPT_CHARS characters (multi-byte ones) come back whole, with no cut notice."""
    text = "é" * MAX_PROMPT_CHARS
    assert read_prompt(encode_prompt(text)) == (text, False)
    settings, notices = from_query({"text": encode_prompt(text)})
    assert settings.prompt == text and notices == []


def test_cut_link_text_gets_a_notice() -> None:
    """A link's text over the cap is cut to it, and the page is told."""
    settings, notices = from_query({"text": _link(("λ" * (MAX_PROMPT_CHARS + 10)).encode())})
    assert settings.prompt == "λ" * MAX_PROMPT_CHARS
    assert len(notices) == 1 and f"{MAX_PROMPT_CHARS:,} characters" in notices[0]


def test_truncated_compressed_stream_is_damaged() -> None:
    """A compressed prompt cut short in transit is 'damaged', not silently shortened."""
    link = _link(os.urandom(3000).hex().encode())
    settings, notices = from_query({"text": link[:-200]})
    assert settings.prompt == "" and "damaged" in notices[0]


@pytest.mark.parametrize("model_id", ["m" * 300, "org/" + "n" * 300, "/tmp/" + "d" * 300, "a\x00b", "~nosuchuser/m"])
def test_unloadable_strings_are_not_a_model(model_id: str) -> None:
    """Over-long names (OSError: File name too long), NUL bytes, unknown ~users: 'not a model', one line."""
    with pytest.raises(ModelLoadError, match="not a model") as caught:
        resolve(model_id)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400


def test_existing_and_missing_folders_get_the_same_words(tmp_path: Path) -> None:
    """A server folder that exists but is not a model reads exactly like one that does not exist."""
    (tmp_path / "exists").mkdir()
    messages = []
    for name in ("exists", "gone"):
        with pytest.raises(ModelLoadError) as caught:
            resolve(str(tmp_path / name))
        messages.append(str(caught.value).replace(name, "X"))
    assert messages[0] == messages[1]


def test_spellings_of_one_folder_share_one_key(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """./m, m/, m//, an absolute path and a ~ path name one folder: one cache key, its resolved path."""
    monkeypatch.chdir(tiny_model_dir.parent)
    monkeypatch.setenv("HOME", str(tiny_model_dir.parent))
    name = tiny_model_dir.name
    spellings = [
        f"./{name}",
        f"{name}/",
        f"{name}//",
        f" {tiny_model_dir} ",
        f"~/{name}",
        f"../{tiny_model_dir.parent.name}/{name}",
    ]
    assert {model_key(s) for s in spellings} == {str(tiny_model_dir.resolve())}


def test_bundled_name_is_its_own_key() -> None:
    """The demo model's key is its name (what the page and traces show), not its folder."""
    assert model_key(f"  {models.DEMO_MODEL} ") == models.DEMO_MODEL


def test_allow_list_matches_any_spelling_of_a_listed_folder(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a folder on the allow-list, its resolved key (what the app passes on) is allowed; others are not."""
    monkeypatch.setenv(models.ALLOWED_MODELS_ENV, f"{tiny_model_dir}/")
    assert resolve(model_key(f"{tiny_model_dir}/")) == str(tiny_model_dir.resolve())
    with pytest.raises(ModelLoadError, match="not allowed here"):
        resolve(str(tiny_model_dir.parent))
