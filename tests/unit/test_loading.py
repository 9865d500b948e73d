"""The app loads a model once per process and shares it across sessions."""

from __future__ import annotations

import pytest

import app.loading as loading
from moe_core.models import load_model


def test_model_loads_once_and_is_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two sessions asking for the same model get the same object; load_model ran once, with progress."""
    calls: list[str] = []
    stages: list[float] = []

    def counting_load(model_id: str, **kwargs: object):
        calls.append(model_id)
        return load_model(model_id, progress=lambda _stage, fraction: stages.append(fraction))

    monkeypatch.setattr(loading, "load_model", counting_load)
    monkeypatch.setattr(loading, "_MODELS", {})
    first = loading.get_model("demo-mixtral")
    second = loading.get_model("demo-mixtral")
    assert first is second and calls == ["demo-mixtral"] and stages[-1] == 1.0


class _StubLoaded:
    """Stands in for a LoadedModel where only the cache's bookkeeping is under test."""

    class placement:
        device = "cpu"


def test_at_most_two_models_stay_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a third model evicts the oldest, so memory stays bounded."""
    monkeypatch.setattr(loading, "_MODELS", {})
    monkeypatch.setattr(loading, "load_model", lambda model_id, **kwargs: _StubLoaded())
    for name in ("a", "b", "c"):
        loading.get_model(name)
    assert list(loading._MODELS) == ["b", "c"]
