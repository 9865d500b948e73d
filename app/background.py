"""Background work of the server process (warm-up traces, the capture badge's proof), joined before it exits.

A daemon thread still inside a torch forward when the interpreter shuts down aborts the whole process
("terminate called without an active exception", exit status 134), which turned a passing test run into a failed
one. Every background thread is started here; at exit they are told to stop at their next step and joined.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable

EXIT_JOIN_S = 120.0  # the longest a step (one forward of a built-in batch on 2 cores) is waited for at exit
STOPPING = threading.Event()  # set at exit: work with several steps checks it between them
_THREADS: list[threading.Thread] = []
_LOCK = threading.Lock()


def start(target: Callable[[], None], name: str) -> threading.Thread:
    """Run `target` in a daemon thread that the process joins before it exits."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    with _LOCK:
        _THREADS[:] = [t for t in _THREADS if t.is_alive()]
        _THREADS.append(thread)
    thread.start()
    return thread


@atexit.register
def join_all() -> None:
    STOPPING.set()
    with _LOCK:
        threads = list(_THREADS)
    for thread in threads:
        thread.join(EXIT_JOIN_S)
