"""`python -m app [streamlit options] [-- operator options]`: the app, with its model loaded at server start.

`streamlit run app/main.py` loads the model when the first visitor arrives, so that visitor waits for the load
and the first trace (about 10 s cold on 2 cores). Started this way, the server loads the operator's model, traces
the default text and the built-in batches in a background thread while it starts listening; a visitor who comes
earlier sees the title and a loading status, then the charts as soon as the load is done.

    python -m app                                   # the bundled demo model
    python -m app --server.port 8502 -- --model mistralai/Mixtral-8x7B-v0.1 --device auto-map
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path

MAIN_SCRIPT = Path(__file__).resolve().parent / "main.py"
# A served app does not watch its own source: Streamlit's polling watcher wakes a task per source file every
# 0.2 s, work a server does not need on the cores its visitors share. Options given on the command line come
# later and win (`--server.fileWatcherType auto` while editing the app).
SERVER_DEFAULTS = ("--server.fileWatcherType", "none")


def split_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(streamlit's options, the operator's options after `--`)."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def streamlit_argv(streamlit_options: Sequence[str], operator: Sequence[str]) -> list[str]:
    """What `streamlit run` is given: its options, the script, and the operator's options for the script."""
    script = [str(MAIN_SCRIPT), *(["--", *operator] if operator else [])]
    return ["streamlit", "run", *SERVER_DEFAULTS, *streamlit_options, *script]


def _preload(operator: tuple[str, ...]) -> None:
    from app.loading import preload, presets
    from app.operator import operator_options
    from moe_core.models import model_key

    try:
        model_id = model_key(operator_options(operator).model)
        preload(model_id, next(iter(presets().values())))
        print(f"preloaded {model_id}: the model, the default text and the built-in batches", file=sys.stderr)
    except Exception:  # the server still starts; the first visitor then sees the same error, in the page
        print("preloading the model failed:", file=sys.stderr)
        traceback.print_exc()


def main() -> None:
    streamlit_options, operator = split_arguments(sys.argv[1:])
    threading.Thread(target=_preload, args=(tuple(operator),), name="preload", daemon=True).start()
    from streamlit.web import cli

    sys.argv = streamlit_argv(streamlit_options, operator)
    sys.exit(cli.main())


if __name__ == "__main__":
    main()
