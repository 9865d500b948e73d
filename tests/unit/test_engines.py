"""Importing routing from serving engines (moe_core.engines): each documented layout, built from a real trace of the
demo model, reads back to the very experts the model chose; malformed files are refused in one plain line."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from moe_core.capacity.simulate import simulate_capacity
from moe_core.capture.record import trace
from moe_core.engines import FORMATS, detect, model_hints, read_bytes, read_files
from moe_core.engines.common import Payload
from moe_core.models import DEMO_MODEL, load_model
from moe_core.traces.checks import MAX_TRACE_BYTES, TraceFormatError
from moe_core.traces.io import load_trace, to_json_text
from moe_core.traces.types import DROPPED, RoutingTrace
from tests.cli_runner import run_cli as _cli

TEXTS = ("def f(x): return x * 2", "Guten Tag, wie geht es dir heute?")


@pytest.fixture(scope="module")
def demo() -> Any:
    return load_model(DEMO_MODEL)


@pytest.fixture(scope="module")
def original(demo: Any) -> RoutingTrace:
    """The demo model's own routing of two texts: what every dump below was written from."""
    return trace(demo.model, demo.tokenizer, list(TEXTS), name=DEMO_MODEL)


@pytest.fixture(scope="module")
def hints() -> Any:
    return model_hints(DEMO_MODEL)


def _rows(routing: RoutingTrace, sequence: int) -> tuple[np.ndarray, np.ndarray]:
    """One sequence's experts as an engine writes them, [tokens, L, k], and its token ids."""
    mask = routing.tokens.sequence == sequence
    return routing.experts[:, mask].transpose(1, 0, 2).copy(), routing.tokens.ids[mask].copy()


def _npy(array: np.ndarray) -> bytes:
    sink = io.BytesIO()
    np.save(sink, array, allow_pickle=False)
    return sink.getvalue()


def _vllm_response(original: RoutingTrace, sequence: int, prompt_len: int) -> dict[str, Any]:
    """A /v1/completions response as vLLM returns it with --enable-return-routed-experts and return_token_ids: the
    completion carries one token id more than routed rows (its last token is never fed back)."""
    rows, ids = _rows(original, sequence)
    return {
        "id": "cmpl-1",
        "prompt_token_ids": ids[:prompt_len].tolist(),
        "prompt_routed_experts": rows[:prompt_len].tolist(),
        "choices": [
            {
                "index": 0,
                "text": "…",
                "token_ids": [*ids[prompt_len:].tolist(), 11],
                "routed_experts": rows[prompt_len:].tolist(),
            }
        ],
    }


def _refusal(data: bytes, name: str, source: str = "auto", hints: Any = None) -> str:
    """The one-line reason a dump is refused (fails if it is read, or raises anything but TraceFormatError)."""
    with pytest.raises(TraceFormatError) as caught:
        read_bytes(data, name, source, hints)
    message = str(caught.value)
    assert message and "\n" not in message and "Traceback" not in message
    return message


# --- vLLM --------------------------------------------------------------------------------------------------------


def test_vllm_response_reads_back_the_models_experts(original: RoutingTrace) -> None:
    """prompt_routed_experts + the choice's routed_experts are the sequence's experts, ids and all, no scores."""
    data = json.dumps(_vllm_response(original, 0, prompt_len=5)).encode()
    routing = read_bytes(data, "response.json")
    rows, ids = _rows(original, 0)
    np.testing.assert_array_equal(routing.experts, rows.transpose(1, 0, 2))
    np.testing.assert_array_equal(routing.tokens.ids, ids)
    assert routing.logits is None and routing.probs is None and routing.weights is None
    assert routing.tokens.text[:2] == (f"#{ids[0]}", f"#{ids[1]}")
    assert routing.model.num_experts == int(rows.max()) + 1
    assert any("highest expert id + 1" in note for note in routing.model.notes)
    assert any("last generated token has no routing" in note for note in routing.model.notes)


def test_vllm_with_the_model_takes_e_layers_and_text_from_it(original: RoutingTrace, hints: Any, demo: Any) -> None:
    """--model: E and the MoE layers from the config (said so), token text from the tokenizer."""
    routing = read_bytes(json.dumps(_vllm_response(original, 1, prompt_len=4)).encode(), "r.json", hints=hints)
    _, ids = _rows(original, 1)
    assert routing.model.num_experts == original.model.num_experts
    assert routing.model.moe_layers == original.model.moe_layers
    assert any(f"E = {original.model.num_experts} from the config of {DEMO_MODEL}" in n for n in routing.model.notes)
    assert routing.texts == (demo.tokenizer.decode(ids.tolist()),)


def test_vllm_prefix_cached_positions_are_left_out_not_dropped(original: RoutingTrace) -> None:
    """-1 in every slot (served from the prefix cache) is unknown routing: left out and noted, never DROPPED."""
    response = _vllm_response(original, 0, prompt_len=6)
    response["prompt_routed_experts"][:3] = [[[-1, -1]] * len(original.model.moe_layers)] * 3
    routing = read_bytes(json.dumps(response).encode(), "r.json")
    rows, ids = _rows(original, 0)
    np.testing.assert_array_equal(routing.experts, rows[3:].transpose(1, 0, 2))
    np.testing.assert_array_equal(routing.tokens.ids, ids[3:])
    assert not (routing.experts == DROPPED).any()
    assert any("positions 0–2 were served from vLLM's prefix cache" in note for note in routing.model.notes)
    assert any("start after position 0" in note and "at 3" in note for note in routing.model.notes)
    assert not simulate_capacity(routing, capacity_factor=64.0).fully_dropped.any()


@pytest.mark.parametrize("encoding", ["npy", "base64-npy-file", "base64-npy-field", "json-list"])
def test_vllm_array_encodings(original: RoutingTrace, encoding: str) -> None:
    """The SDK's numpy array (.npy), base64 .npy (a file, or a response field) and a bare JSON list all read."""
    rows, _ = _rows(original, 1)
    array = rows.astype(np.int16)
    encoded = base64.b64encode(_npy(array))
    data, name = {
        "npy": (_npy(array), "routed.npy"),
        "base64-npy-file": (encoded, "routed.txt"),
        "base64-npy-field": (json.dumps({"prompt_routed_experts": encoded.decode()}).encode(), "r.json"),
        "json-list": (json.dumps(rows.tolist()).encode(), "routed.json"),
    }[encoding]
    assert detect(Payload(name, data)) == "vllm"
    np.testing.assert_array_equal(read_bytes(data, name).experts, rows.transpose(1, 0, 2))


# --- SGLang ------------------------------------------------------------------------------------------------------


def test_sglang_per_request_base64_with_the_model(original: RoutingTrace, hints: Any) -> None:
    """meta_info.routed_experts (base64 int32, no shape) reads with --model's L and k; start_len trims the start."""
    rows, _ = _rows(original, 0)
    payload = base64.b64encode(rows[2:].astype("<i4").tobytes()).decode()
    response = {"text": "…", "meta_info": {"routed_experts": payload, "routed_experts_start_len": 2}}
    data = json.dumps(response).encode()
    assert detect(Payload("r.json", data)) == "sglang"
    routing = read_bytes(data, "r.json", hints=hints)
    np.testing.assert_array_equal(routing.experts, rows[2:].transpose(1, 0, 2))
    assert any("sequence 0 at 2" in note for note in routing.model.notes)
    assert "--model" in _refusal(data, "r.json")


def _physical(original: RoutingTrace) -> tuple[np.ndarray, np.ndarray]:
    """An expert-parallel layout: 12 physical experts replicating the 8 logical ones (a shuffled map per layer),
    and for each logical id one of its replicas."""
    rng = np.random.default_rng(0)
    num_layers, num_experts = len(original.model.moe_layers) + 1, original.model.num_experts
    mapping = np.stack([rng.permutation(np.r_[np.arange(num_experts), rng.integers(0, num_experts, 4)])
                        for _ in range(num_layers)])  # fmt: skip
    return mapping, rng


def _record(logical: np.ndarray, ids: np.ndarray, positions: np.ndarray, lengths: list[int] | None,
            mapping: np.ndarray, rng: Any) -> dict[str, Any]:  # fmt: skip
    """One forward pass as SGLang's per_token recorder keeps it: physical ids [all layers, tokens, 8], the last
    layer dense (all -1) and the slots past k padded with -1."""
    count, moe_layers, top_k = logical.shape
    physical = np.full((mapping.shape[0], count, 8), -1, dtype=np.int32)
    for layer in range(moe_layers):
        for t in range(count):
            for j in range(top_k):
                replicas = np.flatnonzero(mapping[layer] == logical[t, layer, j])
                physical[layer, t, j] = rng.choice(replicas)
    return {"forward_pass_id": 0, "rank": 0, "gatherer_key": "primary", "input_ids": ids.tolist(),
            "positions": positions.tolist(), "extend_seq_lens": lengths, "forward_mode": 1,
            "topk_ids_of_layer": torch.from_numpy(physical), "misc_objects": [],
            "global_physical_count": torch.zeros(mapping.shape, dtype=torch.int32)}  # fmt: skip


def _sglang_dump(original: RoutingTrace) -> bytes:
    """Sequence 0 prefilled but its last token, that token decoded alone, then sequence 1 prefilled."""
    mapping, rng = _physical(original)
    (rows0, ids0), (rows1, ids1) = _rows(original, 0), _rows(original, 1)
    n0, n1 = len(ids0), len(ids1)
    records = [
        _record(rows0[:-1], ids0[:-1], np.arange(n0 - 1), [n0 - 1], mapping, rng),
        _record(rows0[-1:], ids0[-1:], np.array([n0 - 1]), None, mapping, rng),
        _record(rows1, ids1, np.arange(n1), [n1], mapping, rng),
    ]
    sink = io.BytesIO()
    torch.save({"records": records, "last_physical_to_logical_map": torch.from_numpy(mapping)}, sink)
    return sink.getvalue()


def test_sglang_recorder_maps_physical_to_logical(original: RoutingTrace) -> None:
    """The per_token .pt dump: physical ids mapped back, dense layer and padded slots gone, decode step joined."""
    data = _sglang_dump(original)
    assert detect(Payload("expert_distribution_recorder_1_0.pt", data)) == "sglang"
    routing = read_bytes(data, "expert_distribution_recorder_1_0.pt")
    np.testing.assert_array_equal(routing.experts, original.experts)
    np.testing.assert_array_equal(routing.tokens.ids, original.tokens.ids)
    np.testing.assert_array_equal(routing.tokens.sequence, original.tokens.sequence)
    assert routing.model.moe_layers == original.model.moe_layers and routing.model.top_k == original.model.top_k
    assert routing.model.num_experts == original.model.num_experts
    assert any("physical-to-logical map" in note for note in routing.model.notes)


def test_sglang_pt_with_code_is_refused() -> None:
    """torch.load(weights_only=True): a pickle that would run code is refused, not executed."""
    sink = io.BytesIO()
    torch.save({"records": [], "last_physical_to_logical_map": Path("/")}, sink)  # not a plain data type
    assert "not a readable torch.save file" in _refusal(sink.getvalue(), "dump.pt")


# --- Megatron-Core -----------------------------------------------------------------------------------------------


def _megatron_lines(rows: np.ndarray, rank: int, layers: tuple[int, ...], step: int = 0) -> list[str]:
    return [json.dumps({"step": step, "stage": "pre_dispatch", "block": "decoder", "layer": layer, "rank": rank,
                        "num_tokens": len(rows), "topk": rows.shape[2], "top_indices": rows[:, row].tolist()})
            for row, layer in enumerate(layers)]  # fmt: skip


def _megatron_files(original: RoutingTrace, folder: Path) -> list[Path]:
    """Rank 0 routed sequence 0, rank 1 sequence 1, rank 2 is a tensor-parallel copy of rank 0; plus an MTP line."""
    layers = original.model.moe_layers
    (rows0, _), (rows1, _) = _rows(original, 0), _rows(original, 1)
    mtp = json.dumps({"step": 0, "block": "mtp", "mtp_idx": 0, "layer": 0, "rank": 1, "num_tokens": 1, "topk": 2,
                      "top_indices": [[0, 1]]})  # fmt: skip
    contents = {0: _megatron_lines(rows0, 0, layers), 1: [*_megatron_lines(rows1, 1, layers), mtp],
                2: _megatron_lines(rows0, 2, layers)}  # fmt: skip
    paths = []
    for rank, lines in contents.items():
        path = folder / f"router_trace_rank{rank}.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def test_megatron_ranks_merge(original: RoutingTrace, tmp_path: Path) -> None:
    """Several ranks' JSONL: one sequence per (step, rank), copies kept once, MTP left out (all noted)."""
    paths = _megatron_files(original, tmp_path)
    assert detect(Payload(paths[0].name, paths[0].read_bytes())) == "megatron"
    routing = read_files(paths)
    np.testing.assert_array_equal(routing.experts, original.experts)
    np.testing.assert_array_equal(routing.tokens.sequence, original.tokens.sequence)
    assert routing.tokens.text[0] == "?0"
    notes = " | ".join(routing.model.notes)
    assert "ranks 2 repeat a lower rank's routing" in notes and "MTP" in notes and "no token ids" in notes


# --- malformed input ---------------------------------------------------------------------------------------------


def _vllm_text(original: RoutingTrace, change: Any) -> bytes:
    response = _vllm_response(original, 0, prompt_len=5)
    change(response)
    return json.dumps(response).encode()


def _drop_routing(response: dict[str, Any]) -> None:
    response.pop("prompt_routed_experts")
    response["choices"][0].pop("routed_experts")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("bad-json", "not valid JSON"),
        ("ragged", "ragged"),
        ("floats", "whole numbers"),
        ("partial-minus-one", "some slots but not all"),
        ("negative", "negative"),
        ("missing-routing", "--enable-return-routed-experts"),
        ("ids-mismatch", "prompt_token_ids but 5 rows"),
        ("truncated-npy-base64", "not valid base64"),
        ("not-npy-base64", "not a readable .npy"),
        ("npy-floats", "whole numbers"),
        ("npy-forged-shape", "header does not match its data"),
    ],
)
def test_malformed_vllm_is_one_line(original: RoutingTrace, case: str, expected: str) -> None:
    encoded = base64.b64encode(_npy(_rows(original, 0)[0])).decode()

    def set_slot(value: Any) -> Any:
        return lambda r: r["prompt_routed_experts"][1][0].__setitem__(0, value)

    data = {
        "bad-json": b'{"prompt_routed_experts": [[[1, 2]]',
        "ragged": _vllm_text(original, lambda r: r["prompt_routed_experts"][2].pop()),
        "floats": _vllm_text(original, set_slot(1.5)),
        "partial-minus-one": _vllm_text(original, set_slot(-1)),
        "negative": _vllm_text(original, set_slot(-3)),
        "missing-routing": _vllm_text(original, _drop_routing),
        "ids-mismatch": _vllm_text(original, lambda r: r["prompt_token_ids"].pop()),
        "truncated-npy-base64": encoded[:-3].encode(),
        "not-npy-base64": json.dumps({"prompt_routed_experts": encoded[:40] + "AAAA"}).encode(),
        "npy-floats": _npy(np.zeros((2, 4, 2), dtype=np.float32)),
        "npy-forged-shape": _npy(np.zeros((2, 4, 2), dtype=np.int16)).replace(b"(2, 4, 2)", b"(9999999, 4, 2)"),
    }[case]
    assert expected in _refusal(data, "routed.npy" if case.startswith("npy") else "r.json", "vllm")


def test_expert_ids_beyond_the_models_e_are_refused(original: RoutingTrace, hints: Any) -> None:
    """With --model, E is known: an id of E or more is refused (without it, E would be the highest id + 1)."""
    data = _vllm_text(original, lambda r: r["prompt_routed_experts"][0][0].__setitem__(0, 8))
    assert "outside 0 to 7" in _refusal(data, "r.json", hints=hints)
    assert read_bytes(data, "r.json").model.num_experts == 9


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("truncated-int32", "truncated"),
        ("not-whole-tokens", "not whole tokens"),
        ("garbage-base64", "not valid base64"),
    ],
)
def test_malformed_sglang_request_is_one_line(original: RoutingTrace, hints: Any, case: str, expected: str) -> None:
    raw = _rows(original, 0)[0].astype("<i4").tobytes()
    text = {
        "truncated-int32": base64.b64encode(raw[:-2]).decode(),
        "not-whole-tokens": base64.b64encode(raw[:-4]).decode(),
        "garbage-base64": "abc$%def",
    }[case]
    data = json.dumps({"meta_info": {"routed_experts": text}}).encode()
    assert expected in _refusal(data, "r.json", "sglang", hints)


def test_malformed_sglang_recorder_is_one_line(original: RoutingTrace) -> None:
    """A physical id beyond the map, and a file that is no torch.save at all."""
    data = _sglang_dump(original)
    loaded = torch.load(io.BytesIO(data), weights_only=True)
    loaded["records"][0]["topk_ids_of_layer"][0, 0, 0] = 99
    sink = io.BytesIO()
    torch.save(loaded, sink)
    assert "physical expert id outside" in _refusal(sink.getvalue(), "d.pt")
    assert "not a readable torch.save" in _refusal(b"PK\x03\x04" + b"\0" * 64, "d.pt")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"layer": 0, "num_tokens": 2, "topk": 2}', "lacks top_indices"),
        ('{"layer": 0, "num_tokens": 2, "topk": 2, "top_indices": [[1, 2], [3]]}', "ragged"),
        ('{"layer": 0, "num_tokens": 3, "topk": 2, "top_indices": [[1, 2], [3, 4]]}', "not [3, 2]"),
        ('{"layer": 0, "num_tokens": 1, "topk": 2, "top_indices": [[1, "2"]]}', "whole numbers"),
        ('{"layer": 0, "num_tokens": 1, "topk": 2, "top_indices": [[1, 2]]}\n{"layer": 0, "top_', "line 2"),
    ],
)
def test_malformed_megatron_is_one_line(line: str, expected: str) -> None:
    assert expected in _refusal(line.encode(), "router_trace_rank0.jsonl", "megatron")


def test_oversized_and_unknown_files_are_refused() -> None:
    """The documented size limit holds before parsing; a file no sniffer claims is named as such."""
    assert "MB" in _refusal(b" " * (MAX_TRACE_BYTES + 1), "big.json")
    assert "not a routing file this tool reads" in _refusal(b"hello, world", "notes.bin")
    unrelated = _refusal(b'{"name": "package.json", "version": null}', "package.json")  # valid JSON, no routing
    assert unrelated.startswith("package.json: not a routing file this tool reads (it reads a routing trace saved")
    assert "Megatron-Core router trace" in unrelated and "format version" not in unrelated


def test_sniffing_is_a_table_that_knows_the_saved_trace(original: RoutingTrace) -> None:
    """ "auto" reads this tool's own saved trace too (the upload box takes every format through one reader)."""
    assert next(iter(FORMATS)) == "trace"
    data = to_json_text(original).encode()
    assert detect(Payload("t.json", data)) == "trace"
    np.testing.assert_array_equal(read_bytes(data, "t.json").experts, original.experts)


# --- the CLI -----------------------------------------------------------------------------------------------------


def test_cli_show_prints_the_trace_json(original: RoutingTrace, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """show FILE… prints trace's JSON: experts as routed, scores null."""
    code, out, _ = _cli(capsys, "show", *map(str, _megatron_files(original, tmp_path)), "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["layers"][0]["logits"] is None and data["layers"][0]["probs"] is None
    np.testing.assert_array_equal(np.asarray([layer["experts"] for layer in data["layers"]]), original.experts)


def test_cli_show_converts_to_parquet(original: RoutingTrace, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """show --from sglang --out trace.parquet writes a trace that loads back with the same experts."""
    dump = tmp_path / "dump.pt"
    dump.write_bytes(_sglang_dump(original))
    out = tmp_path / "trace.parquet"
    code, _, err = _cli(capsys, "show", str(dump), "--from", "sglang", "--out", str(out))
    assert code == 0 and "wrote" in err
    np.testing.assert_array_equal(load_trace(out).experts, original.experts)


def test_cli_show_bad_file_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "router_trace_rank0.jsonl"
    bad.write_text('{"layer": 0, "top_indices": 5}\n', encoding="utf-8")
    for argv in (["show", str(bad)], ["show", str(tmp_path / "missing.json")], ["show", str(bad), "--from", "x"]):
        code, out, err = _cli(capsys, *argv)
        assert code == 2 and not out and len(err.strip().splitlines()) == 1


def test_vllm_completion_without_the_prompt_starts_after_it(original: RoutingTrace) -> None:
    """Only routed_experts returned (no prompt routing): the completion is shown, starting at usage.prompt_tokens."""
    response = _vllm_response(original, 0, prompt_len=4)
    del response["prompt_routed_experts"], response["prompt_token_ids"]
    response["usage"] = {"prompt_tokens": 4, "completion_tokens": 99}
    routing = read_bytes(json.dumps(response).encode(), "r.json")
    rows, ids = _rows(original, 0)
    np.testing.assert_array_equal(routing.experts, rows[4:].transpose(1, 0, 2))
    np.testing.assert_array_equal(routing.tokens.ids, ids[4:])
    notes = " | ".join(routing.model.notes)
    assert "sequence 0 at 4" in notes and "prompt's routing is not in the file" in notes


def test_cli_show_with_a_tokenizer_shows_text(original: RoutingTrace, tmp_path: Path, demo: Any,
                                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """--tokenizer gives token text (and nothing else: E stays the highest id + 1)."""
    path = tmp_path / "response.json"
    path.write_text(json.dumps(_vllm_response(original, 1, prompt_len=3)), encoding="utf-8")
    code, out, _ = _cli(capsys, "show", str(path), "--tokenizer", DEMO_MODEL)
    assert code == 0
    data = json.loads(out)
    _, ids = _rows(original, 1)
    assert data["texts"] == [demo.tokenizer.decode(ids.tolist())]
    assert any("highest expert id + 1" in note for note in data["model"]["notes"])


def test_reading_a_dump_imports_no_torch(original: RoutingTrace, tmp_path: Path) -> None:
    """Only SGLang's .pt needs torch: a vLLM array or a Megatron trace reads without importing torch/transformers."""
    npy, jsonl = tmp_path / "routed.npy", tmp_path / "router_trace_rank0.jsonl"
    npy.write_bytes(_npy(_rows(original, 0)[0]))
    jsonl.write_text("\n".join(_megatron_lines(_rows(original, 1)[0], 0, original.model.moe_layers)), encoding="utf-8")
    script = (
        "import sys\n"
        "from moe_core.engines import read_files\n"
        f"shapes = [read_files([p]).experts.shape for p in ({str(npy)!r}, {str(jsonl)!r})]\n"
        "print(len(shapes), sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "2 []"
