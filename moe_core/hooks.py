"""Hooks on a shared model that see only the caller's own forward passes: capture is safe under concurrency.

Why: the app serves one model object to every visitor. Hooks registered on it for the length of one call fire
on every forward that runs meanwhile, so two sessions tracing at once recorded each other's routing (or broke
on "one router call per layer"). Here each module gets one permanent dispatcher, installed once, and the
functions a call wants run live in a context variable: a thread (each Streamlit session runs in its own) or an
asyncio task sees only the functions it set itself. Outside `hooks_active` the dispatchers do nothing.

`forward_lock(model)` is a readers-writer lock per model. Forward passes (capture, the capacity-bound pass, a
Closer Look) change nothing on the model, so they share it and run at the same time; code that changes the model
in place (the ablation proof zeroes expert weights) holds it alone, so no visitor's pass sees a zeroed expert.

A pass also sizes its intra-op threads (`pass_threads`): all of torch's threads only when it has the cores to
itself, one while other work of this process is in flight (another pass, another session's script run counted
by `busy()`) or the machine's load already fills its cores. On 2 busy cores torch's 2 threads made a 500-token
pass of the demo model about 10x slower than one thread: each parallel region waits for a descheduled thread.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any, Literal

import torch
from torch import nn

Kind = Literal["forward", "pre"]
# "forward": fn(module, args, output) -> None.
# "pre":     fn(module, args, kwargs) -> None, or (args, kwargs) to replace the module's inputs.
Hook = tuple[nn.Module, Kind, Callable[..., Any]]

_ACTIVE: ContextVar[dict[tuple[int, Kind], list[Callable[..., Any]]] | None] = ContextVar(
    "moe_core_hooks", default=None
)
_INSTALLED: weakref.WeakKeyDictionary[nn.Module, set[Kind]] = weakref.WeakKeyDictionary()
_INSTALL_LOCK = threading.Lock()


def _dispatch_forward(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    table = _ACTIVE.get()
    if table:
        for function in table.get((id(module), "forward"), ()):
            function(module, args, output)


def _dispatch_pre(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    table = _ACTIVE.get()
    if not table:
        return None
    changed = False
    for function in table.get((id(module), "pre"), ()):
        replaced = function(module, args, kwargs)
        if replaced is not None:
            args, kwargs = replaced
            changed = True
    return (args, kwargs) if changed else None


def _install(module: nn.Module, kind: Kind) -> None:
    with _INSTALL_LOCK:
        kinds = _INSTALLED.setdefault(module, set())
        if kind in kinds:
            return
        if kind == "forward":
            module.register_forward_hook(_dispatch_forward)
        else:
            module.register_forward_pre_hook(_dispatch_pre, with_kwargs=True)
        kinds.add(kind)


@contextlib.contextmanager
def hooks_active(hooks: Iterable[Hook]) -> Iterator[None]:
    """Run `hooks` on the forward passes made inside the `with`, in this thread or task only.

    Nests: an inner `with` adds its hooks after the outer ones, and the outer set is back on exit.
    """
    table = {key: list(functions) for key, functions in (_ACTIVE.get() or {}).items()}
    for module, kind, function in hooks:
        _install(module, kind)
        table.setdefault((id(module), kind), []).append(function)
    token = _ACTIVE.set(table)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


_WORKING: dict[int, int] = {}  # thread id -> depth: threads doing CPU work now (passes, script runs in busy())
_WORKING_LOCK = threading.Lock()


@contextlib.contextmanager
def busy() -> Iterator[None]:
    """Count the calling thread as CPU work in flight while inside (the app wraps each session's script run), so
    that passes started meanwhile by other threads leave it a core (see pass_threads)."""
    me = threading.get_ident()
    with _WORKING_LOCK:
        _WORKING[me] = _WORKING.get(me, 0) + 1
    try:
        yield
    finally:
        with _WORKING_LOCK:
            _WORKING[me] -= 1
            if not _WORKING[me]:
                del _WORKING[me]


def _machine_busy() -> bool:
    try:
        return os.getloadavg()[0] >= (os.cpu_count() or 1)
    except (AttributeError, OSError):  # no load average on this platform
        return False


def pass_threads() -> int | None:
    """Intra-op threads for a pass the calling thread starts now: 1 while another thread of this process works
    (busy() or a pass) or the 1-minute load average fills the machine's cores; None: torch's own setting."""
    me = threading.get_ident()
    with _WORKING_LOCK:
        others = len(_WORKING) - (me in _WORKING)
    return 1 if others or _machine_busy() else None


@contextlib.contextmanager
def _sized_pass() -> Iterator[None]:
    """The calling thread's pass, counted as work, on pass_threads() intra-op threads (torch keeps the setting per
    thread once a thread has used it; the previous value is set back on exit)."""
    with busy():
        threads, previous = pass_threads(), torch.get_num_threads()
        if threads is None or threads >= previous:
            yield
            return
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


class ForwardLock:
    """Shared by passes that only read the model, exclusive for a change in place; both re-entrant per thread.

    An exclusive holder may take the shared side too (the ablation proof traces inside its hold). Taking the
    exclusive side while holding the shared one is refused: two threads doing so would wait for each other.
    A waiting exclusive request holds back new shared holders, so a steady stream of visitors cannot starve it.
    """

    def __init__(self) -> None:
        self._state = threading.Condition(threading.Lock())
        self._shared: dict[int, int] = {}  # thread id -> depth of its shared holds
        self._owner: int | None = None  # the thread holding the exclusive side
        self._owner_depth = 0
        self._waiting_exclusive = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Hold the shared side: any number of threads at once, none while another holds the exclusive side."""
        me = threading.get_ident()
        with self._state:
            if self._owner != me and me not in self._shared:
                self._state.wait_for(lambda: self._owner is None and not self._waiting_exclusive)
            self._shared[me] = self._shared.get(me, 0) + 1
            outermost = self._shared[me] == 1 and self._owner != me
        try:
            with _sized_pass() if outermost else contextlib.nullcontext():
                yield
        finally:
            with self._state:
                self._shared[me] -= 1
                if not self._shared[me]:
                    del self._shared[me]
                    self._state.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the exclusive side: no other thread holds either side meanwhile."""
        me = threading.get_ident()
        with self._state:
            if self._owner != me:
                if me in self._shared:
                    raise RuntimeError("forward_lock: cannot take the exclusive side while holding the shared side")
                self._waiting_exclusive += 1
                try:
                    self._state.wait_for(lambda: self._owner is None and not self._shared)
                finally:
                    self._waiting_exclusive -= 1
                self._owner = me
            self._owner_depth += 1
            outermost = self._owner_depth == 1
        try:
            with _sized_pass() if outermost else contextlib.nullcontext():
                yield
        finally:
            with self._state:
                self._owner_depth -= 1
                if not self._owner_depth:
                    self._owner = None
                    self._state.notify_all()


_FORWARD_LOCKS: weakref.WeakKeyDictionary[nn.Module, ForwardLock] = weakref.WeakKeyDictionary()


def forward_lock(model: nn.Module) -> ForwardLock:
    """The one readers-writer lock of `model`: `.shared()` around a pass that only reads it, `.exclusive()` around
    a change to it in place."""
    with _INSTALL_LOCK:
        lock = _FORWARD_LOCKS.get(model)
        if lock is None:
            lock = _FORWARD_LOCKS[model] = ForwardLock()
        return lock
