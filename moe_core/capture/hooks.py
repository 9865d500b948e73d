"""Hooks on a shared model that see only the caller's own forward passes: capture is safe under concurrency.

Why: the app serves one model object to every visitor. Hooks registered on it for the length of one call fire
on every forward that runs meanwhile, so two sessions tracing at once recorded each other's routing (or broke
on "one router call per layer"). Here each module gets one permanent dispatcher, installed once, and the
functions a call wants run live in a context variable: a thread (each Streamlit session runs in its own) or an
asyncio task sees only the functions it set itself. Outside `hooks_active` the dispatchers do nothing.

`forward_lock(model)` serialises forward passes of one model: on a CPU server concurrent passes only fight
over the same cores (torch's intra-op threads oversubscribe them), so queueing them is faster for everyone.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any, Literal

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


_FORWARD_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()


def forward_lock(model: nn.Module) -> threading.RLock:
    """The one lock for forward passes of `model` (re-entrant: a pass may call helpers that take it again)."""
    with _INSTALL_LOCK:
        lock = _FORWARD_LOCKS.get(model)
        if lock is None:
            lock = _FORWARD_LOCKS[model] = threading.RLock()
        return lock
