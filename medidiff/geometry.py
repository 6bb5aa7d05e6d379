"""Grid geometry: RAS model lattices, the one resampling between grids (with anti-aliasing), and
:class:`GridMapping`, which remembers a scan's grid and the model grid and maps arrays either way.

A scan (any stored orientation: RAS, LPS, permuted axes, oblique) is brought
onto the *model grid*: a RAS-aligned lattice with the configured spacing and
shape. There is exactly ONE resampling from the source voxel grid, through the
composed affine ``inv(A_src) @ A_model``; that single step reorients to RAS,
resamples and crops/pads. Before downsampling the source is Gaussian
anti-aliased (sigma from the downsampling ratio along each source axis).
:meth:`GridMapping.to_source` maps model-grid arrays back onto the scanner grid
with the source's exact shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy import ndimage


def model_affine(spacing: Sequence[float], grid: Sequence[int], centre: Sequence[float]) -> np.ndarray:
    """RAS-aligned affine of a lattice with ``spacing`` and ``grid`` whose centre is ``centre`` (mm)."""
    sp = np.asarray(spacing, dtype=np.float64)
    aff = np.diag([*sp, 1.0])
    aff[:3, 3] = np.asarray(centre, dtype=np.float64) - sp * (np.asarray(grid, dtype=np.float64) - 1) / 2.0
    return aff


def antialias_sigma(src_affine: np.ndarray, dst_affine: np.ndarray) -> np.ndarray:
    """Gaussian sigma (in source voxels) per source axis for resampling src → dst.

    The destination spacing seen along source axis j is the length of that
    axis' unit step expressed in destination voxels, inverted. sigma follows
    the usual ``(factor - 1) / 2`` rule (0 when not downsampling)."""
    # source voxel step in destination voxel units
    step_dst = np.linalg.inv(dst_affine[:3, :3]) @ src_affine[:3, :3]
    # factor = destination spacing / source spacing along axis j = 1 / |step in dst voxels|
    factor = 1.0 / np.maximum(np.linalg.norm(step_dst, axis=0), 1e-12)
    return np.maximum(0.0, (factor - 1.0) / 2.0)


def antialiased(array: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray,
                read: tuple[slice, ...] | None = None) -> np.ndarray:
    """``array`` Gaussian-filtered for resampling from ``src_affine`` onto ``dst_affine``; unchanged
    (the same object) where no axis is downsampled enough to alias.

    With ``read`` (the box the interpolation will read, :func:`read_box`) only that box is filtered,
    from the box widened by the kernel's reach, and the rest of the array is left as it is: the
    values read are exactly those of filtering everything. A whole head with its neck is several
    times the template box the model grid covers, and this filter was the front end's slowest
    numpy step."""
    sigma = antialias_sigma(src_affine, dst_affine)
    if not np.any(sigma > 0.05):
        return array
    if read is None:
        return ndimage.gaussian_filter(array, sigma=sigma, mode="nearest", truncate=3.0)
    if any(b.stop <= b.start for b in read):
        return array  # nothing of the array is read
    reach = [int(3.0 * float(sd) + 0.5) for sd in sigma]  # scipy's kernel radius at truncate=3
    outer = tuple(slice(max(b.start - r, 0), min(b.stop + r, n)) for b, r, n in zip(read, reach, array.shape))
    filtered = ndimage.gaussian_filter(array[outer], sigma=sigma, mode="nearest", truncate=3.0)
    out = array.copy()
    out[read] = filtered[tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(read, outer))]
    return out


def read_box(points: np.ndarray, shape: Sequence[int]) -> tuple[slice, ...]:
    """The voxels of an array of ``shape`` that linear or nearest interpolation at ``points``
    (3 x N voxel coordinates; for an affine map its corners suffice) can read."""
    pts = np.asarray(points, dtype=np.float64).reshape(3, -1)
    lo = np.clip(np.floor(pts.min(axis=1)).astype(np.int64) - 1, 0, shape)
    hi = np.clip(np.ceil(pts.max(axis=1)).astype(np.int64) + 2, 0, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _corners(shape: Sequence[int]) -> np.ndarray:
    return np.array(np.meshgrid(*[[0, int(s) - 1] for s in shape], indexing="ij"), dtype=np.float64).reshape(3, -1)


def resample(array: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: Sequence[int],
             order: int = 1, fill: float = 0.0, antialias: bool = True) -> np.ndarray:
    """Sample ``array`` (on ``src_affine``) at the voxels of the ``dst`` grid in one interpolation."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"resample needs a 3D array, got shape {array.shape}")
    src = array.astype(np.float32, copy=False)
    m = np.linalg.inv(src_affine) @ dst_affine  # dst voxel -> src voxel
    if antialias:
        read = read_box(m[:3, :3] @ _corners(dst_shape) + m[:3, 3:4], src.shape) if order <= 1 else None
        src = antialiased(src, src_affine, dst_affine, read)
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
        m = np.linalg.inv(array_affine) @ self.model_affine
        pts = np.indices(self.model_shape, dtype=np.float32) + self.displacement
        coords = np.einsum("ij,j...->i...", m[:3, :3], pts) + m[:3, 3].reshape(3, 1, 1, 1)
        if antialias:
            src = antialiased(src, array_affine, self.model_affine, read_box(coords, src.shape) if order <= 1 else None)
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
        if antialias:  # only filters when the source is coarser than the model grid along some axis
            src = antialiased(src, self.model_affine, self.source_affine)
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


def mask_world_centre(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Centre of the world-space bounding box of the mask's voxel centres."""
    idx = np.argwhere(mask)
    if len(idx) == 0:
        idx = np.array([[0, 0, 0], np.array(mask.shape) - 1])
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    return (world.min(axis=0) + world.max(axis=0)) / 2.0
