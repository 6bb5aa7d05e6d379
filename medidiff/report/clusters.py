"""Connected clusters of supra-threshold voxels, computed from the written maps.

The report derives these itself from ``mask.nii.gz`` (or ``anomaly_map > voxel
threshold`` when no mask was written), so it needs nothing beyond the files a
scoring run already leaves on disk. Sizes are in mm³ of the scan's own grid.

The mask is the model-grid decision resampled nearest-neighbour onto the scan's
grid, while the anomaly map is resampled with interpolation; a small piece of the
mask can therefore hold only map values below the voxel threshold on this grid.
Such pieces are counted as *fragments* and never listed as clusters, so every
listed cluster's peak lies at or above the threshold by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .regions import region_name

MAX_LISTED = 8  # clusters listed per scan (largest first); the count covers all


@dataclass
class Cluster:
    size_mm3: float
    n_voxels: int
    centroid_ijk: tuple[int, int, int]  # voxel nearest the centroid that lies inside the cluster
    centroid_world: tuple[float, float, float]  # scanner RAS mm (the mean of its voxel centres)
    peak_value: float
    region: str  # named from centroid_template when registered, else from centroid_world
    centroid_template: tuple[float, float, float] | None = None  # MNI mm, when the scan was registered
    inside_world: tuple[float, float, float] = (0.0, 0.0, 0.0)  # scanner RAS mm of centroid_ijk

    @property
    def named_from(self) -> str:
        return "template" if self.centroid_template is not None else "scanner"


@dataclass
class ClusterStats:
    n_clusters: int  # clusters whose peak reaches the threshold (the ones that can be listed)
    total_mm3: float  # their volume
    clusters: list[Cluster] = field(default_factory=list)  # largest first, at most MAX_LISTED
    n_fragments: int = 0  # pieces of the mask whose map values all lie below the threshold on this grid
    fragments_mm3: float = 0.0
    registered: bool = False

    @property
    def largest(self) -> Cluster | None:
        return self.clusters[0] if self.clusters else None

    @property
    def mask_mm3(self) -> float:
        """Every voxel of the mask: listed clusters and fragments."""
        return self.total_mm3 + self.fragments_mm3


def supra_threshold(amap: np.ndarray, mask: np.ndarray | None, threshold: float | None) -> np.ndarray | None:
    """The voxels the run called anomalous: the written mask, else map > threshold, else None."""
    if mask is not None:
        return np.asarray(mask) > 0
    if threshold is not None:
        return np.nan_to_num(np.asarray(amap, np.float32), nan=-np.inf) > threshold
    return None


def find_clusters(amap: np.ndarray, supra: np.ndarray, affine: np.ndarray,
                  to_template: np.ndarray | None = None, threshold: float | None = None) -> ClusterStats:
    """26-connected components of ``supra`` with size, centre, peak and region name.

    ``to_template``: the front end's scan → MNI matrix (RAS mm); with it each cluster also gets
    its template coordinates and is named from them, otherwise from the scanner's RAS
    coordinates. ``threshold``: components whose peak on this grid lies below it are
    fragments, counted but not listed."""
    from scipy import ndimage

    labels, n = ndimage.label(supra, structure=np.ones((3, 3, 3), bool))
    voxel_mm3 = float(abs(np.linalg.det(np.asarray(affine)[:3, :3])))
    registered = to_template is not None
    if n == 0:
        return ClusterStats(0, 0.0, [], registered=registered)
    a = np.nan_to_num(np.asarray(amap, np.float32), nan=-np.inf)
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    peaks = ndimage.maximum(a, labels, index=np.arange(1, n + 1))
    peaks = np.atleast_1d(np.asarray(peaks, np.float64))
    keep = np.ones(n, bool) if threshold is None else peaks >= threshold
    order = [int(k) for k in np.argsort(-counts, kind="stable") if keep[k]][:MAX_LISTED]
    aff = np.asarray(affine, np.float64)
    out = []
    for k in order:
        lab = k + 1
        idx = np.argwhere(labels == lab)
        centre = idx.mean(axis=0)
        inside = idx[np.argmin(((idx - centre) ** 2).sum(axis=1))]  # a ring's centre may lie outside it
        world = (aff @ np.array([*centre, 1.0]))[:3]
        w = tuple(float(v) for v in world)
        tmpl = None
        if registered:
            tmpl = tuple(float(v) for v in (np.asarray(to_template, np.float64) @ np.r_[world, 1.0])[:3])
        out.append(Cluster(size_mm3=float(counts[k]) * voxel_mm3, n_voxels=int(counts[k]),
                           centroid_ijk=tuple(int(v) for v in inside),  # type: ignore[arg-type]
                           centroid_world=w,  # type: ignore[arg-type]
                           peak_value=float(peaks[k]), region=region_name(tmpl if tmpl is not None else w),
                           centroid_template=tmpl,  # type: ignore[arg-type]
                           inside_world=tuple(float(v) for v in (aff @ np.r_[inside, 1.0])[:3])))  # type: ignore
    return ClusterStats(n_clusters=int(keep.sum()), total_mm3=float(counts[keep].sum()) * voxel_mm3, clusters=out,
                        n_fragments=int((~keep).sum()), fragments_mm3=float(counts[~keep].sum()) * voxel_mm3,
                        registered=registered)
