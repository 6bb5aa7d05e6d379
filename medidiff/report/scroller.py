"""Data for the scan page's offline slice scroller: a compact embedded volume.

The page carries the canonical (closest-RAS) volumes itself, so it scrolls with
no server, no network and no external script. Three channels, block-reduced to
at most ``MAX_SIDE`` voxels along any axis, gzip-compressed and base64-encoded:

* the scan, windowed to uint8 (block mean);
* the anomaly map, int16 in hundredths (block max, so a peak never shrinks away);
* flags, uint8: bit 0 the voxel-threshold mask, bit 1 the ground truth (block any).

The page unpacks them with the browser's built-in ``DecompressionStream``.
"""

from __future__ import annotations

import base64
import gzip
import json
import math
from typing import Any, Sequence

import numpy as np

from .render import CONTOUR_COLOR, CROSS_COLOR, GT_COLOR, OVER_COLOR, OVERLAY_ALPHA, VIEWS, ColourScale, Prepared

MAX_SIDE = 128
MAP_STEP = 0.01  # int16 quantum of the embedded anomaly map
CANVAS_PX = 300  # the longest side of the volume on screen (every plane at the same px per mm)


def block_reduce(arr: np.ndarray, f: int, how: str) -> np.ndarray:
    """Reduce each f×f×f block by mean or max (edges padded by repetition)."""
    if f == 1:
        return arr
    pad = [(0, (-n) % f) for n in arr.shape]
    a = np.pad(arr, pad, mode="edge")
    x, y, z = (n // f for n in a.shape)
    blocks = a.reshape(x, f, y, f, z, f)
    return blocks.mean(axis=(1, 3, 5)) if how == "mean" else blocks.max(axis=(1, 3, 5))


WORLD_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}  # the RAS coordinate each plane's position is given in
WORLD_NAME = "xyz"


def payload(prep: Prepared, scale: ColourScale, max_side: int = MAX_SIDE,
            cluster_worlds: Sequence[Sequence[float]] = ()) -> tuple[dict[str, Any], str]:
    """(metadata for the page script, base64 of the gzipped channels).

    Every plane is drawn at the same millimetres per screen pixel (one scale for the three
    planes); ``cluster_worlds`` (scanner RAS mm) become the embedded voxels a cluster row
    jumps to."""
    a = np.nan_to_num(prep.amap.data.astype(np.float32), nan=0.0)
    f = max(1, math.ceil(max(a.shape) / max_side))
    scan8 = (np.zeros(a.shape, np.float32) if prep.scan is None else prep.window.gray(prep.scan)) * 255.0
    scan8 = np.round(block_reduce(scan8, f, "mean")).astype(np.uint8)
    amap16 = np.clip(np.round(block_reduce(a, f, "max") / MAP_STEP), -32768, 32767).astype("<i2")
    flags = np.zeros(a.shape, np.uint8)
    if prep.mask is not None:
        flags |= prep.mask.astype(np.uint8)
    if prep.gt is not None:
        flags |= prep.gt.astype(np.uint8) << 1
    flags = block_reduce(flags, f, "max").astype(np.uint8)
    raw = scan8.tobytes() + amap16.tobytes() + flags.tobytes()
    data = base64.b64encode(gzip.compress(raw, compresslevel=9, mtime=0)).decode("ascii")

    shape = scan8.shape
    zooms = [z * f for z in prep.amap.zooms]
    reduce = np.diag([f, f, f, 1.0])
    reduce[:3, 3] = (f - 1) / 2.0  # block k's centre is voxel k·f + (f−1)/2
    views = []
    k = CANVAS_PX / max(n * z for n, z in zip(shape, zooms))  # screen px per mm, shared by the planes
    for name in VIEWS:
        p = prep.planes[name]
        zh, zv = zooms[p.h_axis], zooms[p.v_axis]
        views.append({"name": name, "slice_axis": p.slice_axis, "h_axis": p.h_axis, "v_axis": p.v_axis,
                      "h_flip": p.h_flip, "v_flip": p.v_flip, "labels": p.labels,
                      "world_axis": WORLD_AXIS[name], "world_name": WORLD_NAME[WORLD_AXIS[name]],
                      "sx": round(k * zh, 4), "sy": round(k * zv, 4)})
    meta = {
        "shape": list(shape), "factor": f, "affine": (prep.amap.affine @ reduce).round(4).tolist(),
        "peak": [int(v // f) for v in prep.peak], "views": views, "map_step": MAP_STEP,
        "vmax": scale.vmax, "threshold": scale.threshold, "ref": scale.ref, "alpha": OVERLAY_ALPHA,
        "lut": scale.lut(), "over": OVER_COLOR, "mask_color": CONTOUR_COLOR, "gt_color": GT_COLOR,
        "cross_color": CROSS_COLOR, "has_scan": prep.scan is not None, "has_mask": prep.mask is not None,
        "has_gt": prep.gt is not None, "units": scale.label, "unit": "z" if "(z" in scale.label else "",
        "oblique": prep.amap.oblique,
        "clusters": [[int(v // f) for v in prep.ijk_of(w)] for w in cluster_worlds],
    }
    return meta, data


def meta_json(meta: dict[str, Any]) -> str:
    """JSON safe to place inside a <script> element."""
    return json.dumps(meta, separators=(",", ":")).replace("</", "<\\/")
