"""Routing while the model writes (issue 17): capture during generate() with the KV cache, against a full-
sequence trace of the same tokens, on the demo model and the tiny models of ten families (one with a shared
expert, sigmoid routers among them); phases, files, sampling and the command line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from moe_core.capture.generation import generate_trace
from moe_core.capture.record import batch_of_ids, trace_batch
from moe_core.proof.tiny_models import build_tiny_model
from moe_core.traces.io import from_parquet_bytes, load_trace_bytes, to_json_dict, to_json_text, to_parquet_bytes
from moe_core.traces.types import RoutingTrace
from tests.cli_runner import run_cli

PROMPT = "The cat sat on the mat. def f(x):"
FAMILIES = ["mixtral", "qwen2_moe", "deepseek_v3", "deepseek_v2", "olmoe", "qwen3_moe", "granitemoe", "phimoe",
            "dbrx", "glm4_moe"]  # fmt: skip
NEAR_TIE = 1e-4  # a slot may differ between the cached and the full pass only where two scores are this close


def full_sequence(model: Any, tokenizer: Any, routing: RoutingTrace) -> RoutingTrace:
    """The same token ids traced as one prompt: what the generated tokens' routing must equal."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return trace_batch(model, batch_of_ids([routing.tokens.ids.tolist()], pad))[0]


def assert_same_routing(written: RoutingTrace, full: RoutingTrace) -> int:
    """Slot for slot, except where the full pass's k-th and (k+1)-th scores tie within NEAR_TIE (reported)."""
    differ = (written.experts != full.experts).any(axis=-1)  # [L, T]
    k = full.model.top_k
    ordered = -np.sort(-full.probs, axis=-1)
    margin = ordered[..., k - 1] - ordered[..., k] if full.probs.shape[-1] > k else np.full(differ.shape, np.inf)
    assert (margin[differ] < NEAR_TIE).all(), (
        f"slots differ at {np.argwhere(differ)[:5]} with margins {margin[differ][:5]}"
    )
    return int(differ.sum())


def test_demo_model_writes_with_exact_routing(demo_tokenizer: Any) -> None:
    from moe_core.models import load_model

    loaded = load_model()
    written = generate_trace(loaded.model, loaded.tokenizer, "def add(a, b):\n    return", 40)
    assert written.generated().sum() == 40 and written.generated_from == (len(written.tokens) - 40,)
    assert assert_same_routing(written, full_sequence(loaded.model, loaded.tokenizer, written)) == 0
    assert written.texts[0].startswith("def add(a, b):\n    return")


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_routes_its_writing_as_a_full_pass_would(family: str, demo_tokenizer: Any) -> None:
    model = build_tiny_model(family)
    written = generate_trace(model, demo_tokenizer, PROMPT, 12)
    assert written.generated().sum() == 12
    full = full_sequence(model, demo_tokenizer, written)
    assert assert_same_routing(written, full) == 0
    np.testing.assert_allclose(written.weights, full.weights, atol=1e-4)


def test_phases_survive_json_and_parquet(demo_tokenizer: Any) -> None:
    model = build_tiny_model("mixtral")
    written = generate_trace(model, demo_tokenizer, PROMPT, 6)
    data = to_json_dict(written)
    phases = [t["phase"] for t in data["tokens"]]
    start = written.generated_from[0]
    assert phases == ["prompt"] * start + ["generated"] * 6 and data["generated_from"] == [start]
    for back in (
        load_trace_bytes(to_json_text(written).encode(), "t.json"),
        from_parquet_bytes(to_parquet_bytes(written)),
    ):
        assert back.generated_from == written.generated_from
        np.testing.assert_array_equal(back.generated(), written.generated())
    plain = replace(written, generated_from=())
    assert "phase" not in to_json_dict(plain)["tokens"][0] and not plain.generated().any()


def test_sampling_is_seeded_and_bounded(demo_tokenizer: Any) -> None:
    model = build_tiny_model("mixtral")
    first = generate_trace(model, demo_tokenizer, PROMPT, 8, temperature=1.5, seed=3)
    again = generate_trace(model, demo_tokenizer, PROMPT, 8, temperature=1.5, seed=3)
    np.testing.assert_array_equal(first.tokens.ids, again.tokens.ids)
    assert assert_same_routing(first, full_sequence(model, demo_tokenizer, first)) == 0
    for bad in ({"temperature": 0.0}, {"top_p": 1.5}):
        with pytest.raises(ValueError, match="must be in"):
            generate_trace(model, demo_tokenizer, PROMPT, 4, **bad)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_trace(model, demo_tokenizer, PROMPT, 0)


def test_generate_command(capsys: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    code, out, err = run_cli(capsys, "generate", "--model", str(tiny_model_dir), "--text", PROMPT,
                             "--max-new-tokens", "5")  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert [t["phase"] for t in data["tokens"]].count("generated") == 5
    assert set(data) >= {"model", "tokens", "layers", "generated_from"}
    code, _, _ = run_cli(capsys, "generate", "--model", str(tiny_model_dir), "--text", PROMPT, "--max-new-tokens",
                         "3", "--out", str(tmp_path / "g.parquet"))  # fmt: skip
    assert code == 0 and from_parquet_bytes((tmp_path / "g.parquet").read_bytes()).generated().sum() == 3
    code, _, err = run_cli(capsys, "generate", "--model", str(tiny_model_dir), "--text", "  ")
    assert code == 2 and "empty text" in err


def test_watching_the_model_write_sees_each_tokens_own_routing() -> None:
    """The watcher is called after every decode step with the tokens written so far whose routing is known, and
    their first choices at every layer: at the end they are the trace's generated tokens and the trace's own
    slot-0 experts (ranked by weight), so what the app streams is what the views then show."""
    from moe_core.models import load_model

    loaded = load_model()
    seen: list[tuple[list[int], np.ndarray]] = []
    written = generate_trace(loaded.model, loaded.tokenizer, PROMPT, 12,
                             watch=lambda ids, first: seen.append((list(ids), first.copy())))  # fmt: skip
    start = written.generated_from[0]
    generated = written.tokens.ids[start:].tolist()
    assert len(seen) == len(generated) and [len(ids) for ids, _ in seen] == list(range(1, len(generated) + 1))
    ids, first = seen[-1]
    assert ids == generated
    np.testing.assert_array_equal(first, written.experts[:, start:, 0].T)
    assert all(np.array_equal(f, first[: len(f)]) for _, f in seen)  # earlier steps are prefixes, never revised


def test_a_watcher_that_raises_stops_the_generation() -> None:
    """A visitor who leaves mid-stream: the exception ends generate() and reaches the caller; the model's lock is
    free again (the next generation runs)."""
    from moe_core.models import load_model

    loaded = load_model()

    def leave(ids: list[int], _first: np.ndarray) -> None:
        if len(ids) == 3:
            raise KeyboardInterrupt("the visitor left")

    with pytest.raises(KeyboardInterrupt):
        generate_trace(loaded.model, loaded.tokenizer, PROMPT, 20, watch=leave)
    assert len(generate_trace(loaded.model, loaded.tokenizer, PROMPT, 2).tokens) > 2


def test_encoder_decoders_are_refused_in_one_sentence(demo_tokenizer: Any) -> None:
    """Switch writes a separate output, not a continuation: generate_trace refuses it with the reason the app
    also reads (supports_generation_capture false: the app writes, then re-traces), and the demo model passes."""
    from moe_core.capture.generation import supports_generation_capture
    from moe_core.models import load_model

    switch = build_tiny_model("switch_transformers")
    assert not supports_generation_capture(switch) and supports_generation_capture(load_model().model)
    with pytest.raises(ValueError, match="encoder-decoders \\(Switch\\) are not covered yet"):
        generate_trace(switch, demo_tokenizer, "hello", 3)
