"""The one place that knows device types: which device a rank trains on and what that device supports.

Everything else in the worker asks this module (`is_accelerator`, `autocast`,
`fused_adamw`, `length_multiple`, `ddp_device_ids`, `empty_cache`) instead of
spelling ``cuda``, so CUDA, ROCm and XPU differ here only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

# Batch lengths on accelerators are padded up to a multiple of this (never past data.seq_len): with a few
# distinct shapes instead of one per batch, attention plans, GEMM heuristics and compiled kernels are
# built once per shape and reused, rather than rebuilt for nearly every step.
ACCELERATOR_LENGTH_MULTIPLE = 64


def is_accelerator(device: torch.device) -> bool:
    """True for a GPU of any vendor (CUDA, ROCm, which torch calls cuda, or XPU)."""
    return device.type in ("cuda", "xpu")


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """bf16 autocast on an accelerator when `dtype` is bfloat16; nothing otherwise."""
    if is_accelerator(device) and dtype == torch.bfloat16:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def fused_adamw(device: torch.device) -> bool | None:
    """AdamW's `fused` argument: True where the device has the fused kernel, None (torch's default) elsewhere."""
    return True if is_accelerator(device) else None


def length_multiple(device: torch.device) -> int:
    """What batch lengths are padded to a multiple of on this device (1: no padding beyond the longest row)."""
    return ACCELERATOR_LENGTH_MULTIPLE if is_accelerator(device) else 1


def ddp_device_ids(device: torch.device) -> list[int] | None:
    """DistributedDataParallel's `device_ids`: the rank's one accelerator, None on the CPU."""
    return [device.index] if is_accelerator(device) and device.index is not None else None


def empty_cache(device: torch.device) -> None:
    """Give the caching allocator's free blocks back, so the next task (or another process) can use them."""
    if is_accelerator(device):
        torch.accelerator.empty_cache()
