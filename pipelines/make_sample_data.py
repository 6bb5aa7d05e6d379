"""Build medidiff's ``sample_data/`` from the MNI152 template bundled with nilearn.

Every scan is the ICBM 2009a T1 template (shipped inside the nilearn wheel, so
no download) pushed through a random "subject + scanner" model:

1. smooth nonlinear deformation (a few mm) and a small random affine
   (rotation <= 4 deg, scale +-5 %, translation <= 4 mm) — new anatomy;
2. resampled onto the scan's own grid (2 mm isotropic by default, cropped to
   the head); a few healthy scans use LPS, permuted or oblique grids, sampled
   from the same world-space anatomy so only the storage differs;
3. anomalous scans: 1-3 lesions from :mod:`medidiff.lesions` placed on the clean
   anatomy (white-matter map warped with it), before the imaging steps, so the
   lesions get the same bias field and noise as the tissue around them;
4. multiplicative bias field (+-10-20 %), gamma contrast jitter, a random gain,
   Rician noise inside the head, background exactly zero; stored as int16.

Usage::

    python pipelines/make_sample_data.py --out sample_data --seed 0 --split-seed test=1
    python pipelines/make_sample_data.py --out /tmp/tiny --small   # 3 scans at 4 mm

The same seeds give identical arrays, masks and CSV. The shipped ``sample_data`` draws its test split
with seed 1 (``--split-seed test=1``): the seed-0 test split was looked at while settings were chosen
on template warps in earlier versions, so it was replaced by one that nothing has been tuned on.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medidiff.io.atomic import write_text_atomic  # noqa: E402
from medidiff.io.dicom_write import write_dicom_series  # noqa: E402
from medidiff.io.nifti import write_nifti  # noqa: E402
from medidiff.lesions import KINDS, insert_anomalies  # noqa: E402
from medidiff.volume import Provenance, Volume  # noqa: E402

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
# Brain bounding box of the template in MNI mm, plus room for the random warps.
BRAIN_BOX_MM = np.array([[-72.0, -107.0, -72.0], [72.0, 73.0, 82.0]])
MARGIN_MM = 8.0

# calib >= 20 healthy scans so a 5 % scan threshold can be calibrated; val and test 20 + 20 so sample-level
# differences between methods can be resolved. Scans are seeded by (seed, split, label, index): growing a split
# adds scans and leaves the existing ones byte-identical.
FULL_COUNTS = {"train": (24, 0), "calib": (24, 0), "val": (20, 20), "test": (20, 20)}
SMALL_COUNTS = {"train": (1, 0), "test": (1, 1)}
# (split, label, index) -> storage orientation; everything else is RAS.
FULL_ORIENT = {("train", 0, 0): "LPS", ("val", 0, 0): "permuted", ("test", 0, 0): "oblique",
               ("test", 1, 0): "LPS"}
SMALL_ORIENT = {("test", 0, 0): "oblique", ("test", 1, 0): "LPS"}
# DICOM copies: (split, label, index, slice plane of the DICOM stack).
# RLE keeps the committed size down and makes a reader handle one compressed syntax.
FULL_DICOM = [("test", 0, 1, "axial", None), ("test", 1, 1, "axial", "rle"), ("test", 1, 2, "sagittal", "rle")]
SMALL_DICOM = [("test", 1, 0, "sagittal", "rle")]


@dataclass
class Template:
    t1: np.ndarray
    wm: np.ndarray
    brain: np.ndarray  # float, partial-volume brain fraction
    inv_affine: np.ndarray


def _nilearn_data_dir() -> Path:
    try:
        import nilearn
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit("nilearn is needed to build sample data: pip install 'medidiff[data]'") from exc
    return Path(nilearn.__file__).parent / "datasets" / "data"


@lru_cache(maxsize=4)
def load_template(spacing_mm: float) -> Template:
    """Template at a working resolution about half the output spacing,
    smoothed so resampling to ``spacing_mm`` does not alias."""
    d = _nilearn_data_dir()
    t1_img = nib.load(str(d / TEMPLATE_FILES["t1"]))
    t1 = np.asarray(t1_img.dataobj, dtype=np.float32)
    wm = np.asarray(nib.load(str(d / TEMPLATE_FILES["wm"])).dataobj, dtype=np.float32) / 255.0
    brain = (t1 > 0).astype(np.float32)
    affine = t1_img.affine.copy()
    factor = max(1, int(spacing_mm // 2))
    if factor > 1:  # block-average: cheap and anti-aliased
        crop = tuple(slice(0, (s // factor) * factor) for s in t1.shape)

        def block(a: np.ndarray) -> np.ndarray:
            a = a[crop]
            sh = [s // factor for s in a.shape]
            return a.reshape(sh[0], factor, sh[1], factor, sh[2], factor).mean(axis=(1, 3, 5))

        t1, wm, brain = block(t1), block(wm), block(brain)
        scale = np.diag([factor, factor, factor, 1.0])
        affine = affine @ scale
        affine[:3, 3] += affine[:3, :3] @ np.full(3, (factor - 1) / (2 * factor))  # block centres
    src_res = float(np.linalg.norm(affine[:3, 0]))
    sigma = 0.42 * spacing_mm / src_res * 0.5
    t1 = ndi.gaussian_filter(t1, sigma)
    return Template(t1, wm, brain, np.linalg.inv(affine))


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def scan_grid(spacing: float, orientation: str, rng: np.random.Generator) -> tuple[tuple[int, ...], np.ndarray]:
    """(shape, RAS affine) of a scan's voxel grid covering the brain."""
    lo = BRAIN_BOX_MM[0] - MARGIN_MM + rng.uniform(-spacing / 2, spacing / 2, 3)
    extent = BRAIN_BOX_MM[1] - BRAIN_BOX_MM[0] + 2 * MARGIN_MM
    shape = np.ceil(extent / spacing).astype(int) + 1
    ras = np.eye(4)
    ras[:3, :3] = np.diag([spacing] * 3)
    ras[:3, 3] = lo
    if orientation == "RAS":
        return tuple(int(s) for s in shape), ras
    if orientation == "LPS":
        flip = np.eye(4)
        flip[0, 0] = flip[1, 1] = -1
        flip[0, 3], flip[1, 3] = shape[0] - 1, shape[1] - 1
        return tuple(int(s) for s in shape), ras @ flip
    if orientation == "permuted":
        # new (a, b, c) -> old (i, j, k) = (c, a, nz - 1 - b): stored as A, I, R.
        perm = np.zeros((4, 4))
        perm[0, 2] = 1
        perm[1, 0] = 1
        perm[2, 1], perm[2, 3] = -1, shape[2] - 1
        perm[3, 3] = 1
        return (int(shape[1]), int(shape[2]), int(shape[0])), ras @ perm
    if orientation == "oblique":
        rot = _rotation(np.deg2rad([12.0, -7.0, 9.0]))
        shape = np.ceil(shape * 1.08).astype(int)
        centre = BRAIN_BOX_MM.mean(axis=0)
        aff = np.eye(4)
        aff[:3, :3] = rot * spacing
        aff[:3, 3] = centre - aff[:3, :3] @ ((shape - 1) / 2.0)
        return tuple(int(s) for s in shape), aff
    raise ValueError(orientation)


def _smooth_field(shape: tuple[int, ...], sigma_vox: float, rng: np.random.Generator) -> np.ndarray:
    # Built at 1/4 resolution then upsampled: same smoothness, far cheaper.
    small = tuple(max(4, s // 4) for s in shape)
    f = ndi.gaussian_filter(rng.standard_normal(small), max(sigma_vox / 4, 0.5), mode="reflect")
    f = ndi.zoom(f, [s / t for s, t in zip(shape, small)], order=1, mode="nearest", grid_mode=True)
    f = f[: shape[0], : shape[1], : shape[2]]
    f = np.pad(f, [(0, s - t) for s, t in zip(shape, f.shape)], mode="edge")
    return f / (np.abs(f).max() + 1e-12)


def sample_subject(tpl: Template, shape: tuple[int, ...], affine: np.ndarray, spacing: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Warped (t1, wm, brain) on the scan grid for one random subject."""
    centre = BRAIN_BOX_MM.mean(axis=0)
    rot = _rotation(np.deg2rad(rng.uniform(-4, 4, 3)))
    scl = np.diag(1.0 + rng.uniform(-0.05, 0.05, 3))
    lin_inv = np.linalg.inv(rot @ scl)
    trans = rng.uniform(-4, 4, 3)
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    world = affine[:3, :3].astype(np.float32) @ ijk + affine[:3, 3:4].astype(np.float32)
    src = lin_inv.astype(np.float32) @ (world - (centre + trans)[:, None].astype(np.float32)) + centre[:, None]
    amp = rng.uniform(1.5, 3.0)
    sigma_vox = 18.0 / spacing
    for ax in range(3):
        src[ax] += (amp * _smooth_field(shape, sigma_vox, rng)).reshape(-1).astype(np.float32)
    vox = tpl.inv_affine[:3, :3].astype(np.float32) @ src + tpl.inv_affine[:3, 3:4].astype(np.float32)
    out = []
    for arr in (tpl.t1, tpl.wm, tpl.brain):
        out.append(ndi.map_coordinates(arr, vox, order=1, mode="constant", cval=0.0).reshape(shape))
    t1, wm, brain = out
    return t1, wm, brain > 0.5


def imaging(t1: np.ndarray, brain: np.ndarray, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Bias field, gamma, gain and Rician noise; background exactly zero."""
    bias = np.exp(rng.uniform(0.10, 0.20) * _smooth_field(t1.shape, 40.0 / spacing, rng))
    x = t1 * bias
    ref = float(np.percentile(x[brain], 99)) or 1.0
    x = np.clip(x / ref, 0, None) ** rng.uniform(0.85, 1.2)
    gain = rng.uniform(300.0, 900.0)
    x = x * gain
    sigma = rng.uniform(0.012, 0.03) * gain
    head = ndi.binary_dilation(brain, iterations=1)
    n1 = rng.standard_normal(x.shape) * sigma
    n2 = rng.standard_normal(x.shape) * sigma
    x = np.where(head, np.sqrt((x + n1) ** 2 + n2 ** 2), 0.0)
    return np.clip(np.round(x), 0, 32767).astype(np.int16)


def _plan(counts: dict[str, tuple[int, int]], seeds: dict[str, int]) -> dict[tuple[str, int, int], list[str]]:
    """Anomaly kinds per anomalous scan, every kind present in each split that
    has at least as many anomalous scans as there are kinds."""
    plan = {}
    for s_i, (split, (_, n_anom)) in enumerate(counts.items()):
        rng = np.random.default_rng([seeds[split], 1000 + s_i])
        firsts = [str(k) for k in rng.permutation(KINDS)]
        for i in range(n_anom):
            n_extra = int(rng.integers(0, 3))
            extra = [str(k) for k in rng.choice(KINDS, size=n_extra)]
            plan[(split, 1, i)] = [firsts[i % len(firsts)]] + extra
    return plan


def _max_gzip() -> None:
    # nibabel gzips at level 1 by default; level 9 saves a few % of the committed size.
    from nibabel.openers import Opener
    Opener.default_compresslevel = 9


def build(out_dir: str | Path, seed: int = 0, *, small: bool = False, spacing: float | None = None,
          counts: dict[str, tuple[int, int]] | None = None, split_seeds: dict[str, int] | None = None,
          log=print) -> list[dict]:
    """``split_seeds`` overrides ``seed`` for whole splits (e.g. ``{"test": 1}``): the other splits keep
    their arrays, so a split that settings were once tuned on can be replaced by a fresh one."""
    out_dir = Path(out_dir)
    spacing = float(spacing if spacing is not None else (4.0 if small else 2.0))
    counts = counts or (SMALL_COUNTS if small else FULL_COUNTS)
    orient = SMALL_ORIENT if small else FULL_ORIENT
    dicom_plan = SMALL_DICOM if small else FULL_DICOM
    _max_gzip()
    tpl = load_template(spacing)
    seeds = {split: (split_seeds or {}).get(split, seed) for split in counts}
    plan = _plan(counts, seeds)
    rows: list[dict] = []
    lesions: dict[str, list] = {}
    volumes: dict[tuple[str, int, int], tuple[Volume, np.ndarray | None, str]] = {}
    for s_i, (split, (n_h, n_a)) in enumerate(counts.items()):
        for label, n in ((0, n_h), (1, n_a)):
            for i in range(n):
                t0 = time.time()
                rng = np.random.default_rng([seeds[split], s_i, label, i])
                scan_id = f"{split}_{'a' if label else 'h'}{i:02d}"
                orientation = orient.get((split, label, i), "RAS")
                shape, affine = scan_grid(spacing, orientation, rng)
                t1, wm, brain = sample_subject(tpl, shape, affine, spacing, rng)
                kinds: list[str] = []
                mask = None
                infos: list[dict] = []
                if label:
                    kinds = plan[(split, label, i)]
                    # Lesions in tissue only: a "lesion" filling a ventricle is not what we want to test.
                    tissue = brain & (t1 > 0.5 * float(np.median(t1[brain])))
                    t1, mask, infos = insert_anomalies(t1, (spacing,) * 3, kinds, rng,
                                                       brain_mask=tissue, wm_prob=wm)
                img = imaging(t1, brain, spacing, rng)
                rel = Path(split) / f"{scan_id}.nii.gz"
                vol = Volume(img, affine, Provenance(format="synthetic", scan_id=scan_id))
                write_nifti(vol, out_dir / rel, dtype=np.int16)
                mask_rel = ""
                if split in ("val", "test"):  # healthy scans get an empty mask: pooled voxel metrics need one
                    mask_rel = str(Path("masks") / split / f"{scan_id}_mask.nii.gz")
                    m = mask if mask is not None else np.zeros(shape, np.uint8)
                    write_nifti(m.astype(np.uint8), out_dir / mask_rel, like=vol, dtype=np.uint8)
                vol_mm3 = float(mask.sum()) * spacing ** 3 if mask is not None else 0.0
                rows.append({
                    "scan_id": scan_id, "split": split, "path": str(rel), "label": label,
                    "mask_path": mask_rel, "anomaly_types": ";".join(kinds),
                    "lesion_volume_mm3": f"{vol_mm3:.1f}", "n_anomalies": len(kinds),
                    "orientation": "".join(nib.aff2axcodes(affine)) + ("-oblique" if orientation == "oblique" else ""),
                    "shape": "x".join(str(s) for s in shape), "spacing_mm": f"{spacing:g}",
                })
                if infos:
                    lesions[scan_id] = [_jsonable(d) for d in infos]
                volumes[(split, label, i)] = (vol, mask, scan_id)
                log(f"{scan_id:10s} {orientation:8s} {'x'.join(map(str, shape)):>10s} "
                    f"{';'.join(kinds) or 'healthy':32s} {time.time() - t0:.1f}s")

    dicom_rows = []
    for j, (split, label, i, plane, compression) in enumerate(dicom_plan):
        if (split, label, i) not in volumes:
            continue
        vol, mask, scan_id = volumes[(split, label, i)]
        arr, aff = vol.array, vol.affine
        m = mask if mask is not None else np.zeros(vol.shape, np.uint8)
        if plane == "sagittal":  # slices along R-L: put the x axis last
            arr, m = np.transpose(arr, (1, 2, 0)), np.transpose(m, (1, 2, 0))
            aff = aff @ np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]])
        dvol = Volume(arr, aff, Provenance(format="synthetic", scan_id=scan_id))
        name = f"{scan_id}_{plane}"
        write_dicom_series(dvol, out_dir / "test_dicom" / name, modality="MR",
                           series_description=f"medidiff sample {name}", patient_id=f"SAMPLE{j + 1:02d}",
                           rng_or_seed=np.random.default_rng([seeds[split], 5000 + j]), series_number=j + 1,
                           file_names="random", compression=compression)
        mask_rel = str(Path("masks") / "test_dicom" / f"{name}_mask.nii.gz")
        write_nifti(m.astype(np.uint8), out_dir / mask_rel, like=dvol, dtype=np.uint8)
        dicom_rows.append({"name": name, "dicom_dir": f"test_dicom/{name}", "source_scan_id": scan_id,
                           "label": label, "mask_path": mask_rel,
                           "anomaly_types": next(r["anomaly_types"] for r in rows if r["scan_id"] == scan_id),
                           "slice_plane": plane, "n_slices": dvol.shape[2],
                           "transfer_syntax": "RLELossless" if compression else "ExplicitVRLittleEndian"})

    _write_csv(out_dir / "labels.csv", rows)
    if dicom_rows:
        _write_csv(out_dir / "test_dicom.csv", dicom_rows)
    write_text_atomic(out_dir / "lesions.json", json.dumps(lesions, indent=1, sort_keys=True) + "\n")
    return rows


def _jsonable(info: dict) -> dict:
    out = {}
    for k, v in info.items():
        if isinstance(v, (np.floating, float)):
            out[k] = round(float(v), 3)
        elif isinstance(v, (list, tuple)):
            out[k] = [round(float(x), 3) if isinstance(x, (float, np.floating)) else int(x) for x in v]
        elif isinstance(v, (np.integer,)):
            out[k] = int(v)
        else:
            out[k] = v
    return out


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "sample_data"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--small", action="store_true", help="3 scans at 4 mm (for tests)")
    ap.add_argument("--spacing", type=float, default=None, help="voxel size in mm (default 2, or 4 with --small)")
    ap.add_argument("--split-seed", action="append", default=[], metavar="SPLIT=SEED",
                    help="seed of one split instead of --seed (repeatable); the shipped sample_data uses test=1")
    args = ap.parse_args(argv)
    split_seeds = {}
    for item in args.split_seed:
        split, _, value = item.partition("=")
        if not value.lstrip("-").isdigit():
            ap.error(f"--split-seed {item!r}: expected SPLIT=INTEGER, e.g. test=1")
        split_seeds[split] = int(value)
    t0 = time.time()
    rows = build(args.out, args.seed, small=args.small, spacing=args.spacing, split_seeds=split_seeds)
    print(f"wrote {len(rows)} scans to {args.out} in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
