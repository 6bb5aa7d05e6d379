"""Device, precision and thread settings shared by training, scoring and synthesis."""

from __future__ import annotations

import contextlib
import functools
import os

import torch


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r} (auto | cpu | cuda)")
    return torch.device(device)


@functools.lru_cache(maxsize=1)
def cpu_bf16_supported() -> bool:
    """Native bf16 on this CPU (AVX512-BF16/AMX via oneDNN), checked by running a
    tiny conv under autocast: without native support bf16 is emulated and slower."""
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = torch.nn.functional.conv3d(torch.ones(1, 1, 4, 4, 4), torch.ones(1, 1, 3, 3, 3))
        return y.dtype == torch.bfloat16 and bool(torch.isfinite(y.float()).all())
    except Exception:
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' → bf16 on CPUs with native bf16, bf16/fp16 AMP on CUDA, else fp32."""
    if precision != "auto":
        if precision == "bf16" and device.type == "cpu" and not cpu_bf16_supported():
            raise RuntimeError("precision bf16 requested but this CPU has no bf16 support")
        if precision == "fp16" and device.type != "cuda":
            raise RuntimeError("precision fp16 needs CUDA")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_bf16_supported() else "fp32"


def autocast_ctx(precision: str, device: torch.device):
    """Autocast for an already-resolved precision."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def autocast(device: torch.device, precision: str = "auto"):
    return autocast_ctx(resolve_precision(precision, device), device)


def set_threads(local_world: int = 1, threads: int | None = None, power_of_two: bool = False) -> int:
    """Intra-op threads = cores / processes on this node (MEDIDIFF_THREADS wins):
    on a 2-core machine extra threads or DataLoader workers only oversubscribe.

    ``power_of_two`` (scoring and calibration): round down to a power of two. torch splits an
    elementwise op into one chunk per thread, and a chunk boundary that is not on a SIMD vector
    boundary computes a few values on another code path (SiLU: ~3e-8 apart with 3 threads against
    1, 2 or 4). The model grids' tensor sizes are multiples of 2^12, so with power-of-two thread
    counts every process — a local run, a Dask worker with cores/N threads — computes the same bits."""
    env = int(os.environ.get("MEDIDIFF_THREADS", 0) or 0)
    n = int(threads) if threads else env or max(1, (os.cpu_count() or 1) // max(1, local_world))
    if power_of_two:
        n = 1 << (max(1, n).bit_length() - 1)
    torch.set_num_threads(n)
    return n
