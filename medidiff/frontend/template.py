"""The template space every front-end-registered scan is brought into.

medidiff ships a 2 mm copy of the MNI ICBM152 2009a symmetric T1 template with its grey- and
white-matter probability maps (``data/``, built by ``pipelines/make_template.py``). The model
grid of a template-space model is a fixed RAS lattice in this space, centred on the
template brain, so voxel (i, j, k) means the same anatomical place in every scan.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..geometry import model_affine

DATA_DIR = Path(__file__).parent / "data"
TEMPLATES = ("mni152_2009a",)


@dataclass(frozen=True)
class Template:
    name: str
    affine: np.ndarray  # voxel -> RAS mm (MNI)
    t1: np.ndarray  # float32, 0..1
    gm: np.ndarray  # float32 probability
    wm: np.ndarray  # float32 probability
    sha256: str  # of the three files, in order: checked against model.json

    @property
    def brain(self) -> np.ndarray:
        """Template brain (the T1 template is skull-stripped: non-zero = brain + CSF spaces)."""
        return self.t1 > 0.02

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    def brain_centre(self) -> np.ndarray:
        """Centre (mm) of the template brain's bounding box."""
        idx = np.argwhere(self.brain)
        world = idx @ self.affine[:3, :3].T + self.affine[:3, 3]
        return (world.min(axis=0) + world.max(axis=0)) / 2.0


@lru_cache(maxsize=2)
def load_template(name: str = "mni152_2009a") -> Template:
    import nibabel as nib

    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; medidiff ships {', '.join(TEMPLATES)}")
    digest = hashlib.sha256()
    arrays = {}
    affine = None
    for key in ("t1", "gm", "wm"):
        path = DATA_DIR / f"{name}_{key}_2mm.nii.gz"
        digest.update(path.read_bytes())
        img = nib.load(path)
        arrays[key] = np.asarray(img.dataobj, dtype=np.float32) / 255.0
        affine = img.affine if affine is None else affine
    return Template(name=name, affine=np.asarray(affine, dtype=np.float64), sha256=digest.hexdigest(), **arrays)


def template_grid_affine(spacing, grid, template: Template | None = None) -> np.ndarray:
    """RAS affine of the model lattice: ``grid`` voxels of ``spacing`` mm centred on the template brain."""
    template = template or load_template()
    return model_affine(spacing, grid, template.brain_centre())
