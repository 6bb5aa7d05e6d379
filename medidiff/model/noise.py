"""Noise for diffusion training and partial-noising at scoring time.

``make_noise(kind, shape, generator, device)`` with ``shape = (B, C, D, H, W)``:

* ``gaussian`` — i.i.d. N(0, 1).
* ``simplex`` — AnoDDPM-style multi-octave 3D gradient (Perlin-type) noise,
  vectorised in torch (a few ms at 64³, far below one network step); each
  octave doubles the frequency and multiplies the amplitude by ``persistence``;
  random lattice offset per octave; normalised to zero mean / unit variance per
  sample and channel.
* ``coarse`` — Gaussian at 1/``factor`` resolution, trilinearly upsampled,
  renormalised to unit variance (Kascenas et al. 2023).

All randomness comes from the given ``torch.Generator`` (CPU generators are
used for generation and the result moved to ``device``, so the same seed gives
the same noise on every device).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

NOISE_KINDS = ("gaussian", "simplex", "coarse")


def _normalise(x: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(2, x.ndim))
    x = x - x.mean(dim=dims, keepdim=True)
    return x / x.std(dim=dims, keepdim=True).clamp_min(1e-8)


def _fade(t: torch.Tensor) -> torch.Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


def _perlin3d(shape: Sequence[int], res: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """One octave of 3D gradient noise on ``shape`` with ``res`` lattice cells per axis.

    Corner gradients are gathered with separable ``index_select`` along each
    axis (cheap: the lattice is tiny), then blended with the quintic fade."""
    D, H, W = shape
    rd, rh, rw = (max(1, int(r)) for r in res)
    grads = torch.randn((rd + 2, rh + 2, rw + 2, 3), generator=generator, dtype=torch.float32)
    grads = grads / grads.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    grads = grads.permute(3, 0, 1, 2).contiguous()  # (3, rd+2, rh+2, rw+2)
    offset = torch.rand(3, generator=generator, dtype=torch.float32)  # random phase, in cells

    def axis(n, r, off):
        u = (torch.arange(n, dtype=torch.float32) + 0.5) * (r / n) + off
        i = u.floor().long()
        return i, u - i

    (i0, f0), (i1, f1), (i2, f2) = axis(D, rd, offset[0]), axis(H, rh, offset[1]), axis(W, rw, offset[2])
    F0, F1, F2 = f0[:, None, None], f1[None, :, None], f2[None, None, :]
    w0, w1, w2 = _fade(F0), _fade(F1), _fade(F2)
    out = torch.zeros((D, H, W), dtype=torch.float32)
    for c0 in (0, 1):
        g0 = grads.index_select(1, i0 + c0)
        for c1 in (0, 1):
            g01 = g0.index_select(2, i1 + c1)
            wt01 = (w0 if c0 else 1 - w0) * (w1 if c1 else 1 - w1)
            for c2 in (0, 1):
                g = g01.index_select(3, i2 + c2)  # (3, D, H, W)
                dot = g[0] * (F0 - c0) + g[1] * (F1 - c1) + g[2] * (F2 - c2)
                out += (wt01 * (w2 if c2 else 1 - w2)) * dot
    return out


def simplex_noise(shape: Sequence[int], generator: torch.Generator, octaves: int = 4,
                  persistence: float = 0.8, period: float = 32.0) -> torch.Tensor:
    """Multi-octave 3D gradient noise; ``period`` = wavelength (voxels) of the coarsest octave."""
    B, C, *spatial = shape
    out = torch.empty(tuple(shape), dtype=torch.float32)
    for b in range(B):
        for c in range(C):
            acc = torch.zeros(spatial)
            amp = 1.0
            for o in range(int(octaves)):
                per = period / (2 ** o)
                if per < 2.0:
                    break
                res = [max(1, math.ceil(n / per)) for n in spatial]
                acc += amp * _perlin3d(spatial, res, generator)
                amp *= persistence
            out[b, c] = acc
    return _normalise(out)


def coarse_noise(shape: Sequence[int], generator: torch.Generator, factor: int = 4) -> torch.Tensor:
    B, C, *spatial = shape
    small = [max(1, math.ceil(n / factor)) for n in spatial]
    z = torch.randn((B, C, *small), generator=generator, dtype=torch.float32)
    up = F.interpolate(z, size=tuple(spatial), mode="trilinear", align_corners=False)
    return _normalise(up)


def make_noise(kind: str, shape: Sequence[int], generator: torch.Generator | None = None,
               device: torch.device | str | None = None, **params) -> torch.Tensor:
    """Noise of ``kind`` with ``shape`` (B, C, D, H, W), float32 on ``device``."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 5:
        raise ValueError(f"make_noise expects (B, C, D, H, W), got {shape}")
    if generator is None:
        generator = torch.Generator().manual_seed(torch.seed() % (2**63))
    gdev = generator.device
    if kind == "gaussian":
        if params:
            raise ValueError(f"gaussian noise takes no parameters, got {sorted(params)}")
        z = torch.randn(shape, generator=generator, device=gdev, dtype=torch.float32)
    elif kind in ("simplex", "coarse"):
        if gdev.type != "cpu":
            raise ValueError(f"{kind} noise needs a CPU torch.Generator")
        fn = simplex_noise if kind == "simplex" else coarse_noise
        try:
            z = fn(shape, generator, **params)
        except TypeError as exc:
            raise ValueError(f"bad parameters for {kind} noise: {exc}") from exc
    else:
        raise ValueError(f"unknown noise kind {kind!r} (one of {NOISE_KINDS})")
    return z.to(device) if device is not None else z


def per_item_noise(kind: str, shape: Sequence[int], generators: Sequence[torch.Generator],
                   device: torch.device | str | None = None, **params) -> torch.Tensor:
    """One draw per batch item from its own generator, stacked: the noise of an
    item never depends on which other items share its batch (or the batch size)."""
    shape = tuple(int(s) for s in shape)
    if len(generators) != shape[0]:
        raise ValueError(f"need one generator per batch item, got {len(generators)} for batch {shape[0]}")
    parts = [make_noise(kind, (1, *shape[1:]), g, None, **params) for g in generators]
    z = torch.cat(parts, dim=0)
    return z.to(device) if device is not None else z
