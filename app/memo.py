"""A process-wide cache of immutable results, bounded by bytes, shared by every session without a copy.

Why not st.cache_data: it pickles a copy in and unpickles one out on every rerun (486 MiB and 0.49 s per rerun
for a 58-layer, 256-expert, 4,096-token trace, up to 64 entries). Traces are immutable records, so every session
can read the same object; their arrays are made read-only on the way in so that no view can change another's.
Two sessions asking for the same key at once compute it once: the second waits for the first.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import fields, is_dataclass
from typing import Any, Generic, TypeVar

import numpy as np

Value = TypeVar("Value")


def nbytes(value: Any) -> int:
    """Bytes held by the numpy arrays of a (nested) dataclass value; other fields count as nothing."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if is_dataclass(value) and not isinstance(value, type):
        return sum(nbytes(getattr(value, f.name)) for f in fields(value))
    if isinstance(value, tuple | list):
        return sum(nbytes(item) for item in value)
    return 0


def freeze(value: Any) -> None:
    """Make every numpy array inside `value` read-only (a shared value must not be changed by one reader)."""
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    elif is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            freeze(getattr(value, f.name))
    elif isinstance(value, tuple | list):
        for item in value:
            freeze(item)


class BytesLRU(Generic[Value]):
    """Least-recently-used entries are dropped once the entries' arrays hold more than `max_bytes` (the newest
    entry always stays, however large)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[Value, int]] = OrderedDict()
        self._computing: dict[Hashable, threading.Event] = {}
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        with self._lock:
            return sum(size for _, size in self._entries.values())

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def get(self, key: Hashable, compute: Callable[[], Value]) -> Value:
        """The cached value of `key`, computing it (once, whoever asks meanwhile) when it is missing."""
        while True:
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    return self._entries[key][0]
                waiting = self._computing.get(key)
                if waiting is None:
                    self._computing[key] = threading.Event()
                    break
            waiting.wait()  # another session is computing it; then look again (it may have failed)
        try:
            value = compute()
            freeze(value)
            with self._lock:
                self._entries[key] = (value, nbytes(value))
                self._evict()
            return value
        finally:
            with self._lock:
                self._computing.pop(key).set()

    def _evict(self) -> None:
        total = sum(size for _, size in self._entries.values())
        while len(self._entries) > 1 and total > self.max_bytes:
            _, (_, size) = self._entries.popitem(last=False)
            total -= size


PER_TRACE_ENTRIES = 256  # small results (tables of a few hundred rows), so a count bound is enough


class PerTrace:
    """Results of pure functions of one immutable trace object, computed once per (function, trace, arguments).

    Why: a page reruns its whole script on every click, and at DeepSeek-V3's shape (61 layers, 256 experts,
    4,096 tokens) the neighbour and balance tables take seconds each. Keyed by the trace's identity (traces are
    shared read-only objects, app.memo.BytesLRU and the session's upload), guarded by a weak reference so a
    new trace that reuses a dead one's id is never served the old results.
    """

    def __init__(self, max_entries: int = PER_TRACE_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, tuple[weakref.ref, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, function: Callable[..., Value], trace: Any, *args: Hashable) -> Value:
        """function(trace, *args), from the cache when this very trace asked before."""
        key = (function.__module__, function.__qualname__, id(trace), args)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0]() is trace:
                self._entries.move_to_end(key)
                return entry[1]
        value = function(trace, *args)
        with self._lock:
            self._entries[key] = (weakref.ref(trace), value)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value


per_trace = PerTrace()
