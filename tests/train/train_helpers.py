"""Shared helpers for the training tests (tiny config, synthetic data)."""
from pathlib import Path

import numpy as np

from medidiff.io.nifti import write_nifti
from medidiff.model.config import load_config
from medidiff.dataset import PreparedData
from medidiff.volume import Volume

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def tiny_config(*overrides):
    return load_config(CONFIGS / "tiny.yaml", list(overrides))


def blob_volume(seed: int, shape=(24, 28, 22), spacing=3.0) -> Volume:
    rng = np.random.default_rng(seed)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(np.float64)
    aff = np.diag([spacing, spacing, spacing, 1.0])
    aff[:3, 3] = -spacing * (np.array(shape) - 1) / 2
    w = idx @ aff[:3, :3].T + aff[:3, 3]
    r = (w[..., 0] / 24) ** 2 + (w[..., 1] / 30) ** 2 + (w[..., 2] / 22) ** 2
    tex = 100 + 15 * np.sin(w[..., 0] / 6 + rng.random()) * np.cos(w[..., 1] / 7)
    arr = np.where(r < 1, tex + rng.normal(0, 2, shape), 0).astype(np.float32)
    return Volume(arr, aff)


def synthetic_prepared(n=4, grid=(16, 16, 16), seed=0) -> PreparedData:
    rng = np.random.default_rng(seed)
    idx = np.stack(np.meshgrid(*[np.linspace(-1, 1, g) for g in grid], indexing="ij"), -1)
    fg = (idx ** 2).sum(-1) < 0.8
    imgs = []
    for i in range(n):
        img = np.where(fg, 0.8 + 0.2 * np.sin(3 * idx[..., 0] + rng.random()), 0.0)
        imgs.append(img.astype(np.float32))
    return PreparedData(np.stack(imgs), np.stack([fg] * n), [f"s{i}" for i in range(n)], {"count": n})
