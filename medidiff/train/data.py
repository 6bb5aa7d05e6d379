"""Training data: deterministic, augmented batches from healthy scans found and preprocessed
once by :mod:`medidiff.dataset`.

Data order and augmentation are *functions of (seed, step, rank)*: nothing
depends on hidden RNG state, so a resumed run sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..dataset import PreparedData
from ..model.config import AugmentConfig

__all__ = ["augment", "blur_or_sharpen", "contrast_curve", "elastic_warp", "make_batch", "sample_indices",
           "step_seed"]


# ----------------------------------------------------------------------------- deterministic order

def sample_indices(step: int, n: int, batch_size: int, rank: int, world: int, seed: int) -> list[int]:
    """Indices of the batch for (step, rank): epoch-wise permutations seeded by
    (seed, epoch); each step consumes ``batch_size * world`` consecutive samples
    and rank r takes its slice — shards are disjoint within an epoch."""
    if n <= 0:
        raise ValueError("no training scans")
    out = []
    perms: dict[int, np.ndarray] = {}
    base = step * batch_size * world + rank * batch_size
    for j in range(batch_size):
        k = base + j
        epoch, pos = divmod(k, n)
        if epoch not in perms:
            perms[epoch] = np.random.default_rng([int(seed), 7919, epoch]).permutation(n)
        out.append(int(perms[epoch][pos]))
    return out


def step_seed(seed: int, step: int, rank: int, stream: int = 0) -> int:
    """A 63-bit seed for per-step torch generators, independent across streams/ranks."""
    ss = np.random.SeedSequence([int(seed), int(step), int(rank), int(stream), 0x6D64])
    return int(ss.generate_state(1, dtype=np.uint64)[0] & np.uint64(2**63 - 1))


# ----------------------------------------------------------------------------- augmentation

def augment(image: np.ndarray, fg: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Anatomy-safe augmentation on a model-grid image (background stays 0).

    Small global intensity scale, gamma on the positive part, a smooth
    low-order multiplicative bias field, a small integer translation, and —
    only when enabled — left-right flips (model axis 0 is R-L on the RAS grid)."""
    x = image.astype(np.float32, copy=True)
    # draw every random number unconditionally so the stream layout never depends on the branch taken
    u = rng.random(6)
    scale = 1.0 + cfg.intensity_scale * (2 * rng.random() - 1)
    gamma = float(np.exp(cfg.gamma * (2 * rng.random() - 1)))
    coef = rng.normal(size=6)
    shifts = rng.integers(-cfg.shift, cfg.shift + 1, size=3) if cfg.shift > 0 else np.zeros(3, int)
    flip = rng.random() < 0.5
    if u[0] < cfg.probability and cfg.gamma > 0:
        pos = x > 0
        x[pos] = x[pos] ** gamma
    if u[1] < cfg.probability and cfg.bias > 0:
        D, H, W = x.shape
        z, y, w = np.meshgrid(np.linspace(-1, 1, D), np.linspace(-1, 1, H), np.linspace(-1, 1, W),
                              indexing="ij", sparse=True)
        field = coef[0] * z + coef[1] * y + coef[2] * w + 0.5 * (coef[3] * z * y + coef[4] * y * w + coef[5] * z * w)
        field = field / max(float(np.abs(coef).sum()), 1e-6)
        x *= (1.0 + cfg.bias * field).astype(np.float32)
    if u[2] < cfg.probability and cfg.intensity_scale > 0:
        x *= np.float32(scale)
    if u[3] < cfg.probability and cfg.shift > 0 and np.any(shifts):
        x = _shift(x, shifts)
    if cfg.flip_lr and flip:
        x = np.ascontiguousarray(x[::-1])
    # anatomy-like terms; drawn after the older ones so their random streams are unchanged
    u2 = rng.random(3)
    field = rng.normal(size=(3, *(cfg.elastic_points,) * 3))
    amount = cfg.sharpness * (2 * rng.random() - 1)
    knots = rng.uniform(-1, 1, size=4)
    if u2[0] < cfg.probability and cfg.elastic > 0:
        x = elastic_warp(x, field, cfg.elastic)
    if u2[1] < cfg.probability and cfg.sharpness > 0:
        x = blur_or_sharpen(x, amount)
    if u2[2] < cfg.probability and cfg.contrast_curve > 0:
        x = contrast_curve(x, knots, cfg.contrast_curve)
    x[~np.isfinite(x)] = 0
    return x


def elastic_warp(x: np.ndarray, coarse: np.ndarray, max_voxels: float) -> np.ndarray:
    """Smooth random displacement (coarse normal field, cubic-upsampled), at most ``max_voxels``."""
    from scipy import ndimage

    scale = max_voxels / max(float(np.abs(coarse).max()), 1e-6)
    zoom = [n / c for n, c in zip(x.shape, coarse.shape[1:])]
    disp = [ndimage.zoom(c * scale, zoom, order=1, mode="nearest", grid_mode=True)[: x.shape[0], : x.shape[1], : x.shape[2]]
            for c in coarse]
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in x.shape], indexing="ij", sparse=True)
    coords = [g + d for g, d in zip(grid, disp)]
    return ndimage.map_coordinates(x, coords, order=1, mode="constant", cval=0.0).astype(np.float32)


def blur_or_sharpen(x: np.ndarray, amount: float) -> np.ndarray:
    """amount < 0: Gaussian blur (sigma |amount| voxels); > 0: unsharp mask of strength ``amount``."""
    from scipy import ndimage

    inside = x > 0
    if amount < 0:
        out = ndimage.gaussian_filter(x, sigma=max(-amount, 1e-3))
    else:
        out = x + amount * (x - ndimage.gaussian_filter(x, sigma=1.0))
    return np.where(inside, np.maximum(out, 0.0), 0.0).astype(np.float32)


def contrast_curve(x: np.ndarray, knots: np.ndarray, strength: float) -> np.ndarray:
    """Random monotone piecewise-linear intensity curve on the brain (0 stays 0, slope > 0)."""
    xs = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    ys = xs.copy()
    ys[1:] += strength * 0.25 * knots  # each knot moves by at most strength * 0.25
    ys = np.maximum.accumulate(ys + np.arange(5) * 1e-3)  # keep it increasing
    out = np.interp(x, xs, ys)
    above = x > 1.0  # beyond the last knot: continue with the last slope (bright lesions keep their lead)
    out[above] = ys[-1] + (x[above] - 1.0) * (ys[-1] - ys[-2]) / 0.25
    return np.where(x > 0, out, 0.0).astype(np.float32)


def _shift(x: np.ndarray, shifts: Sequence[int]) -> np.ndarray:
    out = np.zeros_like(x)
    src, dst = [], []
    for s, n in zip(shifts, x.shape):
        s = int(s)
        if s >= 0:
            src.append(slice(0, n - s))
            dst.append(slice(s, n))
        else:
            src.append(slice(-s, n))
            dst.append(slice(0, n + s))
    out[tuple(dst)] = x[tuple(src)]
    return out


def make_batch(data: PreparedData, step: int, batch_size: int, rank: int, world: int, seed: int,
               aug: AugmentConfig | None, patch: Sequence[int] | None = None,
               foreground_bias: float = 0.9) -> np.ndarray:
    """(B, 1, D, H, W) float32 batch for this step/rank.

    Patch models: (B, 1 + 3, *patch) — a random patch of each (augmented) scan followed by
    its three coordinate channels (the patch's location on the model grid)."""
    from ..model.patches import coordinate_grid, crop, draw_patch_origin

    idx = sample_indices(step, len(data), batch_size, rank, world, seed)
    coords = coordinate_grid(data.images.shape[1:]) if patch is not None else None
    out = []
    for j, i in enumerate(idx):
        img = data.images[i]
        if aug is not None:
            rng = np.random.default_rng([int(seed), int(step), int(rank), j, 0xA6])
            img = augment(img, data.foregrounds[i], aug, rng)
        if patch is not None:
            prng = np.random.default_rng([int(seed), int(step), int(rank), j, 0xB7])
            origin = draw_patch_origin(data.foregrounds[i], patch, prng, foreground_bias)
            img = np.concatenate([crop(img, origin, patch)[None], crop(coords, origin, patch)], axis=0)
        else:
            img = img[None]
        out.append(img)
    return np.stack(out).astype(np.float32, copy=False)
