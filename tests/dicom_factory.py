"""Test-only builder of DICOM files with exact, arbitrary geometry.

Each slice k of ``array`` (shape cols × rows × n, i.e. medidiff's (i, j, k)
order) is written as one classic MR/CT file whose ImagePositionPatient comes
from ``positions[k]`` — so tests can create tilted, gapped, duplicated or
shuffled series and check the reader against the geometry they asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def make_slice(pixels_rc: np.ndarray, ipp, iop, pixel_spacing, *, series_uid, study_uid,
               modality="MR", slope=1.0, intercept=0.0, instance=1, image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
               patient_id="TEST^ID", patient_name="Test^Patient", series_number=7, description="test series", frame_uid=None):
    meta = FileMetaDataset()
    sop_class = CT_STORAGE if modality == "CT" else MR_STORAGE
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid or study_uid
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance
    ds.SeriesDescription = description
    ds.ImageType = list(image_type)
    ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
    ds.PixelSpacing = [f"{v:.6f}" for v in pixel_spacing]
    ds.SliceThickness = 1.0
    ds.Rows, ds.Columns = pixels_rc.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = f"{slope:.8g}"
    ds.RescaleIntercept = f"{intercept:.8g}"
    ds.PixelData = pixels_rc.astype(np.int16).tobytes()
    return ds


def write_series(folder: Path, stored: np.ndarray, positions, iop, pixel_spacing, *, names=None,
                 modality="MR", slopes=None, intercepts=None, series_uid=None, study_uid=None, **kw) -> list[Path]:
    """``stored`` is int16 of shape (cols, rows, n) in medidiff's (i, j, k) order."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    n = stored.shape[2]
    kw.setdefault("frame_uid", generate_uid())
    paths = []
    for k in range(n):
        ds = make_slice(stored[:, :, k].T, positions[k], iop, pixel_spacing, series_uid=series_uid,
                        study_uid=study_uid, modality=modality,
                        slope=1.0 if slopes is None else slopes[k],
                        intercept=0.0 if intercepts is None else intercepts[k], instance=n - k, **kw)
        name = names[k] if names is not None else f"slice{k:03d}"
        p = folder / name
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def regular_positions(origin, iop, step_mm, n, tilt_shift=(0.0, 0.0, 0.0)):
    row = np.asarray(iop[:3], float)
    col = np.asarray(iop[3:], float)
    normal = np.cross(row, col)
    return [np.asarray(origin, float) + k * step_mm * normal + k * np.asarray(tilt_shift) for k in range(n)]


def expected_affine_ras(iop, origin, pixel_spacing, slice_vec):
    a = np.eye(4)
    a[:3, 0] = np.asarray(iop[:3]) * pixel_spacing[1]
    a[:3, 1] = np.asarray(iop[3:]) * pixel_spacing[0]
    a[:3, 2] = slice_vec
    a[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ a


def oblique_iop(deg_x=12.0, deg_z=20.0):
    ax, az = np.radians(deg_x), np.radians(deg_z)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    r = rz @ rx
    return tuple(r[:, 0]) + tuple(r[:, 1])


def pydicom_test_dir() -> Path:
    return Path(pydicom.__file__).parent / "data" / "test_files"


AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def build_messy_folder(root: Path) -> Path:
    """NIfTI + DICOM scans among 4D/2D NIfTI, text, PNG, empty, fake-DICOM, symlink loop."""
    root.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ones((6, 7, 8), np.int16), np.diag([-1.0, -1.0, 1.0, 1.0])), root / "lps.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((6, 7, 8, 2), np.float32), np.eye(4)), root / "fourd.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((6, 7), np.float32), np.eye(4)), root / "flat.nii")
    series = root / "patient" / "study" / "series"
    write_series(series, np.ones((8, 8, 4), np.int16), regular_positions((0, 0, 0), AXIAL, 2.0, 4), AXIAL, (1.0, 1.0),
                 names=["b", "d", "a", "c"])
    (root / "notes.txt").write_text("hello")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "zero").write_bytes(b"")
    (root / "random.dcm").write_bytes(os.urandom(512))
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "dangling").symlink_to(root / "nowhere")
    return root
