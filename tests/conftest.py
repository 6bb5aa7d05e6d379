"""Shared fixtures: a tiny real MONAI model folder and tiny real-anatomy volumes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MEDIDIFF_THREADS", "2")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny DiffusionModelUNet (16³ grid, 8/16 channels) with random weights,
    saved through the real checkpoint writer (safetensors + JSON)."""
    import torch

    from medidiff.model.config import load_config
    from medidiff.model.network import build_network
    from medidiff.train.checkpoint import save_model

    torch.manual_seed(0)
    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    net = build_network(cfg.model)
    # MONAI zero-initialises output convolutions, so an untrained net predicts 0
    # for every input and all maps look alike; random weights make outputs depend
    # on the input, so tests can catch input-dependent bugs.
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0.0, 0.02)
    out = tmp_path_factory.mktemp("tiny_model")
    save_model(out, {k: v.detach().clone() for k, v in net.state_dict().items()}, cfg,
               metadata={"training": {"steps": 0, "note": "random init for tests"}})
    return out


@pytest.fixture(scope="session")
def mni_small():
    """nilearn's bundled MNI152 T1 template resampled to 8 mm: real anatomy, ~25³ voxels."""
    from nilearn.datasets import load_mni152_template
    from scipy import ndimage

    img = load_mni152_template(resolution=2)
    data = np.asarray(img.get_fdata(), dtype=np.float32)
    factor = 0.25
    small = ndimage.zoom(ndimage.gaussian_filter(data, 1.5), factor, order=1) * 1000.0  # scanner-like units
    affine = img.affine.copy()
    affine[:3, :3] = affine[:3, :3] / factor
    return small.astype(np.float32), affine


def reorient(data: np.ndarray, affine: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Same anatomy stored another way: flip x/y (LPS), permute axes, or an oblique affine."""
    if kind == "RAS":
        return data, affine
    if kind == "LPS":
        flipped = data[::-1, ::-1, :].copy()
        a = affine.copy()
        a[:3, 0] *= -1
        a[:3, 1] *= -1
        a[:3, 3] = affine[:3, 3] + affine[:3, 0] * (data.shape[0] - 1) + affine[:3, 1] * (data.shape[1] - 1)
        return flipped, a
    if kind == "permuted":
        perm = (2, 0, 1)
        a = np.eye(4)
        a[:3, :3] = affine[:3, :3][:, perm]
        a[:3, 3] = affine[:3, 3]
        return np.transpose(data, perm).copy(), a
    if kind == "oblique":
        th = np.radians(15)
        rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
        a = affine.copy()
        a[:3, :3] = rot @ affine[:3, :3]
        return data, a
    raise ValueError(kind)
