"""compare (issue 16): two traces of the same tokens, agreement per layer against hand-computed cases,
unranked and dropped slots, and one-sentence refusals."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from moe_core.analyses.compare import (
    FIRST_CHANGED,
    SAME,
    SET_CHANGED,
    NotComparable,
    compare,
    comparison_json,
)
from moe_core.traces.types import ModelInfo, RoutingTrace, Tokens
from tests.cli_runner import run_cli

E = 6


def _trace(slots: list[list[int]], ids: list[int] | None = None, ranked: bool = True,
           weights: list[list[float]] | None = None) -> RoutingTrace:  # fmt: skip
    """One sequence, one MoE layer: `slots` [T, 2] (−1 a dropped slot)."""
    count = len(slots)
    ids = ids or list(range(10, 10 + count))
    tokens = Tokens(np.asarray(ids), tuple("x" * count), np.stack([np.arange(count), np.arange(count) + 1], axis=1),
                    np.zeros(count, dtype=np.int64), np.arange(count))  # fmt: skip
    model = ModelInfo("m", "mixtral", E, 2, "softmax", 1, (0,))
    array = np.asarray(slots)[None]
    w = None if weights is None else np.asarray(weights, dtype=np.float32)[None]
    return RoutingTrace(model, ("x" * count,), tokens, None, None, array, w, (False,), slots_ranked=ranked)


A = [[0, 1], [2, 3], [1, 0], [4, -1]]
B = [[0, 1], [2, 5], [0, 1], [4, 5]]


def test_hand_computed_agreement() -> None:
    """t0 same; t1 {2,3}→{2,5}, first 2 kept: set changed; t2 {1,0}→{0,1}: first choice changed; t3 {4}→{4,5}
    (A dropped a slot): set changed. Sets share 2+1+2+1 of 4·2 slots: 0.75; first choices agree at t0, t1, t3."""
    result = compare(_trace(A), _trace(B))
    row = result.layers.iloc[0]
    assert row.set_agreement == pytest.approx(0.75) and row.top1_agreement == pytest.approx(0.75)
    assert result.categories[0].tolist() == [SAME, SET_CHANGED, FIRST_CHANGED, SET_CHANGED]
    assert row.changed_tokens == 3 and result.tokens_changed_any_layer == pytest.approx(0.75)
    assert result.load["difference"].tolist() == [0, 0, 0, -1, 0, 2]
    data = comparison_json(result)
    assert data["tokens"] == 4 and data["layers"][0]["top1_agreement"] == 0.75
    assert data["layers"][0]["load_difference"] == [0, 0, 0, -1, 0, 2] and data["top1_agreement_note"] is None


def test_unranked_side_has_no_top1_agreement() -> None:
    """B holds sets (a Megatron dump): top-1 agreement is null with the reason; t2's same set is now 'same'."""
    result = compare(_trace(A), _trace(B, ranked=False))
    data = comparison_json(result)
    assert data["layers"][0]["top1_agreement"] is None and "B records each token's experts" in data[
        "top1_agreement_note"]  # fmt: skip
    assert data["layers"][0]["set_agreement"] == 0.75
    assert result.categories[0].tolist() == [SAME, SET_CHANGED, SAME, SET_CHANGED]


def test_weight_difference_over_shared_experts() -> None:
    """One token, both on {0, 1}: weights (0.75, 0.25) against (0.5, 0.5) differ by 0.25 on each expert."""
    a = _trace([[0, 1]], weights=[[0.75, 0.25]])
    b = _trace([[0, 1]], weights=[[0.5, 0.5]])
    assert compare(a, b).layers.iloc[0].weight_difference == pytest.approx(0.25)
    assert np.isnan(compare(a, _trace([[0, 1]])).layers.iloc[0].weight_difference)  # B has no weights


def test_different_tokens_are_refused_in_one_sentence() -> None:
    with pytest.raises(NotComparable) as caught:
        compare(_trace(A), _trace(B, ids=[10, 11, 99, 13]))
    message = str(caught.value)
    assert message.startswith("not the same tokens: at sequence 0, position 2 A has id 12 and B 99")
    assert "\n" not in message
    with pytest.raises(NotComparable, match="experts"):
        compare(_trace(A), replace(_trace(B), model=replace(_trace(B).model, num_experts=8)))


def test_tokens_in_both_only() -> None:
    """B holds a prefix (say, an engine dump of the prompt only): the shared 2 tokens are compared, said so."""
    result = compare(_trace(A), _trace(B[:2]))
    assert result.tokens == 2 and "2 tokens are in both" in result.alignment.notes[0]
    assert result.layers.iloc[0].set_agreement == pytest.approx(0.75)  # (2 + 1) / (2 · 2)


# --- the command ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_trace_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from moe_core.capture.record import trace
    from moe_core.models import load_model
    from moe_core.traces.io import save_trace

    loaded = load_model()
    path = tmp_path_factory.mktemp("compare") / "a.json"
    save_trace(trace(loaded.model, loaded.tokenizer, ["Routing, compared.", "Guten Tag, wie geht es?"]), path)
    return path


def test_cli_two_files_equal_the_library(demo_trace_file: Path, tmp_path: Path, capsys: Any) -> None:
    """B: the same trace with one token's first two slots swapped at layer 1: the JSON is compare()'s, and it
    says exactly that token's first choice changed there."""
    from moe_core.traces.io import load_trace, save_trace

    a = load_trace(demo_trace_file)
    experts = a.experts.copy()
    experts[1, 3] = experts[1, 3, ::-1]
    b_path = tmp_path / "b.json"
    save_trace(replace(a, experts=experts, weights=None, logits=None, probs=None), b_path)
    code, out, _ = run_cli(capsys, "compare", str(demo_trace_file), str(b_path))
    assert code == 0
    data = json.loads(out)
    assert data == comparison_json(compare(a, load_trace(b_path)))
    layer1 = data["layers"][1]
    assert layer1["changed_tokens"] == 1 and layer1["set_agreement"] == 1.0
    assert layer1["top1_agreement"] == pytest.approx(1 - 1 / len(a.tokens), abs=1e-6)
    assert all(layer["changed_tokens"] == 0 for i, layer in enumerate(data["layers"]) if i != 1)


def test_cli_rerun_of_an_engine_dump_agrees_with_itself(demo_trace_file: Path, tmp_path: Path, capsys: Any) -> None:
    """A vLLM response written from the demo model's own routing, against the demo model re-run on its token
    ids: the same tokens, the same routing (agreement 1 everywhere)."""
    from moe_core.traces.io import load_trace

    a = load_trace(demo_trace_file)
    rows = a.experts[:, a.tokens.sequence == 1].transpose(1, 0, 2)
    response = {"prompt_token_ids": a.tokens.ids[a.tokens.sequence == 1].tolist(), "prompt_routed_experts":
                rows.tolist()}  # fmt: skip
    dump = tmp_path / "response.json"
    dump.write_text(json.dumps(response), encoding="utf-8")
    code, out, err = run_cli(capsys, "compare", str(dump), "--model", "demo-mixtral")
    assert code == 0, err
    data = json.loads(out)
    assert data["tokens"] == len(rows) and data["tokens_changed_any_layer"] == 0.0
    assert all(layer["top1_agreement"] == layer["set_agreement"] == 1.0 for layer in data["layers"])


def test_cli_refusals_are_one_line(demo_trace_file: Path, tmp_path: Path, capsys: Any) -> None:
    from moe_core.traces.io import load_trace, save_trace

    a = load_trace(demo_trace_file)
    other = tmp_path / "other.json"
    save_trace(replace(a, tokens=replace(a.tokens, ids=a.tokens.ids[::-1].copy())), other)
    for argv, expected in [((str(demo_trace_file), str(other)), "not the same tokens"),
                           ((str(demo_trace_file),), "give B"), ((), "nothing to compare"),
                           (("--text", "hi", "--model", "demo-mixtral"), "B would be A again")]:  # fmt: skip
        code, out, err = run_cli(capsys, "compare", *argv)
        assert code == 2 and not out and expected in err and len(err.strip().splitlines()) == 1, err
