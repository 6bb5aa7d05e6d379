"""Test-only helpers for the front end: scans made from the shipped template with a known transform."""

from __future__ import annotations

import numpy as np

from medidiff.frontend import load_template
from medidiff.geometry import resample
from medidiff.volume import Provenance, Volume


def rotation(deg_x: float = 0.0, deg_y: float = 0.0, deg_z: float = 0.0) -> np.ndarray:
    ax, ay, az = np.radians([deg_x, deg_y, deg_z])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def template_to_scan(rot_deg=(6.0, -4.0, 10.0), shift_mm=(5.0, -8.0, 12.0), scale=0.95) -> np.ndarray:
    """A 4x4 RAS matrix template mm → scan mm (a head tilted, moved and a bit smaller than the MNI brain, as most are)."""
    m = np.eye(4)
    m[:3, :3] = rotation(*rot_deg) * scale
    m[:3, 3] = shift_mm
    return m


def scan_from_template(to_scan: np.ndarray, spacing: float = 3.0, orientation: str = "LPS",
                       units: float = 900.0, name: str = "tmpl_scan.nii.gz") -> Volume:
    """A skull-stripped 'scan' of the template brain as seen through ``to_scan``, stored in ``orientation``.

    Scan voxel v shows the template at ``inv(to_scan) @ A_scan @ v``: registering it back must
    recover ``to_scan``."""
    tpl = load_template()
    shape = np.array([66, 80, 68]) * 3.0 / spacing
    shape = tuple(int(s) for s in shape)
    a = np.diag([spacing, spacing, spacing, 1.0])
    a[:3, 3] = -(np.array(shape) - 1) / 2 * spacing + np.array([0.0, -10.0, 10.0])
    if orientation == "LPS":
        a = np.diag([-1.0, -1.0, 1.0, 1.0]) @ a
    elif orientation == "PSR":  # permuted axes, like many sagittal exports
        a = a[:, [1, 2, 0, 3]]
        shape = (shape[1], shape[2], shape[0])
    arr = resample(tpl.t1, tpl.affine, np.linalg.inv(to_scan) @ a, shape, order=1) * units
    return Volume(arr.astype(np.float32), a, Provenance(source_paths=[name], format="nifti", scan_id=name.split(".")[0]))
