"""Token spans: colour by one CSS class per expert (a small payload), text escaped, marks kept."""

from __future__ import annotations

import re

from app.components import token_spans
from app.palette import expert_colors, text_color_on


def test_each_expert_class_has_its_palette_colour_and_each_token_its_class() -> None:
    texts, experts = ["a", "<b>", "c", "d"], [3, 0, -1, 3]
    markup = token_spans(texts, experts, ["#0", "#1", "#2", "#3"], 8, marks=["", "drop1", "", ""])
    colors = expert_colors(8)
    for expert in (0, 3):
        rule = f".tokens .x{expert}{{background:{colors[expert]};color:{text_color_on(colors[expert])}}}"
        assert rule in markup
    assert ".tokens .x-{background:#FFFFFF" in markup  # a dropped slot: white, dashed
    classes = re.findall(r'<span class="tok ([^"]*)"', markup)
    assert classes == ["x3", "x0 drop1", "x-", "x3"]
    assert "&lt;b&gt;" in markup and "<b>" not in markup  # token text is escaped


def test_payload_per_token_is_small() -> None:
    """No inline style per token: 1,000 tokens with tooltips like the app's take under 65 characters each (inline
    styles took ~102: the issue's 40% cut)."""
    texts = [f"w{n}" for n in range(1000)]
    titles = [f"#{n} E{n % 8} 0.62 · E{(n + 1) % 8} 0.38" for n in range(1000)]
    markup = token_spans(texts, [n % 8 for n in range(1000)], titles, 8)
    assert len(markup) / 1000 < 65
    assert "style=" not in markup.split("</style>", 1)[1]
