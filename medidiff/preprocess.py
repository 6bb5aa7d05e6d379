"""Invertible preprocessing shared by training, scoring and synthesis: a scan onto the model grid.

Scan space (:func:`preprocess`): the model lattice is centred on the centre of the foreground's
world-space bounding box. Template space (:func:`preprocess_template`): the front end (brain
extraction, N4, registration) places the lattice in MNI152 space. Either way the scan is resampled
once (:mod:`medidiff.geometry`), its foreground kept (:mod:`medidiff.masks`) and its intensities
normalised (:mod:`medidiff.intensity`); :class:`Preprocessed` keeps what maps results back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .frontend import load_template, run_frontend, template_grid_affine
from .frontend.qc import check_inside, inside_fraction
from .frontend.run import source_label, warp_in_voxels
from .geometry import GridMapping, mask_world_centre, model_affine, resample
from .intensity import denormalize, normalize, template_quantile_map, wm_median_normalize
from .masks import source_foreground
from .preprocess_config import PreprocessConfig
from .volume import Volume


@dataclass
class Preprocessed:
    image: np.ndarray  # float32, model grid
    foreground: np.ndarray  # bool, model grid
    mapping: GridMapping
    intensity: dict[str, Any] = field(default_factory=dict)
    brain_source: np.ndarray | None = None  # bool brain mask on the scan's grid (front end only)
    qc: dict[str, Any] = field(default_factory=dict)  # front-end quality numbers (brain ml, similarity, ...)
    # source-grid arrays the result writes beside the anomaly map, e.g. {"brain_mask": uint8 array}
    source_maps: dict[str, np.ndarray] = field(default_factory=dict)

    def denormalize(self, model_array: np.ndarray) -> np.ndarray:
        """Undo the intensity normalisation (model units → source units)."""
        return denormalize(model_array, self.intensity)


def make_mapping(volume: Volume, cfg: PreprocessConfig, src_fg: np.ndarray | None = None) -> GridMapping:
    if src_fg is None:
        src_fg = source_foreground(volume.array, cfg.foreground, cfg.threshold)
    centre = mask_world_centre(src_fg, volume.affine)
    return GridMapping(volume.shape, volume.affine, cfg.grid, model_affine(cfg.spacing, cfg.grid, centre))


def preprocess(volume: Volume, cfg: PreprocessConfig) -> Preprocessed:
    """Volume (any orientation) → model-grid image, foreground, mapping, intensity parameters."""
    if cfg.space == "template":
        return preprocess_template(volume, cfg)
    src = np.asarray(volume.array, dtype=np.float32)
    src_fg = source_foreground(src, cfg.foreground, cfg.threshold)
    mapping = make_mapping(volume, cfg, src_fg)
    fill = float(cfg.ct_window[0]) if cfg.modality == "ct" else 0.0
    image = mapping.to_model(src, order=cfg.order, fill=fill, antialias=cfg.antialias)
    if cfg.foreground == "none":
        fg = mapping.source_fov_on_model()
    else:
        fg = mapping.to_model(src_fg.astype(np.float32), order=1, fill=0.0, antialias=cfg.antialias) > 0.5
    image, info = normalize(image, fg, cfg)
    return Preprocessed(image=image, foreground=fg, mapping=mapping, intensity=info)


# ----------------------------------------------------------------------------- template space

def _template_on_grid(cfg: PreprocessConfig):
    """Template arrays (brain, WM probability) on the model lattice; pure template space, cached."""
    key = (cfg.frontend_config().template, cfg.spacing, cfg.grid)
    if key not in _TEMPLATE_GRID_CACHE:
        tpl = load_template(key[0])
        aff = template_grid_affine(cfg.spacing, cfg.grid, tpl)
        wm = resample(tpl.wm, tpl.affine, aff, cfg.grid, order=1)
        t1 = resample(tpl.t1, tpl.affine, aff, cfg.grid, order=1)
        _TEMPLATE_GRID_CACHE[key] = (aff, wm, t1)
    return _TEMPLATE_GRID_CACHE[key]


_TEMPLATE_GRID_CACHE: dict = {}


def _warp_on_grid(fe, grid_affine: np.ndarray, grid) -> np.ndarray | None:
    """The front end's deformable warp sampled on the model lattice, in model voxels (None: affine only)."""
    if fe.warp is None:
        return None
    mm = np.stack([resample(c, fe.warp_affine, grid_affine, grid, order=1, antialias=False) for c in fe.warp])
    return warp_in_voxels(mm, grid_affine)


def preprocess_template(volume: Volume, cfg: PreprocessConfig) -> Preprocessed:
    """Front end (brain, N4, registration, QC), then ONE resampling onto the template-space grid.

    The model lattice is fixed in MNI space; pulled back through the registration it becomes
    an (oblique, scaled) lattice in the scan's own world, so ``GridMapping`` resamples either
    way exactly as for scan-space models."""
    fcfg = cfg.frontend_config()
    fe = run_frontend(volume, fcfg, cfg.modality)
    grid_affine, wm_prob, _ = _template_on_grid(cfg)
    mapping = GridMapping(volume.shape, volume.affine, cfg.grid, fe.template_to_scan @ grid_affine,
                          _warp_on_grid(fe, grid_affine, cfg.grid))
    # the affine decides what lies inside the box; the coarse warp moves the brain by millimetres only
    inside = inside_fraction(fe.brain_source, volume.affine, mapping.model_affine, cfg.grid)
    check_inside(inside, fcfg, source_label(volume))
    fill = float(cfg.ct_window[0]) if cfg.modality == "ct" else 0.0
    image = mapping.to_model(np.asarray(volume.array, dtype=np.float32), order=cfg.order, fill=fill,
                             antialias=cfg.antialias)
    if fe.log_bias is not None:
        image = image / fe.bias_factor_on(mapping)
    fg = mapping.to_model(fe.brain_source.astype(np.float32), order=1, fill=0.0, antialias=cfg.antialias) > 0.5
    if cfg.intensity in ("wm_median", "template_quantiles") and cfg.modality == "mri":
        image, info = wm_median_normalize(image, fg, wm_prob)
        if cfg.intensity == "template_quantiles":
            _, _, t1 = _template_on_grid(cfg)
            image, landmarks = template_quantile_map(image, fg, t1[t1 > 0.02])
            info = dict(info, kind="template_quantiles", **landmarks)
    else:
        image, info = normalize(image, fg, cfg)
    qc = dict(fe.qc, brain_inside_grid=round(inside, 4),
              scan_to_template=np.round(np.linalg.inv(fe.template_to_scan), 6).tolist(),
              frontend_seconds={k: round(v, 2) for k, v in fe.seconds.items()})
    return Preprocessed(image=image, foreground=fg, mapping=mapping, intensity=info,
                        brain_source=fe.brain_source, qc=qc,
                        source_maps={"brain_mask": fe.brain_source.astype(np.uint8)})
