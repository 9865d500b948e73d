"""What the person running the server decides (not visitors): default model, device, remote code.

    python -m app -- --model mistralai/Mixtral-8x7B-v0.1 --device auto-map

A shared or public server should also set MOE_EXPLORER_ALLOWED_MODELS (see moe_core.models) to lock the model
list: without it any visitor may load any hub id or any model folder on the server (a path that is not a model
folder is refused with the same words whether or not it exists).

`--corpus-dir DIR` offers the corpora traced into folders under DIR (python -m moe_core trace-corpus, then
summarize) on a corpus page; visitors pick among those folders by name only, never a path of their own.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from functools import lru_cache

from moe_core.devices import DEVICE_CHOICES
from moe_core.models import DEMO_MODEL


@dataclass(frozen=True)
class OperatorOptions:
    model: str = DEMO_MODEL  # the model a visitor sees first
    device: str = "auto"
    trust_remote_code: bool = False
    corpus_dir: str | None = None  # folders of traced corpora under it are offered on the corpus page


@lru_cache(maxsize=1)
def operator_options(argv: tuple[str, ...] | None = None) -> OperatorOptions:
    """Options after `--` on the streamlit command line; unknown arguments are ignored, not fatal."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model", default=DEMO_MODEL)
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--corpus-dir", default=None)
    try:
        args, _ = parser.parse_known_args(list(argv if argv is not None else sys.argv[1:]))
    except SystemExit:  # a bad --device value: fall back rather than kill the server
        return OperatorOptions()
    return OperatorOptions(args.model, args.device, args.trust_remote_code, args.corpus_dir)
