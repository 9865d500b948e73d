"""The app's settings: one typed object, read from and written to the URL so a link reproduces the view.

Bad or unknown URL values fall back to defaults, each with a notice the page shows.
"""

from __future__ import annotations

import base64
import math
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace

from moe_core.capacity import GROUPS, POLICIES, check_capacity_factor
from moe_core.models import DEMO_MODEL

VIEWS = ("routing", "gates", "load", "capacity", "flow")
COMPRESSED_PREFIX = "z."  # prompts longer than RAW_PROMPT_LIMIT travel zlib-compressed, base64url
RAW_PROMPT_LIMIT = 300


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
}


def encode_prompt(prompt: str) -> str:
    if len(prompt) <= RAW_PROMPT_LIMIT:
        return prompt
    packed = base64.urlsafe_b64encode(zlib.compress(prompt.encode("utf-8"), 9)).decode("ascii").rstrip("=")
    return COMPRESSED_PREFIX + packed


def decode_prompt(value: str) -> str:
    """Inverse of encode_prompt; raises ValueError on a damaged compressed prompt."""
    if not value.startswith(COMPRESSED_PREFIX):
        return value
    packed = value[len(COMPRESSED_PREFIX) :]
    try:
        return zlib.decompress(base64.urlsafe_b64decode(packed + "=" * (-len(packed) % 4))).decode("utf-8")
    except (ValueError, zlib.error, UnicodeDecodeError) as error:
        raise ValueError("the prompt in the link is damaged") from error


def _parse(name: str, raw: str) -> object:
    """One URL value as the field's type, or ValueError saying why not."""
    if name == "prompt":
        return decode_prompt(raw)
    if name in {"layer", "token"}:
        value = int(raw)
        if value < 0:
            raise ValueError("must be 0 or more")
        return value
    if name == "capacity_factor":
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        check_capacity_factor(value)
        return value
    if name == "present":
        if raw not in {"0", "1", "true", "false"}:
            raise ValueError("must be 1 or 0")
        return raw in {"1", "true"}
    choices = {"view": VIEWS, "policy": POLICIES, "group": GROUPS}.get(name)
    if choices is not None and raw not in choices:
        raise ValueError(f"must be one of {', '.join(choices)}")
    if not raw.strip():
        raise ValueError("is empty")
    return raw


def from_query(params: Mapping[str, str], defaults: Settings | None = None) -> tuple[Settings, list[str]]:
    """Settings from URL parameters, plus a notice for every value that was ignored."""
    settings = defaults or Settings()
    notices: list[str] = []
    values = {}
    for field in fields(Settings):
        key = URL_KEYS[field.name]
        if key not in params:
            continue
        try:
            values[field.name] = _parse(field.name, str(params[key]))
        except ValueError as error:
            shown = str(params[key])[:40]
            notices.append(f"Ignored `{key}={shown}` from the link ({str(error).split(';')[0]}); using the default.")
    return replace(settings, **values), notices


def to_query(settings: Settings, defaults: Settings | None = None) -> dict[str, str]:
    """URL parameters for a share link: every field that differs from the defaults (the prompt always)."""
    base = asdict(defaults or Settings())
    query: dict[str, str] = {}
    for name, value in asdict(settings).items():
        if name != "prompt" and value == base[name]:
            continue
        if isinstance(value, bool):
            query[URL_KEYS[name]] = "1" if value else "0"
        elif name == "prompt":
            query[URL_KEYS[name]] = encode_prompt(value)
        else:
            query[URL_KEYS[name]] = str(value)
    return query
