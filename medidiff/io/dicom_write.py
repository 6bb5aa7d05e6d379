"""Write a :class:`~medidiff.volume.Volume` as a classic single-frame DICOM series.

Geometry convention (the one nibabel and dcm2niix use, so a standard reader
rebuilds the same grid):

* ``A_lps = diag(-1, -1, 1, 1) @ A_ras`` (DICOM patient space is LPS).
* Slice ``k`` of the array is file ``k`` (InstanceNumber ``k + 1``).
* DICOM column index ``c`` is array axis 0 (``i``), row index ``r`` is array
  axis 1 (``j``): ``PixelData[r, c] = array[c, r, k]``.
* So ImageOrientationPatient = (A_lps[:, 0] / |.|, A_lps[:, 1] / |.|),
  PixelSpacing = (|A[:, 1]|, |A[:, 0]|) (row spacing first), and
  ImagePositionPatient of slice k = A_lps @ (0, 0, k, 1).

A reader that sorts slices along ``cross(row, col)`` gets the array back with
axis 2 possibly reversed (when the volume's third axis points against that
normal); the world position of every voxel is the same either way.

Pixel data are int16 with RescaleSlope / RescaleIntercept chosen from the data
range: integer data that fit int16 are stored exactly (slope 1); otherwise
non-negative data use 0..32767 (so zero stays exactly zero) and signed data
use the full int16 range.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, RLELossless, generate_uid
from pydicom.valuerep import DSfloat

from ..volume import LPS_TO_RAS, Volume
from .atomic import atomic_path

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_SOP_CLASS = {"MR": MR_IMAGE_STORAGE, "CT": CT_IMAGE_STORAGE}
_FIXED_DATE = "20000101"  # used when a seed is given, so output bytes are reproducible
_FIXED_TIME = "120000"


def _ds(value: float) -> DSfloat:
    # DS is limited to 16 characters; auto_format picks the most precise form that fits.
    return DSfloat(float(value), auto_format=True)


def rescale_for(array: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) mapping the data range onto int16, both exactly
    representable as DICOM DS strings (stored values are computed from the
    written strings, so the round trip uses the same numbers a reader sees)."""
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return 1.0, 0.0
    lo, hi = float(finite.min()), float(finite.max())
    if lo >= -32768 and hi <= 32767 and np.all(finite == np.round(finite)):
        return 1.0, 0.0
    if lo >= 0:
        slope, intercept = (hi / 32767.0 if hi > 0 else 1.0), 0.0
    else:
        slope = (hi - lo) / 65534.0 if hi > lo else 1.0
        intercept = (hi + lo) / 2.0
    # Round the slope *up* in DS form so the extreme values still fit.
    slope_ds = float(_ds(slope))
    if slope_ds < slope:
        slope_ds = float(_ds(slope * (1 + 1e-9)))
    return slope_ds, float(_ds(intercept))


def _geometry(affine_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float, np.ndarray]:
    a = LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)  # same matrix maps RAS -> LPS
    col_step, row_step, slice_step = a[:3, 0], a[:3, 1], a[:3, 2]
    dc, dr = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
    row_dir, col_dir = col_step / dc, row_step / dr
    if abs(float(np.dot(row_dir, col_dir))) > 1e-4:
        raise ValueError("the volume's first two axes are not orthogonal; DICOM in-plane axes must be")
    normal = np.cross(row_dir, col_dir)
    return a, row_dir, col_dir, dr, dc, normal


def write_dicom_series(volume: Volume, out_dir: str | os.PathLike, *, modality: str = "MR",
                       series_description: str = "medidiff export",
                       patient_id: str = "ANON", patient_name: str = "Anonymous^Sample",
                       study_uid: str | None = None, series_uid: str | None = None,
                       derived: bool = False, rng_or_seed: np.random.Generator | int | None = None,
                       series_number: int = 1, file_names: str = "sequential",
                       compression: str | None = None) -> list[Path]:
    """Write one classic MR/CT Image Storage file per slice into ``out_dir``.

    ``rng_or_seed`` makes the output reproducible: UIDs are derived from it
    (instead of fresh random ones), dates are fixed, and with
    ``file_names="random"`` the file names are random hex strings (as PACS
    exports often look). ``file_names="sequential"`` gives ``IM0001`` ...
    ``compression="rle"`` stores RLE Lossless (decoded natively by pydicom,
    ~3x smaller on skull-stripped data); default is uncompressed Explicit VR
    Little Endian. Returns the written paths in slice order (index ``k``).
    """
    modality = modality.upper()
    if modality not in _SOP_CLASS:
        raise ValueError(f"modality must be one of {sorted(_SOP_CLASS)}, got {modality!r}")
    if compression not in (None, "rle"):
        raise ValueError("compression must be None or 'rle'")
    if file_names not in ("sequential", "random"):
        raise ValueError("file_names must be 'sequential' or 'random'")
    rng = None
    if rng_or_seed is not None:
        rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)

    def uid() -> str:
        if rng is None:
            return generate_uid()
        return generate_uid(entropy_srcs=[str(int(rng.integers(0, 2**63)))])

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = np.asarray(volume.array, dtype=np.float64)
    a, row_dir, col_dir, dr, dc, normal = _geometry(volume.affine)
    nk = data.shape[2]
    slice_gap = abs(float(np.dot(a[:3, 2], normal)))

    slope, intercept = rescale_for(data)
    stored = np.round((np.nan_to_num(data) - intercept) / slope)
    stored = np.clip(stored, -32768, 32767).astype(np.int16)

    study_uid = study_uid or uid()
    series_uid = series_uid or uid()
    frame_uid = uid()
    if rng is None:
        now = _dt.datetime.now()
        date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    else:
        date, time = _FIXED_DATE, _FIXED_TIME
    if derived:
        image_type = ["DERIVED", "SECONDARY", "OTHER"]
        if "synthetic" not in series_description.lower():
            series_description = f"{series_description} (synthetic)"
    else:
        image_type = ["ORIGINAL", "PRIMARY", "OTHER"]
    sop_class = _SOP_CLASS[modality]
    if file_names == "random":
        name_rng = rng if rng is not None else np.random.default_rng()
        # A list, not a set: set order depends on the per-process string hash seed.
        name_list: list[str] = []
        while len(name_list) < nk:
            name = "".join(name_rng.choice(list("0123456789ABCDEF"), size=8))
            if name not in name_list:
                name_list.append(name)
    else:
        name_list = [f"IM{k + 1:04d}" for k in range(nk)]

    window_lo, window_hi = np.percentile(data, [0.5, 99.5]) if data.size else (0.0, 1.0)
    paths: list[Path] = []
    for k in range(nk):
        ipp = a[:3, :3] @ np.array([0.0, 0.0, float(k)]) + a[:3, 3]
        sop_uid = uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = image_type
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
        ds.AccessionNumber = ""
        ds.Modality = modality
        ds.Manufacturer = "medidiff"
        ds.ReferringPhysicianName = ""
        ds.SeriesDescription = series_description[:64]
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.PatientIdentityRemoved = "YES"
        ds.BurnedInAnnotation = "NO"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [_ds(v) for v in ipp]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
        ds.SliceLocation = _ds(float(np.dot(normal, ipp)))
        ds.PixelSpacing = [_ds(dr), _ds(dc)]
        ds.SliceThickness = _ds(slice_gap)
        ds.SpacingBetweenSlices = _ds(slice_gap)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = int(data.shape[1])
        ds.Columns = int(data.shape[0])
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleSlope = _ds(slope)
        ds.WindowCenter = _ds((window_lo + window_hi) / 2)
        ds.WindowWidth = _ds(max(window_hi - window_lo, 1e-3))
        if modality == "MR":
            ds.ScanningSequence = "RM"  # research mode: no real acquisition behind it
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "3D"
            ds.EchoTime = ""
            ds.RepetitionTime = ""
            ds.EchoTrainLength = ""
        else:
            ds.RescaleType = "HU"
            ds.KVP = ""
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<i2").tobytes()
        if compression == "rle":
            ds.compress(RLELossless, generate_instance_uid=False)  # lossless: keep our (seeded) UID
        path = out_dir / name_list[k]
        with atomic_path(path, suffix="") as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        paths.append(path)
    return paths

