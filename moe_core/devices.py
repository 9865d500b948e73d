"""Which device and dtype to run on: CUDA with bf16 where there is a GPU, CPU with fp32 otherwise."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moe_core.defaults import DEVICE_CHOICES

__all__ = ["DEVICE_CHOICES", "Placement", "choose_placement"]


@dataclass(frozen=True)
class Placement:
    """Arguments for from_pretrained, and where inputs go."""

    device: str  # where the input ids are sent ("cuda", "cpu"); with a device map, the first device
    dtype: torch.dtype
    device_map: str | None  # "cuda": all on the GPU; "auto": spread over GPUs and CPU (accelerate)

    def from_pretrained_kwargs(self) -> dict[str, object]:
        kwargs: dict[str, object] = {"dtype": self.dtype}
        if self.device_map is not None:
            kwargs["device_map"] = self.device_map
        return kwargs


def choose_placement(requested: str = "auto") -> Placement:
    """`auto`: CUDA + bf16 (fp16 on GPUs without bf16) if CUDA is available, else CPU + fp32.

    `auto-map`: as `auto`, but with `device_map="auto"` on CUDA, for models larger than one GPU.
    `cuda` without a GPU falls back to CPU rather than failing: the caller shows `placement.device`.
    """
    if requested not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {requested!r}: choose one of {', '.join(DEVICE_CHOICES)}")
    if requested == "cpu" or not torch.cuda.is_available():
        return Placement("cpu", torch.float32, None)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return Placement("cuda", dtype, "auto" if requested == "auto-map" else "cuda")
