"""Synthetic anomalies for building validation sets from healthy scans.

Every function works on a plain 3D numpy array plus voxel spacing in mm, so
lesion sizes are physical and the same call works at 1 mm or 4 mm. Contrast
is expressed relative to the scan's own brain intensities (a robust spread of
the brain's intensity distribution and the local tissue level around the
lesion), never in absolute units, so MR in arbitrary units and CT in HU both
work. All randomness comes from the ``numpy.random.Generator`` passed in: the
same generator state gives the same lesion.

Kinds
-----
``hypo`` / ``hyper``
    Irregular blob (smoothed noise thresholded inside a randomly rotated
    ellipsoid envelope) with soft edges, darker / brighter than local tissue.
``ring``
    Ring-enhancing lesion: bright irregular rim around a dark (necrotic) core.
``texture``
    The local intensity pattern is replaced by noise of a different spatial
    frequency with a subtle mean shift; hard to see, hard to detect.
``wm_cluster``
    Several small (2-6 mm) hyperintense lesions clustered in white matter,
    like small-vessel disease / MS plaques. White matter comes from a given
    probability map, else from the brightest of three intensity classes in the
    brain (right for T1-weighted scans).

Typical use::

    rng = np.random.default_rng(0)
    out, mask, info = insert_anomaly(img, spacing, "ring", rng, brain_mask=brain)
    out, mask, infos = insert_random_anomalies(img, spacing, rng, brain_mask=brain)

The ground-truth ``mask`` (uint8, 0/1) marks voxels whose lesion weight is at
least one half; the soft edge outside it changes intensity only slightly.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

KINDS: tuple[str, ...] = ("hypo", "hyper", "ring", "texture", "wm_cluster")

# Default size ranges (equivalent-sphere diameter, mm) per kind.
DEFAULT_DIAMETER_MM: dict[str, tuple[float, float]] = {
    "hypo": (6.0, 40.0),
    "hyper": (6.0, 40.0),
    "ring": (10.0, 35.0),
    "texture": (15.0, 40.0),
    "wm_cluster": (12.0, 30.0),  # extent of the cluster, not of each lesion
}
WM_LESION_DIAMETER_MM: tuple[float, float] = (2.0, 6.0)

AnomalyInfo = dict[str, Any]


# --------------------------------------------------------------------------- helpers

def as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def estimate_brain_mask(image: np.ndarray) -> np.ndarray:
    """Foreground of a (skull-stripped or not) scan: threshold at 10% of the
    robust range, fill holes, keep the largest component. A fallback for when
    the caller has no brain mask; pass a real one when you have it."""
    img = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(img, [1.0, 99.5])
    fg = img > lo + 0.1 * (hi - lo)
    fg = ndi.binary_opening(fg, iterations=1)
    lab, n = ndi.label(fg)
    if n == 0:
        return fg
    sizes = ndi.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    fg = lab == (1 + int(np.argmax(sizes)))
    return ndi.binary_fill_holes(fg)


def estimate_wm_mask(image: np.ndarray, brain_mask: np.ndarray, n_classes: int = 3) -> np.ndarray:
    """White matter as the brightest of ``n_classes`` 1D k-means intensity
    classes inside the brain (T1-weighted assumption)."""
    vals = np.asarray(image, dtype=np.float64)[brain_mask]
    if vals.size < n_classes:
        return np.zeros(image.shape, dtype=bool)
    centres = np.percentile(vals, np.linspace(15, 85, n_classes))
    for _ in range(30):
        assign = np.argmin(np.abs(vals[:, None] - centres[None, :]), axis=1)
        new = np.array([vals[assign == c].mean() if np.any(assign == c) else centres[c]
                        for c in range(n_classes)])
        if np.allclose(new, centres):
            break
        centres = new
    top = np.sort(centres)
    threshold = 0.5 * (top[-1] + top[-2])
    return brain_mask & (np.asarray(image) > threshold)


def _brain_stats(image: np.ndarray, brain: np.ndarray) -> tuple[float, float, float]:
    """(p1, p50, spread) of brain intensities. ``spread`` = p95 - p5 is the unit
    every contrast is expressed in, so results are scale- and offset-invariant."""
    vals = image[brain]
    p1, p5, p50, p95 = np.percentile(vals, [1, 5, 50, 95])
    spread = float(p95 - p5)
    if spread <= 0:
        spread = float(np.std(vals)) or 1.0
    return float(p1), float(p50), spread


def _box(centre: Sequence[int], half: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(0, c - h), min(s, c + h + 1)) for c, h, s in zip(centre, half, shape))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def _smooth_noise(shape: Sequence[int], sigma_vox: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="reflect")
    sd = float(n.std())
    return n / sd if sd > 0 else n


def _irregular_shape(box_shape: Sequence[int], centre_in_box: Sequence[float], spacing: np.ndarray,
                     diameter_mm: float, rng: np.random.Generator,
                     allowed: np.ndarray, irregularity: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Soft weight ``w`` in [0, 1] and a shape field ``f`` for one blob.

    The blob is the set of the N highest values of ``f`` = ellipsoid envelope +
    smooth noise, with N chosen from the requested equivalent diameter, so the
    size is controlled exactly while the outline stays irregular. Only
    ``allowed`` voxels (brain, minus other lesions) can be part of it.
    """
    radius = diameter_mm / 2.0
    axes = radius * rng.uniform(0.75, 1.3, size=3)
    axes *= radius / np.cbrt(np.prod(axes))  # keep the envelope's volume
    rot = _random_rotation(rng)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in box_shape], indexing="ij"), -1)
    offs = (grid - np.asarray(centre_in_box, dtype=np.float32)) * spacing.astype(np.float32)
    local = offs @ rot.astype(np.float32)
    d2 = np.sum((local / axes.astype(np.float32)) ** 2, axis=-1)
    envelope = 1.0 - np.sqrt(d2)
    sigma_vox = np.maximum(0.5, 0.35 * radius / spacing)
    f = envelope + irregularity * _smooth_noise(box_shape, sigma_vox, rng)
    f = np.where(allowed, f, -np.inf)

    n_target = max(1, int(round((np.pi / 6.0) * diameter_mm ** 3 / float(np.prod(spacing)))))
    n_target = min(n_target, int(np.count_nonzero(allowed)))
    flat = np.sort(f[np.isfinite(f)].ravel())[::-1]
    thr = flat[n_target - 1] if n_target <= flat.size else flat[-1]
    region = f >= thr
    # One connected lesion: drop noise islands that split off the main body.
    lab, n = ndi.label(region)
    if n > 1:
        sizes = ndi.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
        region = lab == (1 + int(np.argmax(sizes)))
    # Soft edge of about one voxel (or 1 mm): weight 0.5 exactly at the boundary.
    # f falls by ~1/radius per mm near the edge, so this scale is ~half a voxel.
    scale = 0.5 * max(float(spacing.min()), 1.0) / max(radius, float(spacing.min()))
    z = np.clip((np.where(np.isfinite(f), f, -10.0) - thr) / scale, -50, 50)
    w = 1.0 / (1.0 + np.exp(-z))
    w = np.where(region, np.maximum(w, 0.5), np.minimum(w, 0.49))
    w *= allowed
    # Keep the soft margin attached to the lesion only.
    near = ndi.binary_dilation(region, iterations=2)
    w = np.where(near, w, 0.0).astype(np.float32)
    return w, np.where(np.isfinite(f), f - thr, -10.0).astype(np.float32)


def _pick_centre(candidates: np.ndarray, rng: np.random.Generator) -> tuple[int, ...] | None:
    idx = np.flatnonzero(candidates)
    if idx.size == 0:
        return None
    return tuple(int(v) for v in np.unravel_index(int(rng.choice(idx)), candidates.shape))


def _centre_candidates(brain: np.ndarray, blocked: np.ndarray, spacing: np.ndarray,
                       radius_mm: float) -> np.ndarray:
    """Voxels at least ~radius inside the brain and away from existing lesions,
    relaxing the margin when the brain is too small for the requested size."""
    inside = ndi.distance_transform_edt(brain, sampling=spacing)
    free = ndi.distance_transform_edt(~blocked, sampling=spacing) if blocked.any() else np.full(brain.shape, np.inf)
    for frac in (1.0, 0.75, 0.5, 0.25, 0.0):
        cand = brain & (inside >= frac * radius_mm) & (free >= radius_mm * (1 + frac))
        if cand.any():
            return cand
    return brain & ~blocked


def _info(kind: str, mask: np.ndarray, spacing: np.ndarray, **extra: Any) -> AnomalyInfo:
    n = int(np.count_nonzero(mask))
    vol = n * float(np.prod(spacing))
    centre = tuple(int(round(c)) for c in ndi.center_of_mass(mask)) if n else None
    return {
        "kind": kind,
        "centre_voxel": centre,
        "volume_mm3": vol,
        "equivalent_diameter_mm": float(np.cbrt(6.0 * vol / np.pi)),
        "n_voxels": n,
        **extra,
    }


def _checked_inputs(image: np.ndarray, spacing: Sequence[float], brain_mask: np.ndarray | None,
                    blocked: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(float32 image, spacing array, brain mask, blocked mask), refusing shapes and masks no lesion fits."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3:
        raise ValueError(f"need a 3D image, got shape {img.shape}")
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    if spacing_arr.shape != (3,) or np.any(spacing_arr <= 0):
        raise ValueError(f"spacing must be three positive numbers (mm), got {spacing}")
    brain = estimate_brain_mask(img) if brain_mask is None else np.asarray(brain_mask, dtype=bool)
    if brain.shape != img.shape:
        raise ValueError(f"brain mask shape {brain.shape} differs from image {img.shape}")
    if not brain.any():
        raise ValueError("brain mask is empty: nowhere to put a lesion")
    blocked_arr = np.zeros(img.shape, bool) if blocked is None else np.asarray(blocked, dtype=bool)
    return img, spacing_arr, brain, blocked_arr


def _draw_diameter(kind: str, diameter_mm: tuple[float, float] | None, rng: np.random.Generator) -> float:
    """Equivalent-sphere diameter in mm, log-uniform in the requested (or the kind's default) range."""
    lo_d, hi_d = diameter_mm if diameter_mm is not None else DEFAULT_DIAMETER_MM[kind]
    if not 0 < lo_d <= hi_d:
        raise ValueError(f"diameter_mm must satisfy 0 < min <= max, got {(lo_d, hi_d)}")
    return float(np.exp(rng.uniform(np.log(lo_d), np.log(hi_d))))


def _white_matter(img: np.ndarray, brain: np.ndarray, wm_prob: np.ndarray | None) -> np.ndarray:
    """Where a white-matter cluster may go: wm_prob > 0.5 in the brain (or estimated), else the whole brain."""
    wm = (np.asarray(wm_prob) > 0.5) & brain if wm_prob is not None else estimate_wm_mask(img, brain)
    return wm if wm.any() else brain


def _place_blob(img: np.ndarray, spacing: np.ndarray, brain: np.ndarray, blocked: np.ndarray, diam: float,
                rng: np.random.Generator) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray, np.ndarray]:
    """Pick a free centre and shape one irregular blob there: (box, soft weight w, shape field f, the
    box's allowed voxels); w and f cover ``img[box]``."""
    allowed = brain & ~blocked
    centre = _pick_centre(_centre_candidates(brain, blocked, spacing, diam / 2), rng)
    if centre is None:
        raise ValueError("no free brain voxel left for another lesion")
    half = np.ceil((diam * 0.9 + 3 * spacing.max()) / spacing).astype(int) + 2
    box = _box(centre, half, img.shape)
    c_in = [c - s.start for c, s in zip(centre, box)]
    w, f = _irregular_shape(img[box].shape, c_in, spacing, diam, rng, allowed[box])
    return box, w, f, allowed[box]


def _hypo_hyper(kind: str, sub: np.ndarray, w: np.ndarray, contrast: tuple[float, float] | None,
                spread: float, p1: float, local_level: float,
                rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """A darker or brighter lesion; a dark one never goes below the darkest brain tissue (CSF level)."""
    c_lo, c_hi = contrast if contrast is not None else ((0.35, 0.7) if kind == "hyper" else (0.4, 0.7))
    delta = float(rng.uniform(c_lo, c_hi)) * spread * (1.0 if kind == "hyper" else -1.0)
    new = sub + w * delta
    if kind == "hypo":
        new = np.where(w > 0, np.maximum(new, min(p1, local_level + delta)), new)
    return new, {"delta": delta, "local_level": local_level}


def _ring(sub: np.ndarray, w: np.ndarray, f: np.ndarray, region: np.ndarray, spacing: np.ndarray,
          contrast: tuple[float, float] | None, spread: float, p1: float,
          rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """A bright rim around a dark core (ring enhancement)."""
    c_lo, c_hi = contrast if contrast is not None else (0.5, 0.9)
    rim_delta = float(rng.uniform(c_lo, c_hi)) * spread
    core_delta = -float(rng.uniform(0.4, 0.7)) * spread
    # The core is the inner part of the blob: the top fraction of f inside it.
    core_frac = float(rng.uniform(0.25, 0.5))
    inner = f[region]
    core_thr = np.quantile(inner, 1.0 - core_frac) if inner.size else np.inf
    rim_width = max(float(spacing.max()), 1.0)
    dist_in = ndi.distance_transform_edt(region, sampling=spacing)
    core = region & (f >= core_thr) & (dist_in > rim_width)
    core_w = ndi.gaussian_filter(core.astype(np.float32), 0.6) * region
    rim_w = np.clip(w - core_w, 0.0, 1.0)
    new = sub + rim_w * rim_delta + core_w * (core_delta)
    new = np.where(core_w > 0, np.maximum(new, p1), new)
    return new, {"delta": rim_delta, "core_delta": core_delta, "core_voxels": int(core.sum())}


def _texture(sub: np.ndarray, w: np.ndarray, region: np.ndarray, spacing: np.ndarray,
             contrast: tuple[float, float] | None, spread: float, local_level: float,
             rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """A slight shift in level with a grain finer or coarser than the anatomy's."""
    c_lo, c_hi = contrast if contrast is not None else (0.05, 0.15)
    shift = float(rng.uniform(c_lo, c_hi)) * spread * float(rng.choice([-1.0, 1.0]))
    local_sd = float(np.std(sub[region])) if region.sum() > 3 else 0.1 * spread
    local_sd = max(local_sd, 0.08 * spread)
    # Either finer or coarser grain than anatomy: both are "different frequency".
    if rng.random() < 0.5:
        sigma_mm, grain = 0.5 * float(spacing.min()), "fine"
    else:
        sigma_mm, grain = float(rng.uniform(3.0, 5.0)), "coarse"
    pattern = _smooth_noise(sub.shape, np.maximum(sigma_mm / spacing, 0.3), rng)
    mean_in = float(np.mean(sub[region])) if region.any() else local_level
    target = mean_in + shift + float(rng.uniform(0.8, 1.2)) * local_sd * pattern
    return (1.0 - w) * sub + w * target, {"delta": shift, "grain": grain, "pattern_sd": local_sd}


# --------------------------------------------------------------------------- public API

def insert_anomaly(image: np.ndarray, spacing: Sequence[float], kind: str,
                   rng: np.random.Generator | int | None = None, *,
                   brain_mask: np.ndarray | None = None,
                   wm_prob: np.ndarray | None = None,
                   diameter_mm: tuple[float, float] | None = None,
                   contrast: tuple[float, float] | None = None,
                   blocked: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, AnomalyInfo]:
    """Insert one anomaly of ``kind`` into a copy of ``image``.

    Parameters
    ----------
    image : 3D array, any intensity scale.
    spacing : voxel size in mm along the three array axes.
    kind : one of :data:`KINDS`.
    rng : ``numpy.random.Generator`` (or a seed); the only source of randomness.
    brain_mask : where lesions may go (bool). Estimated from ``image`` if None.
    wm_prob : white-matter probability map (``wm_cluster`` only); lesions go
        where it is > 0.5. Estimated from intensities if None.
    diameter_mm : (min, max) equivalent-sphere diameter in mm, sampled
        log-uniformly. For ``wm_cluster`` it is the cluster's extent; each of its
        lesions is 2-6 mm.
    contrast : (min, max) of the intensity change in units of the brain's
        p95-p5 intensity spread (defaults per kind).
    blocked : voxels the new lesion must not touch (e.g. earlier lesions).

    Returns
    -------
    (out, mask, info): float32 image, uint8 0/1 ground-truth mask and a dict
    with ``kind``, ``centre_voxel``, ``volume_mm3``, ``equivalent_diameter_mm``,
    ``n_voxels`` and kind-specific fields (``delta`` etc.).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown anomaly kind {kind!r}; choose from {KINDS}")
    rng = as_generator(rng)
    img, spacing_arr, brain, blocked_arr = _checked_inputs(image, spacing, brain_mask, blocked)
    diam = _draw_diameter(kind, diameter_mm, rng)
    stats = _brain_stats(img, brain)
    if kind == "wm_cluster":
        wm = _white_matter(img, brain, wm_prob)
        return _wm_cluster(img, spacing_arr, rng, brain, wm, blocked_arr, diam, stats, contrast)

    if kind == "ring":  # a rim needs a few voxels of room to exist
        diam = max(diam, 5.0 * float(spacing_arr.max()))
    box, w, f, allowed = _place_blob(img, spacing_arr, brain, blocked_arr, diam, rng)
    sub = img[box]
    region = w >= 0.5
    # Local tissue level: median of brain voxels in a shell around the lesion.
    around = ndi.binary_dilation(region, iterations=3) & allowed
    local = sub[around] if around.sum() >= 10 else img[brain]
    local_level = float(np.median(local))
    p1, _, spread = stats
    if kind in ("hypo", "hyper"):
        new, extra = _hypo_hyper(kind, sub, w, contrast, spread, p1, local_level, rng)
    elif kind == "ring":
        new, extra = _ring(sub, w, f, region, spacing_arr, contrast, spread, p1, rng)
    else:
        new, extra = _texture(sub, w, region, spacing_arr, contrast, spread, local_level, rng)

    out = img.copy()
    out[box] = new.astype(np.float32)
    mask = np.zeros(img.shape, dtype=np.uint8)
    mask[box] = region
    return out, mask, _info(kind, mask, spacing_arr, requested_diameter_mm=diam, **extra)

def _wm_cluster(img: np.ndarray, spacing: np.ndarray, rng: np.random.Generator, brain: np.ndarray,
                wm: np.ndarray, blocked: np.ndarray, extent_mm: float,
                stats: tuple[float, float, float],
                contrast: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray, AnomalyInfo]:
    _, _, spread = stats
    allowed = wm & ~blocked
    # Prefer deep white matter so small lesions are not half in grey matter.
    deep = allowed & (ndi.distance_transform_edt(wm, sampling=spacing) >= 2.0)
    centre = _pick_centre(_centre_candidates(deep if deep.any() else allowed, blocked, spacing, extent_mm / 4), rng)
    if centre is None:
        raise ValueError("no free white-matter voxel left for a lesion cluster")
    c_lo, c_hi = contrast if contrast is not None else (0.4, 0.8)
    n_lesions = int(rng.integers(3, 9))
    half = np.ceil((extent_mm / 2 + 8.0) / spacing).astype(int) + 2
    box = _box(centre, half, img.shape)
    c_in = np.array([c - s.start for c, s in zip(centre, box)])
    sub = img[box].copy()
    sub_allowed = allowed[box]
    sub_mask = np.zeros(sub.shape, dtype=bool)
    cand_idx = np.argwhere(sub_allowed)
    dist_mm = np.linalg.norm((cand_idx - c_in) * spacing, axis=1)
    cand_idx = cand_idx[dist_mm <= extent_mm / 2]
    if cand_idx.size == 0:
        cand_idx = np.argwhere(sub_allowed)
    diameters: list[float] = []
    lo, hi = WM_LESION_DIAMETER_MM
    for _ in range(n_lesions):
        free = cand_idx[~sub_mask[tuple(cand_idx.T)]]
        if free.size == 0:
            break
        p = free[int(rng.integers(len(free)))]
        d = float(rng.uniform(lo, hi))
        lhalf = np.ceil((d + 3 * spacing.max()) / spacing).astype(int) + 1
        lbox = _box(p, lhalf, sub.shape)
        l_in = [c - s.start for c, s in zip(p, lbox)]
        w, _ = _irregular_shape(sub[lbox].shape, l_in, spacing, d, rng,
                                sub_allowed[lbox] & ~sub_mask[lbox], irregularity=0.15)
        if not (w >= 0.5).any():
            continue
        delta = float(rng.uniform(c_lo, c_hi)) * spread
        sub[lbox] = sub[lbox] + w * delta
        sub_mask[lbox] |= w >= 0.5
        diameters.append(d)
    out = img.copy()
    out[box] = sub
    mask = np.zeros(img.shape, dtype=np.uint8)
    mask[box] = sub_mask
    return out, mask, _info("wm_cluster", mask, spacing, requested_diameter_mm=extent_mm,
                            n_lesions=len(diameters), lesion_diameters_mm=diameters)


def insert_random_anomalies(image: np.ndarray, spacing: Sequence[float],
                            rng: np.random.Generator | int | None = None, *,
                            n: int | None = None, kinds: Sequence[str] = KINDS,
                            brain_mask: np.ndarray | None = None,
                            wm_prob: np.ndarray | None = None,
                            diameter_mm: dict[str, tuple[float, float]] | tuple[float, float] | None = None,
                            ) -> tuple[np.ndarray, np.ndarray, list[AnomalyInfo]]:
    """Insert ``n`` (default: random 1-3) anomalies of random ``kinds``, none
    overlapping. ``diameter_mm`` is one range for all kinds or a per-kind dict.
    Returns the image, the union mask (uint8) and one info dict per lesion."""
    rng = as_generator(rng)
    img = np.asarray(image, dtype=np.float32)
    brain = estimate_brain_mask(img) if brain_mask is None else np.asarray(brain_mask, dtype=bool)
    count = int(rng.integers(1, 4)) if n is None else int(n)
    chosen = [str(k) for k in rng.choice(list(kinds), size=count, replace=count > len(kinds))]
    return insert_anomalies(img, spacing, chosen, rng, brain_mask=brain, wm_prob=wm_prob,
                            diameter_mm=diameter_mm)


def insert_anomalies(image: np.ndarray, spacing: Sequence[float], kinds: Sequence[str],
                     rng: np.random.Generator | int | None = None, *,
                     brain_mask: np.ndarray | None = None,
                     wm_prob: np.ndarray | None = None,
                     diameter_mm: dict[str, tuple[float, float]] | tuple[float, float] | None = None,
                     ) -> tuple[np.ndarray, np.ndarray, list[AnomalyInfo]]:
    """Insert one anomaly per entry of ``kinds`` (in order), none overlapping."""
    rng = as_generator(rng)
    out = np.asarray(image, dtype=np.float32).copy()
    brain = estimate_brain_mask(out) if brain_mask is None else np.asarray(brain_mask, dtype=bool)
    mask = np.zeros(out.shape, dtype=np.uint8)
    infos: list[AnomalyInfo] = []
    for kind in kinds:
        rng_d = diameter_mm.get(kind) if isinstance(diameter_mm, dict) else diameter_mm
        # Block a margin around earlier lesions so soft edges do not overlap.
        blocked = ndi.binary_dilation(mask > 0, iterations=2) if mask.any() else None
        out, m, info = insert_anomaly(out, spacing, kind, rng, brain_mask=brain, wm_prob=wm_prob,
                                      diameter_mm=rng_d, blocked=blocked)
        mask |= m
        infos.append(info)
    return out, mask, infos


def insert_anomalies_volume(volume, rng: np.random.Generator | int | None = None, *,
                            kinds: Sequence[str] | None = None, **kwargs: Any):
    """:class:`~medidiff.volume.Volume` wrapper: returns ``(volume, mask_volume, infos)``,
    both volumes on the input's exact grid. ``kinds=None`` inserts 1-3 random kinds."""
    spacing = volume.spacing
    if kinds is None:
        arr, mask, infos = insert_random_anomalies(volume.array, spacing, rng, **kwargs)
    else:
        arr, mask, infos = insert_anomalies(volume.array, spacing, kinds, rng, **kwargs)
    return volume.with_array(arr), volume.with_array(mask.astype(np.float32)), infos
