"""Builders for the fault-injection suite: every bad input is generated on the fly.

:func:`build_fault_folder` writes a folder mixing good scans with every kind of
bad file the issue lists and returns what a correct run must report for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from dicom_factory import AXIAL, regular_positions, write_series

ROOT = Path(__file__).resolve().parents[2]
HOSTILE_PATIENT_ID = "../../etc/passwd;rm -rf ~ $(touch pwned) `id` ü€漢"
# A NIfTI whose *file name* is hostile (shell metacharacters, Unicode, spaces).
HOSTILE_NIFTI_NAME = "sub ü;$(touch pwned)`id`漢.nii.gz"


def blob(shape, value=500.0, seed=0) -> np.ndarray:
    """A bright ellipsoid on a dark background plus noise: has a foreground."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    r2 = sum(g * g for g in grids)
    return np.where(r2 < 0.55, value, 0.0).astype(np.float32) + rng.normal(0, 5, shape).astype(np.float32)


def save_nifti(path: Path, data: np.ndarray, spacing=4.0, dtype=np.int16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data).astype(dtype), np.diag([spacing, spacing, spacing, 1.0])), str(path))
    return path


def write_dicom_series(folder: Path, *, n=8, modality="MR", positions=None, **kw) -> list[Path]:
    stored = np.clip(blob((16, 16, n), value=600, seed=n), 0, None).astype(np.int16)
    if positions is None:
        positions = regular_positions((0.0, 0.0, 0.0), AXIAL, 4.0, n)
    with warnings.catch_warnings():  # pydicom: Unicode PatientID without SpecificCharacterSet
        warnings.simplefilter("ignore", UserWarning)
        return write_series(folder, stored, positions, AXIAL, (4.0, 4.0), modality=modality, **kw)


@dataclass
class FaultFolder:
    root: Path
    good_nifti: list[str] = field(default_factory=list)  # scan ids
    good_dicom_dirs: list[Path] = field(default_factory=list)
    # file (or series folder) -> substring the reason must contain, for files refused at discovery
    refused: dict[str, str] = field(default_factory=dict)
    # scan source -> substring of the failure, for scans found but refused when loaded/scored
    failing: dict[str, str] = field(default_factory=dict)
    incomplete_series: Path | None = None

    @property
    def n_bad_cases(self) -> int:
        return len(self.refused) + len(self.failing) + 1  # + the incomplete (end-slice) series


def build_fault_folder(root: Path) -> FaultFolder:
    root.mkdir(parents=True, exist_ok=True)
    ff = FaultFolder(root)
    # ---- good scans
    save_nifti(root / "good.nii.gz", blob((20, 22, 18)))
    save_nifti(root / "deep" / "nested" / HOSTILE_NIFTI_NAME, blob((18, 18, 18), seed=1))
    ff.good_nifti = ["good"]  # + the hostile-named one (id is sanitized + hashed)
    write_dicom_series(root / "dcm_good", patient_id=HOSTILE_PATIENT_ID, patient_name="Döe^Jäne")
    ff.good_dicom_dirs.append(root / "dcm_good")

    # ---- refused at discovery, each with its specific reason
    def refuse(p: Path, why: str) -> None:
        ff.refused[str(p)] = why

    nib.save(nib.Nifti1Image(np.ones((6, 7, 8, 2), np.float32), np.eye(4)), str(root / "fourd.nii.gz"))
    refuse(root / "fourd.nii.gz", "4D image")
    nib.save(nib.Nifti1Image(np.ones((6, 7), np.float32), np.eye(4)), str(root / "flat.nii"))
    refuse(root / "flat.nii", "2D image")
    # a header claiming 4000³ voxels (256 GB as float32) in a 400-byte file
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.float32)
    hdr.set_data_shape((4000, 4000, 4000))
    hdr.set_zooms((1.0, 1.0, 1.0))
    hdr.set_sform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    (root / "huge.nii").write_bytes(hdr.binaryblock + b"\0" * 4 + b"\0" * 64)
    refuse(root / "huge.nii", "over the limit")
    # gzip with a broken stream (bytes overwritten inside the deflate data)
    blob_gz = bytearray((root / "good.nii.gz").read_bytes())
    blob_gz[40:80] = b"\xff" * 40
    (root / "brokengz.nii.gz").write_bytes(bytes(blob_gz))
    refuse(root / "brokengz.nii.gz", "corrupt gzip stream")
    (root / "notes.txt").write_text("scan notes")
    refuse(root / "notes.txt", "not a scan file")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    refuse(root / "image.png", "not a scan file")
    (root / "zero").write_bytes(b"")
    refuse(root / "zero", "empty file")
    (root / "random.dcm").write_bytes(os.urandom(600))
    refuse(root / "random.dcm", "not a DICOM file")
    (root / "loop").symlink_to(root, target_is_directory=True)
    refuse(root / "loop", "already visited")
    (root / "dangling.nii.gz").symlink_to(root / "nowhere.nii.gz")
    refuse(root / "dangling.nii.gz", "broken symlink")
    # truncated DICOM slice in the middle of a series: that file, and the series (gap)
    paths = write_dicom_series(root / "dcm_trunc")
    mid = paths[3]
    mid.write_bytes(mid.read_bytes()[:-200])
    refuse(mid, "truncated")
    for p in paths:
        if p != mid:
            refuse(p, "missing slice")
    # DICOM slice without its pixel data element
    paths = write_dicom_series(root / "dcm_nopix")
    ds = pydicom.dcmread(paths[2])
    del ds.PixelData
    ds.save_as(paths[2])
    refuse(paths[2], "without a pixel data element")
    for p in paths:
        if p != paths[2]:
            refuse(p, "missing slice")
    # duplicate slice positions
    pos = regular_positions((0.0, 0.0, 0.0), AXIAL, 4.0, 8)
    pos[4] = pos[3]
    for p in write_dicom_series(root / "dcm_dup", positions=pos):
        refuse(p, "duplicate slice position")
    # a missing slice (gap)
    pos = regular_positions((0.0, 0.0, 0.0), AXIAL, 4.0, 9)
    for p in write_dicom_series(root / "dcm_gap", positions=pos[:4] + pos[5:], n=8):
        refuse(p, "missing slice")
    # series whose last slice (by position) is truncated: scored, with an "incomplete" warning
    paths = write_dicom_series(root / "dcm_trunc_end", series_number=9)
    last = paths[-1]
    last.write_bytes(last.read_bytes()[:-200])
    refuse(last, "truncated")
    ff.incomplete_series = root / "dcm_trunc_end"

    # ---- found by discovery, refused when loaded or scored
    nan = np.full((10, 10, 10), np.nan, np.float32)
    nan[0, 0, 0] = np.inf
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(root / "nan.nii.gz"))
    ff.failing[str(root / "nan.nii.gz")] = "NaN/Inf"
    save_nifti(root / "zeros.nii.gz", np.zeros((12, 12, 12)), dtype=np.float32)
    ff.failing[str(root / "zeros.nii.gz")] = "constant image"
    good = (root / "good.nii.gz").read_bytes()
    (root / "cut.nii.gz").write_bytes(good[: len(good) // 2])
    ff.failing[str(root / "cut.nii.gz")] = "truncated"
    save_nifti(root / "cut_raw.nii", blob((20, 20, 20)))
    raw = (root / "cut_raw.nii").read_bytes()
    (root / "cut_raw.nii").write_bytes(raw[: len(raw) // 2])
    ff.failing[str(root / "cut_raw.nii")] = "truncated"
    return ff


# ----------------------------------------------------------------------------- subprocesses

def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(MEDIDIFF_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def start_cli(args: list[str], log: Path, **env: str) -> subprocess.Popen:
    fh = open(log, "wb")
    return subprocess.Popen([sys.executable, "-m", "medidiff.cli", *args], stdout=fh, stderr=subprocess.STDOUT,
                            env=child_env(**env), cwd=str(ROOT), start_new_session=True)


def wait_for(predicate, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    t0 = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process ended (rc={proc.returncode}) before the condition held:\n"
                                 + log.read_text(errors="replace")[-3000:])
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"timed out after {timeout}s:\n" + log.read_text(errors="replace")[-3000:])
        time.sleep(0.02)
