"""Test-only helpers: the same anatomy stored in different orientations."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


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
