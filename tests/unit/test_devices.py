"""Device and dtype choice: CUDA + bf16 where there is a GPU, CPU + fp32 otherwise (no GPU needed to test)."""

from __future__ import annotations

import pytest
import torch

from moe_core.devices import choose_placement


def _fake_gpu(monkeypatch: pytest.MonkeyPatch, available: bool, bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


def test_auto_without_gpu_is_cpu_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CUDA: CPU in fp32, no device map."""
    _fake_gpu(monkeypatch, available=False)
    placement = choose_placement("auto")
    assert (placement.device, placement.dtype, placement.device_map) == ("cpu", torch.float32, None)
    assert placement.from_pretrained_kwargs() == {"dtype": torch.float32}


def test_auto_with_gpu_is_cuda_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA with bf16 support: bf16, all on the GPU."""
    _fake_gpu(monkeypatch, available=True)
    placement = choose_placement("auto")
    assert (placement.device, placement.dtype, placement.device_map) == ("cuda", torch.bfloat16, "cuda")


def test_gpu_without_bf16_uses_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Older GPUs (no bf16) get fp16."""
    _fake_gpu(monkeypatch, available=True, bf16=False)
    assert choose_placement("auto").dtype == torch.float16


def test_auto_map_spreads_with_accelerate(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto-map asks accelerate for device_map='auto' (models larger than one GPU)."""
    _fake_gpu(monkeypatch, available=True)
    assert choose_placement("auto-map").from_pretrained_kwargs() == {"dtype": torch.bfloat16, "device_map": "auto"}


def test_cuda_request_falls_back_to_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asking for CUDA on a machine without it falls back to CPU instead of crashing."""
    _fake_gpu(monkeypatch, available=False)
    assert choose_placement("cuda").device == "cpu"


def test_explicit_cpu_ignores_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """cpu means cpu even when a GPU is present."""
    _fake_gpu(monkeypatch, available=True)
    assert choose_placement("cpu").dtype == torch.float32


def test_unknown_device_is_refused() -> None:
    """A typo gets a ValueError naming the choices."""
    with pytest.raises(ValueError, match="choose one of"):
        choose_placement("gpu0")
