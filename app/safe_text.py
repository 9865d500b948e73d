"""Echoing visitors' values safely: in Markdown (notices, captions, errors) and in token display.

Anything from a link, an upload or the text box is data, never markup: `?cf=%60![](http://x/y.png)` once
closed a code span in a notice and made every visitor's browser fetch an outside image.
"""

from __future__ import annotations

import re

# What can start markup inside a line: emphasis, code, links and images, HTML and entities, emoji codes and
# directives (:x:, :red[..]), math ($), strikethrough, tables, and www./x@y autolinks (the "." and "@").
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()<>!~$&|#.@]|:(?=\S))")  # ": " in prose can stay as it is
_LINE_START = re.compile(r"^([-+=])")  # a list or a heading underline, when the value starts the line
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029]+")
BIDI_CONTROLS = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_VISIBLE_BIDI = {code: f"[U+{code:04X}]" for code in BIDI_CONTROLS}


def one_line(value: object) -> str:
    """The value as one line (a line break in a notice could start a heading or a list)."""
    return _LINE_BREAKS.sub(" ", str(value))


def md_text(value: object) -> str:
    """Plain text for Markdown, on one line: each character that could start markup is backslash-escaped
    (CommonMark renders an escaped punctuation character as itself); hyphens and the like stay readable."""
    return _LINE_START.sub(r"\\\1", _MARKDOWN_PUNCTUATION.sub(r"\\\1", one_line(value)))


def md_code(value: object) -> str:
    """The value as an inline code span whose fence is longer than any run of backticks inside it, so the
    value cannot close the span (nothing inside a code span is interpreted)."""
    text = one_line(value)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""  # CommonMark drops one space each side
    return f"{fence}{pad}{text}{pad}{fence}"


def neutral_bidi(text: str) -> str:
    """Bidirectional controls (U+202E right-to-left override, isolates, marks) shown as [U+202E] labels, so a
    token cannot reverse or reorder the text drawn after it."""
    return text.translate(_VISIBLE_BIDI)
