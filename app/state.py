"""The app's settings: one typed object, read from and written to the URL so a link reproduces the view.

Bad or unknown URL values fall back to defaults, each with a notice the page shows.
"""

from __future__ import annotations

import base64
import codecs
import math
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace

from app.safe_text import md_code, md_text
from app.view_registry import VIEWS
from moe_core.capacity.simulate import CAPACITY_FACTOR_MAX, CAPACITY_FACTOR_MIN, GROUPS, POLICIES, check_capacity_factor
from moe_core.models import DEMO_MODEL

COMPRESSED_PREFIX = "z."  # prompts longer than RAW_PROMPT_LIMIT travel zlib-compressed, base64url
RAW_PROMPT_LIMIT = 300
MAX_PROMPT_CHARS = 200_000  # longer texts (typed, from a link, continued) are cut here, with a notice
MAX_INDEX = 2**31 - 1  # layer and token numbers from a link; larger ones are typos or probes
# The capacity-factor slider's range: the URL clamps to it. Inside the library's (MIN, MAX], which the CLI takes
# whole; tests/unit/test_hostile_inputs.py keeps the two in step.
CF_SLIDER_MIN, CF_SLIDER_MAX, CF_SLIDER_STEP = 0.25, 4.0, 0.05
LIBRARY_CF_RANGE = (CAPACITY_FACTOR_MIN, CAPACITY_FACTOR_MAX)


@dataclass(frozen=True)
class Settings:
    model: str = DEMO_MODEL
    prompt: str = ""
    layer: int = 0  # the model's own layer index of an MoE layer
    view: str = "routing"
    capacity_factor: float = 1.0
    policy: str = "position"
    group: str = "sequence"
    token: int = 0  # token picked for the gate-weight distribution
    present: bool = False  # presentation mode: no chrome, large type
    compare_with: str = "dtype"  # the Compare view's side B: a key of COMPARE_SIDES
    compare_model: str = ""  # side B's model ("" : the page's own)
    compare_revision: str = ""  # side B's hub revision ("" : none)
    compare_dtype: str = "bfloat16"  # side B's weights when comparing dtypes
    capped_run: bool = False  # the capacity view also runs the model capacity-bound
    load_count: str = "top1"  # the load view counts first choices ("top1") or every top-k slot ("topk")
    grid_start: int = 0  # the first token of the token × layer grid's window
    series_step: int = 0  # the Training view's checkpoint (a step of the series; the nearest one is shown)
    series_text: int = 0  # the Training view's text (its index in the series' text set)


COMPARE_SIDES = {  # the Compare view's second side -> how the page names it
    "dtype": "the same model in another dtype",
    "model": "another model or revision",
    "upload": "an uploaded trace or dump",
}
COMPARE_DTYPES = ("float32", "bfloat16", "float16")  # moe_core.models.DTYPES' names
LOAD_COUNTS = ("top1", "topk")  # the load view's Count: first choices, or every top-k slot
INDEX_FIELDS = ("layer", "token", "grid_start", "series_step", "series_text")  # whole numbers from 0
FLAG_FIELDS = ("present", "capped_run")  # 1 or 0 in a link


INPUT_FIELDS = ("model", "prompt")  # what the page traces; the rest says how it is shown
URL_KEYS = {  # field -> short URL key
    "model": "model",
    "prompt": "text",
    "layer": "layer",
    "view": "view",
    "capacity_factor": "cf",
    "policy": "policy",
    "group": "group",
    "token": "token",
    "present": "present",
    "compare_with": "vs",
    "compare_model": "vs_model",
    "compare_revision": "vs_rev",
    "compare_dtype": "vs_dtype",
    "capped_run": "capped",
    "load_count": "count",
    "grid_start": "grid",
    "series_step": "step",
    "series_text": "stext",
}


def encode_prompt(prompt: str) -> str:
    if len(prompt) <= RAW_PROMPT_LIMIT:
        return prompt
    packed = base64.urlsafe_b64encode(zlib.compress(prompt.encode("utf-8"), 9)).decode("ascii").rstrip("=")
    return COMPRESSED_PREFIX + packed


def _inflate(packed: str, max_chars: int) -> tuple[str, bool]:
    """A compressed prompt, decompressed no further than max_chars can need (a 32 KB link once inflated to
    25M characters): (text, whether it was cut)."""
    max_bytes = 4 * max_chars + 4  # UTF-8 needs at most 4 bytes a character
    inflater = zlib.decompressobj()
    raw = inflater.decompress(base64.urlsafe_b64decode(packed + "=" * (-len(packed) % 4)), max_bytes)
    cut = len(raw) >= max_bytes and not inflater.eof
    if not (cut or inflater.eof):
        raise zlib.error("incomplete stream")
    text = codecs.getincrementaldecoder("utf-8")().decode(raw, final=not cut)  # a cut may split a character
    return text[:max_chars], cut or len(text) > max_chars


def read_prompt(value: str, max_chars: int = MAX_PROMPT_CHARS) -> tuple[str, bool]:
    """A link's prompt (plain or compressed) and whether it was cut to max_chars; ValueError when damaged."""
    if not value.startswith(COMPRESSED_PREFIX):
        return value[:max_chars], len(value) > max_chars
    try:
        return _inflate(value[len(COMPRESSED_PREFIX) :], max_chars)
    except (ValueError, zlib.error, UnicodeDecodeError) as error:
        raise ValueError("the prompt in the link is damaged") from error


def decode_prompt(value: str) -> str:
    """Inverse of encode_prompt (up to MAX_PROMPT_CHARS); raises ValueError on a damaged compressed prompt."""
    return read_prompt(value)[0]


def clamp_capacity_factor(value: float) -> tuple[float, str | None]:
    """A finite capacity factor moved into the slider's range, and a notice when it had to move."""
    clamped = min(max(value, CF_SLIDER_MIN), CF_SLIDER_MAX)
    if clamped == value:
        return value, None
    side = "below the slider's minimum" if value < CF_SLIDER_MIN else "above the slider's maximum"
    return clamped, f"{md_code(f'cf={value:g}')} from the link is {side}; showing {clamped:g}."


def _parse(name: str, raw: str) -> object:
    """One URL value as the field's type, or ValueError saying why not."""
    if name in INDEX_FIELDS:
        value = int(raw)
        if not 0 <= value <= MAX_INDEX:
            raise ValueError(f"must be between 0 and {MAX_INDEX}")
        return value
    if name == "capacity_factor":
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        check_capacity_factor(value)  # the library's range: outside it the value is ignored, inside it clamped
        return value
    if name in FLAG_FIELDS:
        if raw not in {"0", "1", "true", "false"}:
            raise ValueError("must be 1 or 0")
        return raw in {"1", "true"}
    choices = {"view": VIEWS, "policy": POLICIES, "group": GROUPS, "compare_with": tuple(COMPARE_SIDES),
               "compare_dtype": COMPARE_DTYPES, "load_count": LOAD_COUNTS}.get(name)  # fmt: skip
    if choices is not None and raw not in choices:
        raise ValueError(f"must be one of {', '.join(choices)}")
    if not raw.strip():
        raise ValueError("is empty")
    return raw


def _ignored(key: str, raw: str, error: ValueError) -> str:
    """The notice for a link value that was not used; the value and the reason are escaped (they are the link's)."""
    reason = str(error).split(";")[0]
    return f"Ignored {md_code(f'{key}={raw[:40]}')} from the link ({md_text(reason)}); using the default."


def prompt_cut_notice(where: str) -> str:
    """Said whenever a text is cut to MAX_PROMPT_CHARS (never silently)."""
    limit = f"{MAX_PROMPT_CHARS:,}"
    return f"The text {where} is longer than {limit} characters: only the first {limit} are used."


def _read(name: str, raw: str) -> tuple[object, str | None]:
    """One URL value, moved into its widget's range where needed, and the notice saying so."""
    if name == "prompt":
        prompt, cut = read_prompt(raw)
        return prompt, prompt_cut_notice("in the link") if cut else None
    value = _parse(name, raw)
    if name == "capacity_factor":
        return clamp_capacity_factor(value)  # type: ignore[arg-type]
    return value, None


def from_query(params: Mapping[str, str], defaults: Settings | None = None) -> tuple[Settings, list[str]]:
    """Settings from URL parameters, plus a notice for every value that was ignored, clamped or cut."""
    settings = defaults or Settings()
    notices: list[str] = []
    values = {}
    for field in fields(Settings):
        key = URL_KEYS[field.name]
        if key not in params:
            continue
        raw = str(params[key])
        try:
            values[field.name], notice = _read(field.name, raw)
        except ValueError as error:
            notice = _ignored(key, raw, error)
        if notice:
            notices.append(notice)
    return replace(settings, **values), notices


def to_query(settings: Settings, defaults: Settings | None = None, with_input: bool = True) -> dict[str, str]:
    """URL parameters for a share link: every field that differs from the defaults (the prompt always).

    with_input=False leaves out the model and the text: the page shows an uploaded trace, which no link carries.
    """
    base = asdict(defaults or Settings())
    query: dict[str, str] = {}
    for name, value in asdict(settings).items():
        if name in INPUT_FIELDS and not with_input:
            continue
        if name != "prompt" and value == base[name]:
            continue
        if isinstance(value, bool):
            query[URL_KEYS[name]] = "1" if value else "0"
        elif name == "prompt":
            query[URL_KEYS[name]] = encode_prompt(value)
        else:
            query[URL_KEYS[name]] = str(value)
    return query
