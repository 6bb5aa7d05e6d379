"""Shared fixtures: a tiny real MONAI model folder and tiny real-anatomy volumes.

Helpers that tests import live in plain modules (``volume_factory``,
``dicom_factory``), never here: several conftest.py files exist and
``import conftest`` would pick whichever loaded first."""

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
    from medidiff.model.store import save_model

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
