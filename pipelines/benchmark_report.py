"""Page weight and build time of `medidiff report` (not a test: prints a table).

Writes a synthetic scoring run of N scans (the MNI152 template that ships with
nilearn, with noise; a smooth z-like anomaly map with one blob; its mask; a
result.json each), builds the report and reports MB per scan (whole report
folder / N), the median scan page (HTML with its embedded scroller volume) and
seconds per scan.

    python pipelines/benchmark_report.py --n 100 --resolution 2
    python pipelines/benchmark_report.py --n 10 --resolution 1
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

VOXEL_THRESHOLD = 3.8


def synthetic_run(out: Path, n: int, resolution: int, seed: int = 0) -> tuple[int, ...]:
    import nibabel as nib
    from nilearn.datasets import load_mni152_template
    from scipy import ndimage

    tpl = load_mni152_template(resolution=resolution)
    base = np.asarray(tpl.get_fdata(), np.float32) * 1000.0
    brain = base > 0.2 * base.max()
    rng = np.random.default_rng(seed)
    (out / "in").mkdir(parents=True)
    calibration = {"voxel_threshold": VOXEL_THRESHOLD, "scan_threshold": 4700.0, "n_scans": 20,
                   "scan_fpr": 0.05, "achieved_scan_fpr": 0.05}
    (out / "run.json").write_text(json.dumps({
        "model_hash": "sha256:benchmark", "config_hash": "benchmark", "calibrated": True, "calibration": calibration,
        "score_config": {"score": "supra_volume", "normalization": "voxelwise"}, "t_star": [100],
        "input": str(out / "in")}))
    vox_mm3 = float(resolution ** 3)
    for i in range(n):
        sid = f"scan{i:03d}"
        scan = (base + rng.normal(0, 20, base.shape)).astype(np.int16)
        nib.save(nib.Nifti1Image(scan, tpl.affine), out / "in" / f"{sid}.nii.gz")
        amap = ndimage.gaussian_filter(rng.normal(0, 1, base.shape).astype(np.float32), 1.0) * 2.5
        c = np.array(np.nonzero(brain))[:, rng.integers(brain.sum())]
        r = int(rng.integers(2, 6)) * 2 // resolution
        sl = tuple(slice(max(x - r, 0), x + r) for x in c)
        amap[sl] += rng.uniform(3, 8)
        amap[~brain] = 0
        mask = (amap > VOXEL_THRESHOLD).astype(np.uint8)
        d = out / "scans" / sid
        d.mkdir(parents=True)
        nib.save(nib.Nifti1Image(amap, tpl.affine), d / "anomaly_map.nii.gz")
        nib.save(nib.Nifti1Image(mask, tpl.affine), d / "mask.nii.gz")
        score = float(mask.sum() * vox_mm3)
        (d / "result.json").write_text(json.dumps({
            "scan_id": sid, "source_path": str(out / "in" / f"{sid}.nii.gz"), "format": "nifti", "status": "ok",
            "score": score, "flag": score > calibration["scan_threshold"], "percentile": None, "warnings": [],
            "outputs": {"anomaly_map": "anomaly_map.nii.gz", "mask": "mask.nii.gz"},
            "finished": "2026-01-01T00:00:00+00:00"}))
    return tuple(base.shape)


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--resolution", type=int, default=2, choices=(1, 2), help="template resolution in mm")
    args = ap.parse_args()
    from medidiff.report.build import build_report

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        shape = synthetic_run(out, args.n, args.resolution)
        t0 = time.perf_counter()
        index = build_report(out)
        seconds = time.perf_counter() - t0
        report = index.parent
        pages = [p.stat().st_size / 1e6 for p in (report / "scans").glob("*.html")]
        pngs = [folder_mb(d) for d in (report / "scans").iterdir() if d.is_dir()]
        total = folder_mb(report)
        index_mb = index.stat().st_size / 1e6
    print(f"machine: {platform.processor() or platform.machine()}, {platform.system()}; report of {args.n} scans, "
          f"{'×'.join(map(str, shape))} at {args.resolution} mm")
    print("| scans | grid | MB per scan (whole report / n) | scan page HTML, median MB | PNGs per scan, median MB "
          "| index.html MB | build s per scan |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.n} | {'×'.join(map(str, shape))} ({args.resolution} mm) | {total / args.n:.2f} | "
          f"{statistics.median(pages):.2f} | {statistics.median(pngs):.2f} | "
          f"{index_mb:.2f} | {seconds / args.n:.2f} |")


if __name__ == "__main__":
    main()
