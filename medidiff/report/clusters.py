"""Connected clusters of supra-threshold voxels, computed from the written maps.

The report derives these itself from ``mask.nii.gz`` (or ``anomaly_map > voxel
threshold`` when no mask was written), so it needs nothing beyond the files a
scoring run already leaves on disk. Sizes are in mm³ of the scan's own grid.
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
    centroid_world: tuple[float, float, float]  # RAS mm
    peak_value: float
    region: str


@dataclass
class ClusterStats:
    n_clusters: int
    total_mm3: float
    clusters: list[Cluster] = field(default_factory=list)  # largest first, at most MAX_LISTED

    @property
    def largest(self) -> Cluster | None:
        return self.clusters[0] if self.clusters else None


def supra_threshold(amap: np.ndarray, mask: np.ndarray | None, threshold: float | None) -> np.ndarray | None:
    """The voxels the run called anomalous: the written mask, else map > threshold, else None."""
    if mask is not None:
        return np.asarray(mask) > 0
    if threshold is not None:
        return np.nan_to_num(np.asarray(amap, np.float32), nan=-np.inf) > threshold
    return None


def find_clusters(amap: np.ndarray, supra: np.ndarray, affine: np.ndarray,
                  to_template: np.ndarray | None = None) -> ClusterStats:
    """26-connected components of ``supra`` with size, centre, peak and region name.

    ``to_template``: the front end's scan → MNI matrix (RAS mm); with it the region is named
    from the centre's template coordinates, otherwise from the scanner's RAS coordinates."""
    from scipy import ndimage

    labels, n = ndimage.label(supra, structure=np.ones((3, 3, 3), bool))
    voxel_mm3 = float(abs(np.linalg.det(np.asarray(affine)[:3, :3])))
    if n == 0:
        return ClusterStats(0, 0.0, [])
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    order = np.argsort(-counts, kind="stable")[:MAX_LISTED]
    a = np.nan_to_num(np.asarray(amap, np.float32), nan=-np.inf)
    out = []
    for k in order:
        lab = int(k) + 1
        idx = np.argwhere(labels == lab)
        centre = idx.mean(axis=0)
        inside = idx[np.argmin(((idx - centre) ** 2).sum(axis=1))]  # a ring's centre may lie outside it
        world = (np.asarray(affine) @ np.array([*centre, 1.0]))[:3]
        w = tuple(float(v) for v in world)
        where = w if to_template is None else tuple(float(v) for v in (np.asarray(to_template) @ np.r_[world, 1.0])[:3])
        out.append(Cluster(size_mm3=float(counts[k]) * voxel_mm3, n_voxels=int(counts[k]),
                           centroid_ijk=tuple(int(v) for v in inside),  # type: ignore[arg-type]
                           centroid_world=w,  # type: ignore[arg-type]
                           peak_value=float(a[tuple(idx.T)].max()), region=region_name(where)))
    return ClusterStats(n_clusters=int(n), total_mm3=float(counts.sum()) * voxel_mm3, clusters=out)
