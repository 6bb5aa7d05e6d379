"""Device, precision and thread settings shared by training, scoring and synthesis."""

from __future__ import annotations

import contextlib
import functools
import os

import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but no CUDA device is available")
    return torch.device(name)


def set_threads(n: int | None = None) -> int:
    """Use every core for intra-op parallelism and none for inter-op: on a
    2-core machine extra pools (or DataLoader workers) only oversubscribe."""
    n = n or int(os.environ.get("MEDIDIFF_THREADS", 0)) or (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX512-BF16 / AMX); without
    it bf16 autocast is emulated and slower than fp32."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def autocast(device: torch.device, precision: str = "auto"):
    """Autocast context: bf16 on CPUs that support it, fp16 on CUDA, else none."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type == "cpu":
        if precision == "bf16" or (precision == "auto" and cpu_supports_bf16()):
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()
    if device.type == "cuda":
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()
