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


def test_evictions_keep_the_cache_within_count_and_bytes() -> None:
    """Oldest first: a third model evicts the first by count; a big one evicts until the bytes fit."""
    assert loading.evictions({"a": 1, "b": 1}, 1, max_count=2, max_bytes=100) == ["a"]
    assert loading.evictions({"a": 40, "b": 30}, 50, max_count=5, max_bytes=100) == ["a"]
    assert loading.evictions({"a": 40, "b": 30}, 90, max_count=5, max_bytes=100) == ["a", "b"]
    assert loading.evictions({"a": 40}, 500, max_count=5, max_bytes=100) == ["a"]  # too big: loads alone
    assert loading.evictions({}, 500, max_count=5, max_bytes=100) == []


def test_weight_bytes_counts_parameters_and_buffers() -> None:
    from moe_core.proof.tiny_models import build_tiny_model

    model = build_tiny_model("mixtral")
    expected = sum(p.numel() * 4 for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers()
    )
    assert loading.weight_bytes(type("Loaded", (), {"model": model})()) == expected


def test_the_operator_sets_the_byte_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(loading.MODEL_CACHE_GB_ENV, "0.5")
    assert loading.model_cache_bytes() == 2**29
    monkeypatch.setenv(loading.MODEL_CACHE_GB_ENV, "lots")
    assert loading.model_cache_bytes() == int(loading.DEFAULT_MODEL_CACHE_GB * 2**30)


def test_warm_up_traces_the_built_in_batches_once_in_the_background(demo_tokenizer: object) -> None:
    """After warm_up, the domain batch's trace and the equal-window batch are cached for the model, equal to
    tracing them directly; a second call starts nothing."""
    import numpy as np

    from moe_core.batches import trace_equal_windows
    from moe_core.capture.record import trace
    from moe_core.proof.tiny_models import build_tiny_model

    loaded = type("Loaded", (), {"model": build_tiny_model("mixtral"), "tokenizer": demo_tokenizer})()
    name = "tiny-for-warm-up"
    thread = loading.warm_up(loaded, name)
    assert thread is not None
    thread.join(timeout=300)
    assert loading.warm_up(loaded, name) is None
    assert (name, loading.domain_batch()) in loading.TRACES and name in loading.LABS
    cached = loading.TRACES.get((name, loading.domain_batch()), lambda: None)
    np.testing.assert_array_equal(cached.experts, trace(loaded.model, demo_tokenizer, loading.domain_batch()).experts)
    lab = loading.LABS.get(name, lambda: None)
    assert lab.windows == trace_equal_windows(loaded.model, demo_tokenizer).windows


def test_preload_fills_every_cache_the_first_visit_reads(
    monkeypatch: pytest.MonkeyPatch, demo_tokenizer: object
) -> None:
    """preload (python -m app, at server start) leaves the model, the default text's trace and the built-in
    batches cached, so the first visitor's get_model and get_trace load and trace nothing."""
    import numpy as np

    from moe_core.capture.record import trace
    from moe_core.proof.tiny_models import build_tiny_model

    model = build_tiny_model("mixtral")
    loaded = type("Loaded", (), {"model": model, "tokenizer": demo_tokenizer})()
    loads: list[str] = []
    monkeypatch.setattr(loading, "_MODELS", {})
    monkeypatch.setattr(loading, "load_model", lambda model_id, **kwargs: loads.append(model_id) or loaded)
    name, text = "tiny-for-preload", "The first visitor's default text."
    assert loading.preload(name, text) is loaded and loads == [name]
    assert name in loading.LABS and (name, loading.domain_batch()) in loading.TRACES

    monkeypatch.setattr(loading, "load_model", lambda *args, **kwargs: pytest.fail("the first visit loaded again"))
    monkeypatch.setattr(loading, "trace", lambda *args, **kwargs: pytest.fail("the first visit traced again"))
    assert loading.get_model(name) is loaded
    np.testing.assert_array_equal(
        loading.get_trace(loaded, name, (text,)).experts, trace(model, demo_tokenizer, (text,)).experts
    )


def test_python_m_app_passes_streamlit_and_operator_options_through() -> None:
    """`python -m app --server.port 1 -- --model m` runs `streamlit run --server.port 1 app/main.py -- --model m`."""
    from app.__main__ import MAIN_SCRIPT, SERVER_DEFAULTS, split_arguments, streamlit_argv

    options, operator = split_arguments(["--server.port", "1", "--", "--model", "m"])
    assert (options, operator) == (["--server.port", "1"], ["--model", "m"])
    assert streamlit_argv(options, operator) == ["streamlit", "run", *SERVER_DEFAULTS, "--server.port", "1",
                                                 str(MAIN_SCRIPT), "--", "--model", "m"]  # fmt: skip
    assert streamlit_argv([], []) == ["streamlit", "run", *SERVER_DEFAULTS, str(MAIN_SCRIPT)]


def test_a_served_app_watches_no_files_unless_the_command_line_asks() -> None:
    """Streamlit's own parser: the app's default turns the file watcher off, an operator's option wins."""
    from streamlit.web import cli

    from app.__main__ import split_arguments, streamlit_argv

    def watcher(argv: list[str]) -> str:
        run = streamlit_argv(*split_arguments(argv))
        assert run[:2] == ["streamlit", "run"]
        return cli.main_run.make_context("run", run[2:]).params["server_fileWatcherType"]

    assert watcher([]) == "none"
    assert watcher(["--server.fileWatcherType", "poll", "--", "--model", "m"]) == "poll"
