"""Engine dumps carry generated tokens too (issue 17 §3): vLLM's per-choice `routed_experts`, SGLang's rows past
the prompt and the recorder's decode passes are the model's own tokens, marked `generated` like generate_trace's,
in the trace and in its JSON; a prompt-only dump has no phases. Each dump is written from the demo model's routing."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from moe_core.engines import model_hints, read_bytes
from moe_core.traces.io import from_json_dict, to_json_dict
from moe_core.traces.types import RoutingTrace
from tests.unit.test_engines import TEXTS, _rows, _sglang_dump, _vllm_response
from tests.unit.test_engines import demo as demo  # the module fixtures, reused
from tests.unit.test_engines import original as original


def _phases(routing: RoutingTrace) -> list[str]:
    return [token["phase"] for token in to_json_dict(routing)["tokens"]]


def test_vllm_choice_rows_are_generated(original: RoutingTrace) -> None:
    """prompt_routed_experts (5 rows) then the choice's routed_experts: positions 5… generated, in JSON too."""
    routing = read_bytes(json.dumps(_vllm_response(original, 0, prompt_len=5)).encode(), "r.json")
    count = len(_rows(original, 0)[1])
    expected = np.arange(count) >= 5
    np.testing.assert_array_equal(routing.generated(), expected)
    assert _phases(routing) == ["generated" if g else "prompt" for g in expected]
    assert routing.generated_from == (5,)


def test_vllm_prefix_cached_prompt_keeps_the_generated_start(original: RoutingTrace) -> None:
    """Rows 0–2 from the prefix cache are left out: the sequence starts at request position 3, so its generated
    tokens (request positions 6…) begin at its row 3."""
    response = _vllm_response(original, 0, prompt_len=6)
    response["prompt_routed_experts"][:3] = [[[-1, -1]] * len(original.model.moe_layers)] * 3
    routing = read_bytes(json.dumps(response).encode(), "r.json")
    count = len(_rows(original, 0)[1]) - 3
    np.testing.assert_array_equal(routing.generated(), np.arange(count) >= 3)


def test_vllm_without_the_prompt_is_all_generated_and_prompt_only_has_no_phase(original: RoutingTrace) -> None:
    response = _vllm_response(original, 0, prompt_len=4)
    del response["prompt_routed_experts"], response["prompt_token_ids"]
    routing = read_bytes(json.dumps(response).encode(), "r.json")
    assert routing.generated().all() and routing.generated_from == (0,)
    prompt_only = _vllm_response(original, 1, prompt_len=len(_rows(original, 1)[1]))
    del prompt_only["choices"]
    routing = read_bytes(json.dumps(prompt_only).encode(), "r.json")
    assert not routing.generated().any() and routing.generated_from == ()
    assert all("phase" not in token for token in to_json_dict(routing)["tokens"])


@pytest.mark.parametrize("prompt_from", ["input_ids", "meta_info"])
def test_sglang_rows_past_the_prompt_are_generated(original: RoutingTrace, prompt_from: str) -> None:
    """Routing from position 2 (routed_experts_start_len) of a request whose prompt is 5 tokens: rows 3… are the
    model's, whether the prompt length comes from input_ids or from meta_info.prompt_tokens."""
    rows, ids = _rows(original, 0)
    payload = base64.b64encode(rows[2:].astype("<i4").tobytes()).decode()
    meta: dict[str, Any] = {"routed_experts": payload, "routed_experts_start_len": 2}
    response: dict[str, Any] = {"text": "…", "meta_info": meta}
    if prompt_from == "input_ids":
        response |= {"input_ids": ids[:5].tolist(), "output_ids": [*ids[5:].tolist(), 11]}
    else:
        meta["prompt_tokens"] = 5
    routing = read_bytes(json.dumps(response).encode(), "r.json", hints=model_hints("demo-mixtral"))
    np.testing.assert_array_equal(routing.experts, rows[2:].transpose(1, 0, 2))
    np.testing.assert_array_equal(routing.generated(), np.arange(len(rows) - 2) >= 3)


def test_sglang_recorder_decode_pass_is_generated(original: RoutingTrace) -> None:
    """Sequence 0's last token came in a decode pass (no extend_seq_lens), joined to its prefill: that one token is
    generated; sequence 1, prefilled only, has none."""
    routing = read_bytes(_sglang_dump(original), "expert_distribution_recorder_1_0.pt")
    first = int((original.tokens.sequence == 0).sum())
    expected = np.zeros(len(original.tokens), dtype=bool)
    expected[first - 1] = True
    np.testing.assert_array_equal(routing.generated(), expected)
    assert routing.generated_from == (first - 1, None) and len(TEXTS) == 2
    assert from_json_dict(json.loads(json.dumps(to_json_dict(routing)))).generated_from == (first - 1, None)
