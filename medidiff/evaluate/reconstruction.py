"""Reconstruction fidelity on the healthy scans of a run: PSNR and SSIM of each reconstruction
against its source scan (runs scored with ``--reconstruction``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .metrics import psnr, summarize
from .scans import MatchedScan, check_same_grid, load_nifti, load_source


def reconstruction_fidelity(scans: list[MatchedScan]) -> dict[str, Any]:
    healthy = [sc for sc in scans if sc.row.label == 0]
    have = [sc for sc in healthy if (sc.scan_dir / sc.result.get("outputs", {}).get("reconstruction", "reconstruction.nii.gz")).is_file()
            and sc.result.get("outputs", {}).get("reconstruction")]
    if not have:
        return {"available": False,
                "note": "not available: the run wrote no reconstruction.nii.gz for healthy scans (score with --reconstruction)"}
    from skimage.metrics import structural_similarity

    psnrs, ssims, per = [], [], []
    for sc in have:
        rpath = sc.scan_dir / sc.result["outputs"]["reconstruction"]
        rec, raff = load_nifti(rpath)
        src = load_source(sc.row, sc.result)
        if src is None:
            continue
        img, saff, spath = src
        check_same_grid(img.shape, saff, spath, rec.shape, raff, rpath)
        img = img.astype(np.float64)
        rec = rec.astype(np.float64)
        fg = img != 0
        if not fg.any():
            continue
        rng = float(img[fg].max() - img[fg].min())
        p = psnr(img, rec, fg, rng)
        idx = np.argwhere(fg)
        lo, hi = idx.min(0), idx.max(0) + 1
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        win = int(min(7, *(b - a for a, b in zip(lo, hi))))
        win = win if win % 2 else win - 1
        ssim = float(structural_similarity(img[box], rec[box], data_range=rng, win_size=max(win, 3))) if win >= 3 else float("nan")
        psnrs.append(p)
        ssims.append(ssim)
        per.append({"scan_id": sc.row.scan_id, "psnr_db": p, "ssim": ssim})
    return {"available": bool(per), "n_scans": len(per), "psnr_db": summarize(psnrs), "ssim": summarize(ssims),
            "per_scan": per,
            "definition": "healthy scans; PSNR over source-nonzero voxels with the scan's range there; "
                          "SSIM (7-voxel window) over the foreground bounding box"}
