"""Build the template files that ship inside medidiff (medidiff/frontend/data/).

Source: the MNI ICBM152 2009a symmetric T1 template and its GM/WM probability maps, which
ship inside the nilearn wheel (1 mm, 197x233x189). They are anti-aliased and resampled
once to 2 mm on the same field of view and stored as uint8 (T1 0..255, probabilities
0..255). Deterministic; rerun only when changing the template:

    python pipelines/make_template.py --out medidiff/frontend/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from medidiff.geometry import resample

NAMES = {"t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
         "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
         "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="medidiff/frontend/data")
    ap.add_argument("--spacing", type=float, default=2.0)
    args = ap.parse_args()
    import nilearn

    src_dir = Path(nilearn.__file__).parent / "datasets" / "data"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for key, name in NAMES.items():
        img = nib.load(src_dir / name)
        src = np.asarray(img.dataobj, dtype=np.float32)
        extent = (np.array(src.shape) - 1) * np.abs(np.diag(img.affine)[:3])
        shape = (np.floor(extent / args.spacing).astype(int) + 1).tolist()
        dst = np.diag([args.spacing] * 3 + [1.0])
        dst[:3, 3] = img.affine[:3, 3]
        arr = resample(src, img.affine, dst, shape, order=1, antialias=True)
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        out_img = nib.Nifti1Image(arr, dst)
        out_img.header.set_xyzt_units("mm")
        out_img.set_qform(dst, code=4)  # MNI152 space
        out_img.set_sform(dst, code=4)
        path = out / f"mni152_2009a_{key}_{int(args.spacing)}mm.nii.gz"
        nib.save(out_img, path)
        print(f"{path}  shape {shape}  {path.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
