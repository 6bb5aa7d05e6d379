"""Invertible preprocessing shared by training, scoring and synthesis.

A scan (any stored orientation: RAS, LPS, permuted axes, oblique) is brought
onto the *model grid*: a RAS-aligned lattice with the configured spacing and
shape, centred on the centre of the foreground's world-space bounding box.
There is exactly ONE resampling from the source voxel grid, through the
composed affine ``inv(A_src) @ A_model``; that single step reorients to RAS,
resamples and crops/pads. Before downsampling the source is Gaussian
anti-aliased (sigma from the downsampling ratio along each source axis).

:class:`GridMapping` remembers both grids and maps arrays either way, so maps
computed on the model grid land back on the scanner grid with the source's
exact shape (``to_source``).

Intensity: MRI is normalised with ``x / p_high`` (or, with ``subtract_low``,
``(x - p_low) / (p_high - p_low)``) using percentiles inside the foreground,
*without clipping the top* (clipping the
brightest voxels erases bright lesions), background set to 0. CT maps a HU
window linearly to [0, 1] (clipped to the window).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from .volume import Volume

MODALITIES = ("mri", "ct")
FOREGROUND_MODES = ("otsu", "threshold", "none")
SPACES = ("scan", "template")
INTENSITY_MODES = ("percentile", "wm_median", "template_quantiles")
WM_LEVEL = 0.8  # wm_median: the white-matter median maps here (headroom above it: nothing is clipped)


@dataclass
class PreprocessConfig:
    modality: str = "mri"
    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0)
    grid: tuple[int, int, int] = (56, 64, 56)
    foreground: str = "otsu"
    # threshold used when foreground == "threshold": voxels strictly above it (source units)
    threshold: float = 0.0
    percentiles: tuple[float, float] = (0.5, 99.5)
    # MRI: subtract the low percentile before scaling? Default off: MRI zero means "no signal" and
    # x / p_high inside the brain mask is what measured best here; the low percentile is
    # still recorded in ``intensity`` for inspection.
    subtract_low: bool = False
    ct_window: tuple[float, float] = (-1000.0, 1000.0)
    order: int = 1  # spline order of the single resampling (1 or 3)
    antialias: bool = True
    # "template": the real-scan front end (medidiff.frontend: brain extraction, N4, registration)
    # puts the model grid in MNI152 template space; "scan": the grid is centred on the scan's
    # own foreground (inputs that are already skull-stripped and roughly aligned).
    space: str = "scan"
    frontend: dict[str, Any] | None = None  # medidiff.frontend.FrontEndConfig fields (space == "template")
    # "percentile": x / p_high inside the foreground; "wm_median": x / median of white matter
    # (template WM map inside the brain) — a lesion cannot move it, unlike p99.5;
    # "template_quantiles": wm_median, then the brain's intensity deciles mapped piecewise-linearly
    # onto the template's (Nyúl-Udupa standardisation: vendor/sequence tissue contrast), linear
    # beyond the 90th percentile so bright lesions keep their contrast
    intensity: str = "percentile"

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.grid = tuple(int(g) for g in self.grid)  # type: ignore[assignment]
        self.percentiles = tuple(float(p) for p in self.percentiles)  # type: ignore[assignment]
        self.ct_window = tuple(float(w) for w in self.ct_window)  # type: ignore[assignment]
        if self.space == "template":
            self.frontend = self.frontend_config().to_dict()  # fills defaults, refuses unknown keys
        self.validate()

    def frontend_config(self):
        from .frontend import FrontEndConfig

        return FrontEndConfig.from_dict(self.frontend)

    def validate(self) -> None:
        errs = []
        if self.modality not in MODALITIES:
            errs.append(f"preprocess.modality must be one of {MODALITIES}, got {self.modality!r}")
        if len(self.spacing) != 3 or any(not np.isfinite(s) or s <= 0 for s in self.spacing):
            errs.append(f"preprocess.spacing must be 3 positive numbers (mm), got {list(self.spacing)}")
        if len(self.grid) != 3 or any(g < 2 for g in self.grid):
            errs.append(f"preprocess.grid must be 3 integers >= 2, got {list(self.grid)}")
        if self.foreground not in FOREGROUND_MODES:
            errs.append(f"preprocess.foreground must be one of {FOREGROUND_MODES}, got {self.foreground!r}")
        if len(self.percentiles) != 2 or not (0 <= self.percentiles[0] < self.percentiles[1] <= 100):
            errs.append(f"preprocess.percentiles must be [low, high] with 0 <= low < high <= 100, got {list(self.percentiles)}")
        if len(self.ct_window) != 2 or not self.ct_window[0] < self.ct_window[1]:
            errs.append(f"preprocess.ct_window must be [low, high] HU with low < high, got {list(self.ct_window)}")
        if self.space not in SPACES:
            errs.append(f"preprocess.space must be one of {SPACES}, got {self.space!r}")
        if self.intensity not in INTENSITY_MODES:
            errs.append(f"preprocess.intensity must be one of {INTENSITY_MODES}, got {self.intensity!r}")
        if self.intensity in ("wm_median", "template_quantiles") and self.space != "template":
            errs.append(f"preprocess.intensity={self.intensity} needs preprocess.space=template (it uses the template)")
        if self.frontend is not None and self.space != "template":
            errs.append("preprocess.frontend is only used with preprocess.space=template")
        if self.order not in (0, 1, 3):
            errs.append(f"preprocess.order must be 0, 1 or 3, got {self.order}")
        if errs:
            raise ValueError("; ".join(errs))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "PreprocessConfig":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown preprocess option(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**d)


def model_affine(spacing: Sequence[float], grid: Sequence[int], centre: Sequence[float]) -> np.ndarray:
    """RAS-aligned affine of a lattice with ``spacing`` and ``grid`` whose centre is ``centre`` (mm)."""
    sp = np.asarray(spacing, dtype=np.float64)
    aff = np.diag([*sp, 1.0])
    aff[:3, 3] = np.asarray(centre, dtype=np.float64) - sp * (np.asarray(grid, dtype=np.float64) - 1) / 2.0
    return aff


def _antialias_sigma(src_affine: np.ndarray, dst_affine: np.ndarray) -> np.ndarray:
    """Gaussian sigma (in source voxels) per source axis for resampling src → dst.

    The destination spacing seen along source axis j is the length of that
    axis' unit step expressed in destination voxels, inverted. sigma follows
    the usual ``(factor - 1) / 2`` rule (0 when not downsampling)."""
    # source voxel step in destination voxel units
    step_dst = np.linalg.inv(dst_affine[:3, :3]) @ src_affine[:3, :3]
    # factor = destination spacing / source spacing along axis j = 1 / |step in dst voxels|
    factor = 1.0 / np.maximum(np.linalg.norm(step_dst, axis=0), 1e-12)
    return np.maximum(0.0, (factor - 1.0) / 2.0)


def resample(array: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: Sequence[int],
             order: int = 1, fill: float = 0.0, antialias: bool = True) -> np.ndarray:
    """Sample ``array`` (on ``src_affine``) at the voxels of the ``dst`` grid in one interpolation."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"resample needs a 3D array, got shape {array.shape}")
    src = array.astype(np.float32, copy=False)
    if antialias:
        sigma = _antialias_sigma(src_affine, dst_affine)
        if np.any(sigma > 0.05):
            src = ndimage.gaussian_filter(src, sigma=sigma, mode="nearest", truncate=3.0)
    m = np.linalg.inv(src_affine) @ dst_affine  # dst voxel -> src voxel
    out = ndimage.affine_transform(
        src, m[:3, :3], offset=m[:3, 3], output_shape=tuple(int(s) for s in dst_shape),
        order=order, mode="constant", cval=float(fill), prefilter=order > 1,
    )
    return out.astype(np.float32, copy=False)


@dataclass
class GridMapping:
    """Source grid ↔ model grid. JSON-serialisable through :meth:`to_dict`.

    ``displacement`` (optional, shape ``(3,) + model_shape``, in model voxels) bends the lattice:
    model voxel ``i`` samples the source at ``inv(source_affine) @ model_affine @ (i + d(i))``.
    It comes from the front end's deformable refinement; without it the mapping is one affine."""

    source_shape: tuple[int, int, int]
    source_affine: np.ndarray
    model_shape: tuple[int, int, int]
    model_affine: np.ndarray
    displacement: np.ndarray | None = None
    _source_coords: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.source_shape = tuple(int(s) for s in self.source_shape)  # type: ignore[assignment]
        self.model_shape = tuple(int(s) for s in self.model_shape)  # type: ignore[assignment]
        self.source_affine = np.asarray(self.source_affine, dtype=np.float64).reshape(4, 4)
        self.model_affine = np.asarray(self.model_affine, dtype=np.float64).reshape(4, 4)
        if self.displacement is not None:
            self.displacement = np.asarray(self.displacement, dtype=np.float32)
            if self.displacement.shape != (3,) + self.model_shape:
                raise ValueError(f"displacement shape {self.displacement.shape} is not (3,) + {self.model_shape}")

    def to_model(self, source_array: np.ndarray, order: int = 1, fill: float = 0.0,
                 antialias: bool = True) -> np.ndarray:
        source_array = np.asarray(source_array)
        if tuple(source_array.shape) != self.source_shape:
            raise ValueError(f"array shape {source_array.shape} is not the source shape {self.source_shape}")
        return self.pull(source_array, self.source_affine, order=order, fill=fill, antialias=antialias)

    def pull(self, array: np.ndarray, array_affine: np.ndarray, order: int = 1, fill: float = 0.0,
             antialias: bool = True) -> np.ndarray:
        """Sample any array living in the source's world (e.g. a bias field on its own box) at the model voxels."""
        if self.displacement is None:
            return resample(array, array_affine, self.model_affine, self.model_shape, order=order, fill=fill,
                            antialias=antialias)
        src = np.asarray(array, dtype=np.float32)
        if antialias:
            sigma = _antialias_sigma(array_affine, self.model_affine)
            if np.any(sigma > 0.05):
                src = ndimage.gaussian_filter(src, sigma=sigma, mode="nearest", truncate=3.0)
        m = np.linalg.inv(array_affine) @ self.model_affine
        pts = np.indices(self.model_shape, dtype=np.float32) + self.displacement
        coords = np.einsum("ij,j...->i...", m[:3, :3], pts) + m[:3, 3].reshape(3, 1, 1, 1)
        out = ndimage.map_coordinates(src, coords, order=order, mode="constant", cval=float(fill),
                                      prefilter=order > 1)
        return out.astype(np.float32, copy=False)

    def to_source(self, model_array: np.ndarray, order: int = 1, fill: float = 0.0,
                  antialias: bool = True) -> np.ndarray:
        """Map a model-grid array onto the source grid; result has the source's exact shape."""
        model_array = np.asarray(model_array)
        if tuple(model_array.shape) != self.model_shape:
            raise ValueError(f"array shape {model_array.shape} is not the model shape {self.model_shape}")
        if self.displacement is None:
            return resample(model_array, self.model_affine, self.source_affine, self.source_shape,
                            order=order, fill=fill, antialias=antialias)
        src = model_array.astype(np.float32, copy=False)
        if antialias:  # only when the source is coarser than the model grid along some axis
            sigma = _antialias_sigma(self.model_affine, self.source_affine)
            if np.any(sigma > 0.05):
                src = ndimage.gaussian_filter(src, sigma=sigma, mode="nearest", truncate=3.0)
        out = ndimage.map_coordinates(src, self.source_coords(), order=order, mode="constant", cval=float(fill),
                                      prefilter=order > 1)
        return out.reshape(self.source_shape).astype(np.float32, copy=False)

    def source_coords(self) -> np.ndarray:
        """Model-voxel coordinates of every source voxel through the inverse warp, (3, N); computed once."""
        if self._source_coords is None:
            inverse = invert_displacement(self.displacement)
            m = np.linalg.inv(self.model_affine) @ self.source_affine
            coords = np.empty((3, int(np.prod(self.source_shape))), dtype=np.float32)
            idx = np.indices(self.source_shape[1:], dtype=np.float32).reshape(2, -1)
            n = idx.shape[1]
            for x in range(self.source_shape[0]):  # one source slab at a time: memory stays ~ one slice
                pts = np.vstack([np.full((1, n), x, dtype=np.float32), idx])
                k = (m[:3, :3] @ pts + m[:3, 3:4]).astype(np.float32)  # affine model index
                back = np.stack([ndimage.map_coordinates(inverse[c], k, order=1, mode="nearest") for c in range(3)])
                coords[:, x * n:(x + 1) * n] = k + back
            self._source_coords = coords
        return self._source_coords

    def source_fov_on_model(self) -> np.ndarray:
        """Bool mask of model voxels that lie inside the source field of view."""
        ones = np.ones(self.source_shape, dtype=np.float32)
        return self.to_model(ones, order=0, fill=0.0, antialias=False) > 0.5

    def to_dict(self) -> dict[str, Any]:
        d = {
            "source_shape": list(self.source_shape),
            "source_affine": self.source_affine.tolist(),
            "model_shape": list(self.model_shape),
            "model_affine": self.model_affine.tolist(),
        }
        if self.displacement is not None:
            d["displacement"] = np.round(self.displacement, 4).tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GridMapping":
        disp = d.get("displacement")
        return cls(d["source_shape"], np.asarray(d["source_affine"]), d["model_shape"], np.asarray(d["model_affine"]),
                   None if disp is None else np.asarray(disp, dtype=np.float32))


def invert_displacement(disp: np.ndarray, iterations: int = 20) -> np.ndarray:
    """Inverse of a smooth displacement field on its own grid, by fixed-point iteration.

    Finds ``v`` with ``k + v(k) + d(k + v(k)) = k``, i.e. ``v(k) = -d(k + v(k))``. Converges when
    the field's Jacobian stays well below 1 per voxel, which a coarse B-spline warp does."""
    grid = np.indices(disp.shape[1:], dtype=np.float32)
    v = -disp.copy()
    for _ in range(iterations):
        at = grid + v
        v = -np.stack([ndimage.map_coordinates(disp[c], at, order=1, mode="nearest") for c in range(3)])
    return v.astype(np.float32)


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



# ----------------------------------------------------------------------------- foreground

def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * centres)
    mu0 = m / np.maximum(w0, 1)
    mu1 = (m[-1] - m) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return labels == int(np.argmax(counts))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """3D hole filling, then slice-wise along each axis (closes sulci/ventricles open to one side)."""
    out = ndimage.binary_fill_holes(mask)
    for ax in range(3):
        out = np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(out, ax, 0)], axis=0)
        out = np.moveaxis(out, 0, ax)
    return out


def source_foreground(array: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    if cfg.foreground == "none":
        return np.ones(array.shape, dtype=bool)
    if cfg.foreground == "threshold":
        mask = array > cfg.threshold
    else:
        mask = array > otsu_threshold(array)
    if not mask.any():
        return mask
    return fill_holes(largest_component(mask))


def _world_centre(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Centre of the world-space bounding box of the mask's voxel centres."""
    idx = np.argwhere(mask)
    if len(idx) == 0:
        idx = np.array([[0, 0, 0], np.array(mask.shape) - 1])
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    return (world.min(axis=0) + world.max(axis=0)) / 2.0


# ----------------------------------------------------------------------------- intensity

def denormalize(model_array: np.ndarray, intensity: dict[str, Any]) -> np.ndarray:
    x = np.asarray(model_array, dtype=np.float32)
    if intensity.get("kind") == "template_quantiles":  # undo the piecewise-linear landmark map first
        xs = np.r_[0.0, intensity["landmarks_source"]]
        ys = np.r_[0.0, intensity["landmarks_template"]]
        back = np.interp(x, ys, xs)
        top = x > ys[-1]
        back[top] = xs[-1] + (x[top] - ys[-1]) * (xs[-1] - xs[-2]) / max(ys[-1] - ys[-2], 1e-6)
        x = back.astype(np.float32)
    lo, hi = float(intensity["low"]), float(intensity["high"])
    return x * (hi - lo) + lo


def normalize(image: np.ndarray, fg: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, dict[str, Any]]:
    if cfg.modality == "ct":
        lo, hi = cfg.ct_window
        out = (np.clip(image, lo, hi) - lo) / (hi - lo)
        info = {"kind": "ct_window", "low": float(lo), "high": float(hi)}
    else:
        vals = image[fg] if fg.any() else image.ravel()
        p_lo, hi = (float(v) for v in np.percentile(vals, cfg.percentiles))
        lo = p_lo if cfg.subtract_low else 0.0
        if not hi > lo:
            hi = lo + max(abs(lo), 1.0)
        out = (image - lo) / (hi - lo)  # top NOT clipped: bright lesions must survive
        info = {"kind": "percentile", "low": lo, "high": hi, "p_low_value": p_lo,
                "p_low": cfg.percentiles[0], "p_high": cfg.percentiles[1], "subtract_low": cfg.subtract_low}
    out = np.where(fg, out, 0.0).astype(np.float32)
    return out, info


# ----------------------------------------------------------------------------- entry point

def make_mapping(volume: Volume, cfg: PreprocessConfig, src_fg: np.ndarray | None = None) -> GridMapping:
    if src_fg is None:
        src_fg = source_foreground(volume.array, cfg)
    centre = _world_centre(src_fg, volume.affine)
    return GridMapping(volume.shape, volume.affine, cfg.grid, model_affine(cfg.spacing, cfg.grid, centre))


def preprocess(volume: Volume, cfg: PreprocessConfig) -> Preprocessed:
    """Volume (any orientation) → model-grid image, foreground, mapping, intensity parameters."""
    if cfg.space == "template":
        return preprocess_template(volume, cfg)
    src = np.asarray(volume.array, dtype=np.float32)
    src_fg = source_foreground(src, cfg)
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

def wm_median_normalize(image: np.ndarray, fg: np.ndarray, wm_prob: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Scale so the median of white matter (template WM probability > 0.9, inside the brain) is WM_LEVEL."""
    wm = fg & (wm_prob > 0.9)
    vals = image[wm] if wm.sum() >= 100 else image[fg]
    med = float(np.median(vals)) if vals.size else 0.0
    if not med > 0:
        med = float(np.max(image)) or 1.0
    high = med / WM_LEVEL
    out = np.where(fg, image / high, 0.0).astype(np.float32)
    return out, {"kind": "wm_median", "low": 0.0, "high": high, "wm_median": med, "wm_level": WM_LEVEL}


# Landmarks of the standardisation (percentiles inside the brain). Only up to p90: a bright lesion
# of a few % of the brain would move p98/p99 and be squashed onto the template's top.
QUANTILE_LANDMARKS = (2.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0)


def template_quantile_map(image: np.ndarray, fg: np.ndarray, template_values: np.ndarray) -> tuple[np.ndarray, dict]:
    """Map the brain's intensity landmarks onto the template's, piecewise-linearly; 0 stays 0 and
    above the last landmark the last segment's slope continues (no clipping)."""
    src = np.percentile(image[fg], QUANTILE_LANDMARKS)
    dst = np.percentile(template_values, QUANTILE_LANDMARKS)
    src = np.maximum.accumulate(src + np.arange(src.size) * 1e-6)  # strictly increasing
    xs, ys = np.r_[0.0, src], np.r_[0.0, dst]
    out = np.interp(image, xs, ys)
    top = image > xs[-1]
    out[top] = ys[-1] + (image[top] - xs[-1]) * (ys[-1] - ys[-2]) / max(xs[-1] - xs[-2], 1e-6)
    out = np.where(fg, out, 0.0).astype(np.float32)
    return out, {"landmarks_source": np.round(src, 5).tolist(), "landmarks_template": np.round(dst, 5).tolist()}


def _template_on_grid(cfg: PreprocessConfig):
    """Template arrays (brain, WM probability) on the model lattice; pure template space, cached."""
    key = (cfg.frontend_config().template, cfg.spacing, cfg.grid)
    if key not in _TEMPLATE_GRID_CACHE:
        from .frontend import load_template, template_grid_affine

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
    from .frontend.run import warp_in_voxels

    mm = np.stack([resample(c, fe.warp_affine, grid_affine, grid, order=1, antialias=False) for c in fe.warp])
    return warp_in_voxels(mm, grid_affine)


def preprocess_template(volume: Volume, cfg: PreprocessConfig) -> Preprocessed:
    """Front end (brain, N4, registration, QC), then ONE resampling onto the template-space grid.

    The model lattice is fixed in MNI space; pulled back through the registration it becomes
    an (oblique, scaled) lattice in the scan's own world, so ``GridMapping`` resamples either
    way exactly as for scan-space models."""
    from .frontend import run_frontend
    from .frontend.qc import check_inside, inside_fraction
    from .frontend.run import source_label

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
