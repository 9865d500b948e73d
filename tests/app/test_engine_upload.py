"""The upload box takes engines' routing dumps too (moe_core.engines, sniffed): a vLLM .npy and a Megatron-Core
JSONL written from the demo model's own routing open like a saved trace, tokens shown by id or position."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from moe_core.capture.record import trace
from moe_core.models import load_model
from tests.app.conftest import page_html, run_app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rows() -> tuple[np.ndarray, np.ndarray]:
    """[tokens, L, k] experts and the ids of the demo model's routing of one text."""
    loaded = load_model()
    routing = trace(loaded.model, loaded.tokenizer, "Routing recorded by a serving engine.")
    return routing.experts.transpose(1, 0, 2).copy(), routing.tokens.ids


def _upload(name: str, payload: bytes):
    return lambda at: at.file_uploader(key="upload").set_value((name, payload, "application/octet-stream"))


def test_a_vllm_npy_opens_in_the_routing_view(rows: tuple[np.ndarray, np.ndarray]) -> None:
    """The SDK's prompt_routed_experts saved as .npy: drawn, named as a vLLM dump, no error."""
    sink = io.BytesIO()
    np.save(sink, rows[0].astype(np.int16))
    at = run_app({"view": "routing"}, setup=_upload("prompt_routed_experts.npy", sink.getvalue()))
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    assert "vLLM dump" in at.caption[0].value and "uploaded trace" in at.caption[0].value
    assert "?0" in page_html(at)  # no token ids in a bare array: tokens show by position


def _megatron_lines(experts: np.ndarray, rank: int = 0) -> list[str]:
    return [json.dumps({"step": 0, "block": "decoder", "layer": layer, "rank": rank, "num_tokens": len(experts),
                        "topk": experts.shape[2], "top_indices": experts[:, layer].tolist()})
            for layer in range(experts.shape[1])]  # fmt: skip


def test_a_megatron_jsonl_opens_and_bad_lines_are_one_message(rows: tuple[np.ndarray, np.ndarray]) -> None:
    """One rank's router trace is drawn; a broken one gives the reader's one-line reason."""
    lines = _megatron_lines(rows[0])
    at = run_app({"view": "load"}, setup=_upload("router_trace_rank0.jsonl", "\n".join(lines).encode()))
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    assert "Megatron-Core dump" in at.caption[0].value
    broken = _upload("router_trace_rank0.jsonl", (lines[0][:-20] + "\n").encode())
    at = run_app({"view": "load"}, setup=broken)
    assert at.error and "line 1" in at.error[0].value


def test_megatron_ranks_uploaded_together_are_merged(rows: tuple[np.ndarray, np.ndarray]) -> None:
    """Two ranks' files in the upload box at once make one trace (engines.read_payloads, whose merge the unit
    tests check): both ranks' tokens are counted, each rank is a sequence, and the page names both files."""
    experts = rows[0]
    files = [(f"router_trace_rank{rank}.jsonl", "\n".join(_megatron_lines(r, rank)).encode(), "application/json")
             for rank, r in enumerate((experts, experts[::-1].copy()))]  # fmt: skip
    at = run_app({"view": "load"}, setup=lambda at: at.file_uploader(key="upload").set_value(files))
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    assert f"{2 * len(experts)} tokens" in at.caption[0].value
    assert any("step 0 rank 0, step 0 rank 1" in c.value for c in at.caption)
    assert any("router_trace_rank0.jsonl" in i.value and "and 1 more files" in i.value for i in at.info)


def test_pipeline_stages_beside_the_upload_put_the_layers_back(rows: tuple[np.ndarray, np.ndarray]) -> None:
    """Two pipeline stages, rank 0 with the demo model's first layers and rank 1 with the rest, each numbered from
    0: read as one stage they are two half-sequences; with Pipeline stages 2 they are one sequence of every layer."""
    experts = rows[0]
    half = experts.shape[1] // 2
    stage_rows = {0: experts[:, :half], 1: experts[:, half:]}
    files = [(f"router_trace_rank{rank}.jsonl", "\n".join(_megatron_lines(r, rank)).encode(), "application/json")
             for rank, r in stage_rows.items()]  # fmt: skip
    at = run_app({"view": "load"}, setup=lambda at: at.file_uploader(key="upload").set_value(files))
    assert not at.exception and at.number_input(key="pipeline_stages").value == 1
    assert f"{len(experts)} tokens" not in at.caption[0].value  # each rank its own sequence of the first layers
    at.number_input(key="pipeline_stages").set_value(2).run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    assert f"{len(experts)} tokens" in at.caption[0].value and f"{experts.shape[1]} MoE layers" in at.caption[0].value
    assert any("2 pipeline stages" in c.value for c in at.caption)


@pytest.mark.parametrize("view", ["routing", "load", "flow", "capacity"])
def test_megatron_sets_are_not_shown_as_first_choices(rows: tuple[np.ndarray, np.ndarray], view: str) -> None:
    """Megatron-Core writes each token's experts by ascending id: every view that reads a first choice says, in
    one sentence, that this trace has none, and draws its set-based fallback without an error."""
    ascending = np.sort(rows[0], axis=2)
    at = run_app(
        {"view": view}, setup=_upload("router_trace_rank0.jsonl", "\n".join(_megatron_lines(ascending)).encode())
    )
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    infos = [info.value for info in at.info]
    assert any("not which came first" in info for info in infos), infos
    if view == "load":
        assert not at.radio or all(radio.key != "load_count" for radio in at.radio)  # no first-choice count offered


def test_a_forged_sglang_dump_is_one_error_not_a_dead_server() -> None:
    """A 3 KB per_token dump whose map names expert 50,000,000 (it once grew the server to 21.8 GB on the load
    view): refused at upload in one sentence, and the page still works."""
    import torch

    physical = torch.zeros((1, 2, 2), dtype=torch.int32)
    physical[0, :, 1] = 1
    record = {"input_ids": [1, 2], "positions": [0, 1], "extend_seq_lens": [2], "topk_ids_of_layer": physical}
    sink = io.BytesIO()
    torch.save({"records": [record], "last_physical_to_logical_map": torch.tensor([[0, 50_000_000]])}, sink)
    at = run_app({"view": "load"}, setup=_upload("expert_distribution_recorder_0.pt", sink.getvalue()))
    assert not at.exception
    assert len(at.error) == 1 and "50,000,001" in at.error[0].value and "outside" in at.error[0].value
