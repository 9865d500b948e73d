"""Engine dumps as the engines really write them (issue 18): SGLang's per-request buffer has a row for every
hidden layer (dense ones stay 0) and may carry fused shared-expert slots; its recorder's first pass pads with 0;
Megatron-Core writes each token's experts by ascending id, numbers layers the decoder's way (dense ones counted)
and locally per pipeline stage, and skips a layer that dropped tokens. Each fixture is written from a real trace
of a tiny DeepSeek-V3 whose layer 0 is dense, in the engine's documented layout."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from moe_core.analyses.flow import flow_summary, transition_counts
from moe_core.analyses.routing import consecutive_repeats, token_frame, token_id_consistency
from moe_core.capacity.simulate import simulate_capacity, simulate_capacity_reference
from moe_core.capture.record import trace
from moe_core.engines import model_hints, read_bytes, read_files
from moe_core.engines.common import ModelHints
from moe_core.proof.tiny_models import build_tiny_model
from moe_core.traces.checks import TraceFormatError
from moe_core.traces.io import from_json_dict, from_parquet_bytes, to_json_dict, to_parquet_bytes
from moe_core.traces.types import ModelInfo, RoutingTrace, Tokens, rank_slots

TEXT = "The quick brown fox jumps over the lazy dog. Guten Tag, wie geht es dir? 1 + 2 = 3"
HIDDEN_LAYERS = 4  # layer 0 dense (first_k_dense_replace = 1), layers 1–3 MoE: the audit's shape


@pytest.fixture(scope="module")
def deepseek_dir(tmp_path_factory: pytest.TempPathFactory, demo_tokenizer: Any) -> Path:
    folder = tmp_path_factory.mktemp("tiny-deepseek-v3")
    build_tiny_model("deepseek_v3", overrides={"num_hidden_layers": HIDDEN_LAYERS}).save_pretrained(folder)
    demo_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hints(deepseek_dir: Path) -> ModelHints:
    return model_hints(str(deepseek_dir))


@pytest.fixture(scope="module")
def original(deepseek_dir: Path, demo_tokenizer: Any) -> RoutingTrace:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(deepseek_dir).eval()
    return trace(model, demo_tokenizer, [TEXT], name="tiny-deepseek-v3", max_tokens=30)  # the audit's 30 tokens


def _sglang_buffer(original: RoutingTrace, shared_slots: int = 0) -> np.ndarray:
    """SGLang's capturer layout: zeros [tokens, num_hidden_layers, k + fused shared], MoE layers written, the
    fused shared experts (ids E, E+1, …) after the k routed slots; dense layers never written."""
    experts, model = original.experts, original.model
    buffer = np.zeros((experts.shape[1], HIDDEN_LAYERS, model.top_k + shared_slots), dtype=np.int32)
    for row, layer in enumerate(model.moe_layers):
        buffer[:, layer, : model.top_k] = experts[row]
        buffer[:, layer, model.top_k :] = model.num_experts + np.arange(shared_slots)
    return buffer


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(array.astype("<i4").tobytes()).decode()


def test_fixture_has_a_dense_first_layer(original: RoutingTrace, hints: ModelHints) -> None:
    assert original.model.moe_layers == (1, 2, 3) and hints.num_layers == HIDDEN_LAYERS
    assert hints.num_shared_experts == 1 and hints.grouped_top_k


@pytest.mark.parametrize("shared_slots", [0, 1])
def test_sglang_request_reads_every_hidden_layer(original: RoutingTrace, hints: ModelHints, shared_slots: int) -> None:
    """T tokens × 4 hidden layers × k values: the old reading (3 MoE layers × k per token) made 30 tokens into 40.
    With a fused shared slot the width is k + 1; either way the MoE layers' first k slots are the routing."""
    buffer = _sglang_buffer(original, shared_slots)
    tokens = len(original.tokens)
    assert tokens == 30 and (shared_slots or buffer.size // (len(original.model.moe_layers) * 2) == 40)
    response = {"text": "…", "meta_info": {"routed_experts": _b64(buffer)}}
    routing = read_bytes(json.dumps(response).encode(), "r.json", hints=hints)
    assert len(routing.tokens) == tokens
    np.testing.assert_array_equal(routing.experts, original.experts)
    assert routing.model.moe_layers == (1, 2, 3)
    # DeepSeek-V3 routes by grouped top-k, which SGLang does not sort: the trace says so
    assert routing.slots_ranked is False


def test_sglang_request_ids_say_the_width(original: RoutingTrace, hints: ModelHints) -> None:
    """input_ids + output_ids give the token count (routing covers seqlen − 1), which fixes the width even when
    the value count alone would fit both k and k + shared."""
    ids = original.tokens.ids.tolist()
    buffer = _sglang_buffer(original, 1)
    response = {"meta_info": {"routed_experts": _b64(buffer)}, "input_ids": ids[:5], "output_ids": [*ids[5:], 7]}
    routing = read_bytes(json.dumps(response).encode(), "r.json", hints=hints)
    np.testing.assert_array_equal(routing.tokens.ids, original.tokens.ids)
    np.testing.assert_array_equal(routing.experts, original.experts)


def test_sglang_request_of_another_size_is_refused(original: RoutingTrace, hints: ModelHints) -> None:
    buffer = _sglang_buffer(original).reshape(-1)
    written_dense = np.r_[buffer[:8], np.ones(len(buffer) - 8, dtype=np.int32)]
    cases = [(np.r_[buffer, 0], "not whole tokens of 4 hidden layers"), (written_dense, "dense layers are not all 0")]
    for values, expected in cases:
        response = {"meta_info": {"routed_experts": _b64(values)}}
        with pytest.raises(TraceFormatError, match=expected) as caught:
            read_bytes(json.dumps(response).encode(), "r.json", hints=hints)
        assert "\n" not in str(caught.value)


def _recorder_dump(original: RoutingTrace, zero_first: bool, records: int = 2) -> bytes:
    """per_token recorder passes over the text (split into `records` prefill chunks): physical ids [hidden layers,
    n, 4 slots] through a map whose physical 0 is logical 5, so a zero pad read as routing would show expert 5."""
    experts, model = original.experts, original.model
    num_experts = model.num_experts
    mapping = np.stack([np.roll(np.arange(num_experts), -5) for _ in range(HIDDEN_LAYERS)])  # physical p -> (p+5)%E
    inverse = np.argsort(mapping, axis=1)
    pieces = np.array_split(np.arange(experts.shape[1]), records)
    out = []
    for number, piece in enumerate(pieces):
        pad = 0 if zero_first and number == 0 else -1
        physical = np.full((HIDDEN_LAYERS, len(piece), 4), pad, dtype=np.int32)
        for row, layer in enumerate(model.moe_layers):
            physical[layer, :, : model.top_k] = inverse[layer][experts[row, piece]]
        out.append({"forward_pass_id": number, "rank": 0, "gatherer_key": "primary",
                    "input_ids": original.tokens.ids[piece].tolist(), "positions": piece.tolist(),
                    "extend_seq_lens": [len(piece)], "forward_mode": 1,
                    "topk_ids_of_layer": torch.from_numpy(physical), "misc_objects": [],
                    "global_physical_count": torch.zeros((HIDDEN_LAYERS, num_experts), dtype=torch.int32)})  # fmt: skip
    sink = io.BytesIO()
    torch.save({"records": out, "last_physical_to_logical_map": torch.from_numpy(mapping)}, sink)
    return sink.getvalue()


@pytest.mark.parametrize("records", [1, 2])
def test_sglang_recorder_first_pass_pads_with_zero(original: RoutingTrace, records: int) -> None:
    """The recorder's buffer starts as zeros: its first pass leaves the dense layer and slots past k at 0. Read
    without the model, layer 0 is not routing to (mapped) expert 5 and k stays 2."""
    routing = read_bytes(_recorder_dump(original, zero_first=True, records=records), "dump.pt")
    assert routing.model.moe_layers == (1, 2, 3) and routing.model.top_k == original.model.top_k
    np.testing.assert_array_equal(routing.experts, original.experts)
    if records == 1:
        assert any("pads with 0" in note for note in routing.model.notes)


def test_sglang_recorder_with_the_model(original: RoutingTrace, hints: ModelHints) -> None:
    routing = read_bytes(_recorder_dump(original, zero_first=True), "dump.pt", hints=hints)
    np.testing.assert_array_equal(routing.experts, original.experts)


# --- Megatron-Core ---------------------------------------------------------------------------------------------


def _megatron_record(step: int, rank: int, layer: int, rows: np.ndarray) -> str:
    """One record as router_trace.py writes it: top_indices from routing_map.nonzero(), ascending expert id."""
    ascending = np.sort(rows, axis=1).tolist()
    record = {"step": step, "stage": "pre_dispatch", "block": "decoder", "layer": layer, "rank": rank,
              "num_tokens": len(rows), "topk": rows.shape[1], "top_indices": ascending}  # fmt: skip
    return json.dumps(record)


def test_megatron_slots_are_a_set_not_a_ranking(original: RoutingTrace, hints: ModelHints) -> None:
    """Decoder layer numbers 1–3 (dense layer 0 counted) map to the model's MoE layers; the slots are by expert id,
    so the trace says it is unranked, in JSON and Parquet."""
    lines = [_megatron_record(0, 0, layer, original.experts[row]) for row, layer in enumerate((1, 2, 3))]
    routing = read_bytes("\n".join(lines).encode(), "router_trace_rank0.jsonl", hints=hints)
    assert routing.model.moe_layers == (1, 2, 3) and routing.slots_ranked is False
    np.testing.assert_array_equal(routing.experts, np.sort(original.experts, axis=-1))
    # by ascending id, slot 0 is the true first choice only where the first choice has the lower id
    first_is_lower = (original.experts[..., 0] < original.experts[..., 1]).mean()
    assert (routing.experts[..., 0] == original.experts[..., 0]).mean() == pytest.approx(first_is_lower)
    assert 0 < first_is_lower < 1
    assert to_json_dict(routing)["slots_ranked"] is False
    assert from_json_dict(json.loads(json.dumps(to_json_dict(routing)))).slots_ranked is False
    assert from_parquet_bytes(to_parquet_bytes(routing)).slots_ranked is False
    assert any("not in rank order" in note for note in routing.model.notes)


def test_megatron_pipeline_stages_merge(original: RoutingTrace, hints: ModelHints, tmp_path: Path) -> None:
    """Two stages of two layers each: rank 0 holds local layer 1 (the model's 1; its layer 0 is dense), rank 1
    local layers 0 and 1 (the model's 2 and 3). Step 1 lost layer 2 (capacity): left out and said."""
    rows = {layer: original.experts[row] for row, layer in enumerate((1, 2, 3))}
    rank0 = [_megatron_record(step, 0, 1, rows[1]) for step in (0, 1)]
    rank1 = [_megatron_record(0, 1, 0, rows[2]), _megatron_record(0, 1, 1, rows[3]), _megatron_record(1, 1, 1, rows[3])]
    paths = []
    for rank, lines in enumerate((rank0, rank1)):
        paths.append(tmp_path / f"router_trace_rank{rank}.jsonl")
        paths[-1].write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(TraceFormatError, match="give the run's pipeline stages"):
        read_files(paths, hints=hints)
    routing = read_files(paths, hints=replace(hints, pipeline_stages=2))
    assert routing.num_sequences == 1 and routing.model.moe_layers == (1, 2, 3)
    np.testing.assert_array_equal(routing.experts, np.sort(original.experts, axis=-1))
    notes = " | ".join(routing.model.notes)
    assert "2 pipeline stages" in notes and "1 step(s) left out for a missing layer: step 1 rank 0" in notes


def test_megatron_many_ranks_merge_by_digest() -> None:
    """5,000 ranks, every odd one a copy of the rank before it (each pair's routing its own): copies found, kept
    once (linear in records; comparing every pair of ranks took 87 s at this size)."""
    lines = []
    for rank in range(5000):
        pair = rank // 2
        lines.append(json.dumps({"step": 0, "block": "decoder", "layer": 0, "rank": rank, "num_tokens": 1,
                                 "topk": 2, "top_indices": [[pair % 50, 50 + pair // 50]]}))  # fmt: skip
    routing = read_bytes("\n".join(lines).encode(), "router_trace_rank0.jsonl")
    assert routing.num_sequences == 2500
    assert any("ranks 1, 3, 5" in note and "2492 more" in note for note in routing.model.notes)


# --- hostile files: one sentence, nothing sized by a forged number ---------------------------------------------


def _sglang_pt(mapping_value: int) -> bytes:
    physical = torch.zeros((1, 2, 2), dtype=torch.int32)
    physical[0, :, 1] = 1
    record = {"input_ids": [1, 2], "positions": [0, 1], "extend_seq_lens": [2], "topk_ids_of_layer": physical}
    mapping = torch.tensor([[0, mapping_value]], dtype=torch.int64)
    sink = io.BytesIO()
    torch.save({"records": [record], "last_physical_to_logical_map": mapping}, sink)
    return sink.getvalue()


def _npy(array: np.ndarray) -> bytes:
    sink = io.BytesIO()
    np.save(sink, array, allow_pickle=False)
    return sink.getvalue()


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


HOSTILE = {
    "SGLang map value 5e7": (lambda: _sglang_pt(50_000_000), "dump.pt", "experts = 50,000,001 is outside"),
    "SGLang map value 2**40": (lambda: _sglang_pt(2**40), "dump.pt", "too large for an expert id"),
    "vLLM token id 2**63": (
        lambda: _json({"prompt_token_ids": [2**63], "prompt_routed_experts": [[[0, 1]]]}),
        "r.json",
        "token ids (whole numbers from 0 to",
    ),
    "Megatron topk 2**62": (
        lambda: _json({"layer": 0, "num_tokens": 0, "topk": 2**62, "top_indices": []}),
        "router_trace_rank0.jsonl",
        "k = 4,611,686,018,427,387,904 is outside",
    ),
    "uint64 npy of 2**64-1": (
        lambda: _npy(np.full((1, 1, 2), 2**64 - 1, dtype=np.uint64)),
        "r.npy",
        "too large for an expert id",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_dump_is_one_sentence(case: str) -> None:
    make, name, expected = HOSTILE[case]
    with pytest.raises(TraceFormatError) as caught:
        read_bytes(make(), name)
    message = str(caught.value)
    assert expected in message and "\n" not in message and "prefix cache" not in message


# --- what "first choice" means: ranked by weight, or a set ---------------------------------------------------


def test_rank_slots_orders_by_weight_ties_stay() -> None:
    experts = np.array([[[3, 1, 2], [0, 4, 5]]])
    weights = np.array([[[0.2, 0.5, 0.3], [0.4, 0.4, 0.2]]])
    ranked, ranked_weights = rank_slots(experts, weights)
    np.testing.assert_array_equal(ranked, [[[1, 2, 3], [0, 4, 5]]])
    np.testing.assert_array_equal(ranked_weights, [[[0.5, 0.3, 0.2], [0.4, 0.4, 0.2]]])


def test_a_loaded_trace_with_weights_is_ranked_by_them(original: RoutingTrace) -> None:
    """A file whose writer put slots in another order (say, ascending id) but kept the weights reads ranked."""
    flipped = replace(original, experts=original.experts[..., ::-1].copy(), weights=original.weights[..., ::-1].copy())
    loaded = from_json_dict(json.loads(json.dumps(to_json_dict(flipped))))
    assert loaded.slots_ranked
    np.testing.assert_array_equal(loaded.experts, original.experts)
    assert (np.diff(loaded.weights, axis=-1) <= 0).all()


def _set_trace(sets: list[list[list[int]]], num_experts: int) -> RoutingTrace:
    """A compact trace of expert sets [L][T][k], one sequence, slots unranked (as an engine dump is)."""
    experts = np.asarray(sets, dtype=np.int64)
    count = experts.shape[1]
    tokens = Tokens(ids=np.arange(count) % 2, text=tuple("ab"[i % 2] for i in range(count)),
                    offsets=np.stack([np.arange(count), np.arange(count) + 1], axis=1),
                    sequence=np.zeros(count, dtype=np.int64), position=np.arange(count))  # fmt: skip
    model = ModelInfo("sets", "unknown", num_experts, experts.shape[2], "unknown", len(sets), tuple(range(len(sets))))
    text = "".join(tokens.text)
    return RoutingTrace(model, (text,), tokens, None, None, experts, None, (False,), slots_ranked=False)


def test_unranked_capacity_serves_each_token_whole() -> None:
    """t0 {0,1}, t1 {1,0}, t2 {0,1} and C = ⌈2/3 · k 2 · T 3 / E 2⌉ = 2. Ranked, every first choice goes
    before every second: expert 0 takes t0, t2 (first choices) and turns away
    t1; expert 1 takes t1 then t0 and turns away t2. As sets, token by token: both experts take t0 and t1 and
    turn t2 away twice."""
    sets = [[[0, 1], [1, 0], [0, 1]]]
    unranked = _set_trace(sets, 2)
    ranked = replace(unranked, slots_ranked=True)
    factor = 2 / 3  # C = ceil(2/3 · 2 · 3 / 2) = 2
    expected = {True: [[True, True], [True, False], [True, False]], False: [[True, True], [True, True], [False, False]]}
    for routing in (ranked, unranked):
        for simulate in (simulate_capacity, simulate_capacity_reference):
            result = simulate(routing, factor)
            assert int(result.capacity[0, 0]) == 2
            np.testing.assert_array_equal(result.kept[0], expected[routing.slots_ranked])


def test_unranked_flow_counts_every_pair_of_sets() -> None:
    """One token {0, 1} → {2, 3}: four pairs, one each; ranked, only its first choices 0 → 2."""
    unranked = _set_trace([[[0, 1]], [[2, 3]]], 4)
    counts = transition_counts(unranked, 0)
    assert counts[0, 2] == counts[0, 3] == counts[1, 2] == counts[1, 3] == 1 and counts.sum() == 4
    ranked = transition_counts(replace(unranked, slots_ranked=True), 0)
    assert ranked[0, 2] == 1 and ranked.sum() == 1
    assert flow_summary(unranked, shuffles=2)["tokens"].tolist() == [1]


def test_unranked_first_choice_statistics_are_empty_not_made_up() -> None:
    """Neighbours: the any-choice rate stays (a set statistic), the first-choice rate is NaN; token-id
    consistency is NaN; the colour is the lowest-numbered expert."""
    unranked = _set_trace([[[3, 1], [1, 2], [0, 3]]], 4)
    repeats = consecutive_repeats(unranked)
    assert np.isnan(repeats["first_choice"]).all() and np.isnan(repeats["first_choice_text_chance"]).all()
    assert repeats["any_choice"].tolist() == [0.5]  # {3,1}∩{1,2} = {1}; {1,2}∩{0,3} = ∅
    assert np.isnan(token_id_consistency(unranked)["consistency"]).all()
    assert token_frame(unranked, 0)["top1"].tolist() == [1, 1, 0]
    assert unranked.unranked_sentence("x").startswith("this trace records each token's experts but not which came")


def test_one_size_limit_in_one_unit() -> None:
    """Streamlit's upload box counts megabytes as 10^6 bytes (its front end, off Windows): the CLI and every
    reader refuse past the same 50,000,000 bytes, not 50 MiB."""
    from moe_core.traces.checks import MAX_TRACE_BYTES, MAX_TRACE_MB
    from moe_core.traces.io import check_size

    assert MAX_TRACE_BYTES == MAX_TRACE_MB * 1_000_000 == 50_000_000
    check_size(50_000_000)
    with pytest.raises(TraceFormatError, match=r"50\.0 MB; traces up to 50 MB"):
        check_size(50_000_001)


@pytest.mark.parametrize("case", ["vLLM token id 2**63", "SGLang map value 2**40"])
def test_show_refuses_hostile_dumps_in_one_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`show` printed a traceback (OverflowError) or wrote E = 1,099,511,627,777: now one line, exit 2."""
    from tests.cli_runner import run_cli

    make, name, _ = HOSTILE[case]
    dump = tmp_path / name
    dump.write_bytes(make())
    code, out, err = run_cli(capsys, "show", str(dump))
    assert code == 2 and not out and len(err.strip().splitlines()) == 1 and "Traceback" not in err
