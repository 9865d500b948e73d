"""Settings <-> URL: a share link reproduces the view; bad values fall back with a notice."""

from __future__ import annotations

import pytest

from app.state import COMPRESSED_PREFIX, Settings, decode_prompt, encode_prompt, from_query, to_query


def test_round_trip_through_the_url() -> None:
    """Every non-default setting survives to_query -> from_query unchanged."""
    settings = Settings(model="org/moe", prompt="hello", layer=3, view="capacity", capacity_factor=0.75,
                        policy="score", group="batch", token=7, present=True)  # fmt: skip
    restored, notices = from_query(to_query(settings))
    assert restored == settings and notices == []


def test_defaults_stay_out_of_the_link() -> None:
    """A link carries only what differs from the defaults (and the prompt)."""
    assert to_query(Settings(prompt="hi")) == {"text": "hi"}


def test_long_prompts_are_compressed_and_restored() -> None:
    """Prompts over the raw limit travel zlib+base64url, much shorter, and decode exactly."""
    prompt = "def f(x):\n    return x  # ünïcode 東京 🚀\n" * 200
    encoded = encode_prompt(prompt)
    assert encoded.startswith(COMPRESSED_PREFIX) and len(encoded) < len(prompt) / 4
    assert decode_prompt(encoded) == prompt


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"cf": "abc"}, "cf"),
        ({"cf": "0"}, "cf"),
        ({"cf": "inf"}, "cf"),
        ({"layer": "-2"}, "layer"),
        ({"layer": "two"}, "layer"),
        ({"view": "nope"}, "view"),
        ({"policy": "random"}, "policy"),
        ({"present": "maybe"}, "present"),
        ({"text": COMPRESSED_PREFIX + "!!!not-base64"}, "text"),
        ({"model": "   "}, "model"),
    ],
)
def test_bad_values_fall_back_with_a_notice(params: dict[str, str], key: str) -> None:
    """Each bad value is dropped for the default, and a notice names it."""
    settings, notices = from_query(params)
    assert settings == Settings()
    assert len(notices) == 1 and f"`{key}=" in notices[0]


def test_unknown_keys_are_ignored() -> None:
    """Parameters the app does not know (e.g. tracking tags) change nothing."""
    assert from_query({"utm_source": "x", "layer": "2"}) == (Settings(layer=2), [])
