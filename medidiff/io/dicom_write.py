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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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


def _check_options(modality: str, compression: str | None, file_names: str) -> str:
    """Refuse unknown options before anything is written; returns the modality upper-cased."""
    modality = modality.upper()
    if modality not in _SOP_CLASS:
        raise ValueError(f"modality must be one of {sorted(_SOP_CLASS)}, got {modality!r}")
    if compression not in (None, "rle"):
        raise ValueError("compression must be None or 'rle'")
    if file_names not in ("sequential", "random"):
        raise ValueError("file_names must be 'sequential' or 'random'")
    return modality


def _uid_maker(rng: np.random.Generator | None) -> Callable[[], str]:
    """Fresh random UIDs, or UIDs drawn from ``rng`` so a seeded export is reproducible."""
    def uid() -> str:
        if rng is None:
            return generate_uid()
        return generate_uid(entropy_srcs=[str(int(rng.integers(0, 2**63)))])

    return uid


def _stored_int16(data: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(slope, intercept, int16 pixel values) such that value = stored * slope + intercept."""
    slope, intercept = rescale_for(data)
    stored = np.round((np.nan_to_num(data) - intercept) / slope)
    return slope, intercept, np.clip(stored, -32768, 32767).astype(np.int16)


def _date_time(rng: np.random.Generator | None) -> tuple[str, str]:
    """Now, or a fixed date and time when seeded (reproducible bytes)."""
    if rng is None:
        now = _dt.datetime.now()
        return now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    return _FIXED_DATE, _FIXED_TIME


def _image_type(derived: bool, series_description: str) -> tuple[list[str], str]:
    """ImageType and a series description that says "synthetic" for derived images."""
    if derived:
        if "synthetic" not in series_description.lower():
            series_description = f"{series_description} (synthetic)"
        return ["DERIVED", "SECONDARY", "OTHER"], series_description
    return ["ORIGINAL", "PRIMARY", "OTHER"], series_description


def _slice_file_names(file_names: str, n_slices: int, rng: np.random.Generator | None) -> list[str]:
    """``IM0001`` ... or distinct random 8-digit hex names (as PACS exports often look)."""
    if file_names != "random":
        return [f"IM{k + 1:04d}" for k in range(n_slices)]
    name_rng = rng if rng is not None else np.random.default_rng()
    # A list, not a set: set order depends on the per-process string hash seed.
    name_list: list[str] = []
    while len(name_list) < n_slices:
        name = "".join(name_rng.choice(list("0123456789ABCDEF"), size=8))
        if name not in name_list:
            name_list.append(name)
    return name_list


@dataclass(frozen=True)
class _Series:
    """What every slice file of one series shares."""

    modality: str
    sop_class: str
    image_type: list[str]
    date: str
    time: str
    series_description: str
    patient_name: str
    patient_id: str
    study_uid: str
    series_uid: str
    frame_uid: str
    series_number: int
    a_lps: np.ndarray
    row_dir: np.ndarray
    col_dir: np.ndarray
    row_spacing: float
    col_spacing: float
    normal: np.ndarray
    slice_gap: float
    rows: int
    columns: int
    slope: float
    intercept: float
    window_lo: float
    window_hi: float


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _set_identity(ds: Dataset, s: _Series, sop_uid: str, k: int) -> None:
    """SOP, dates, patient (anonymised), study and series attributes of slice ``k``."""
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = s.image_type
    ds.SOPClassUID = s.sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = s.date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = s.time
    ds.AccessionNumber = ""
    ds.Modality = s.modality
    ds.Manufacturer = "medidiff"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = s.series_description[:64]
    ds.PatientName = s.patient_name
    ds.PatientID = s.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientIdentityRemoved = "YES"
    ds.BurnedInAnnotation = "NO"
    ds.StudyInstanceUID = s.study_uid
    ds.SeriesInstanceUID = s.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = s.series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = k + 1


def _set_geometry(ds: Dataset, s: _Series, k: int) -> None:
    """Frame of reference, position and orientation of slice ``k`` (see the module docstring)."""
    ipp = s.a_lps[:3, :3] @ np.array([0.0, 0.0, float(k)]) + s.a_lps[:3, 3]
    ds.FrameOfReferenceUID = s.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [_ds(v) for v in ipp]
    ds.ImageOrientationPatient = [_ds(v) for v in (*s.row_dir, *s.col_dir)]
    ds.SliceLocation = _ds(float(np.dot(s.normal, ipp)))
    ds.PixelSpacing = [_ds(s.row_spacing), _ds(s.col_spacing)]
    ds.SliceThickness = _ds(s.slice_gap)
    ds.SpacingBetweenSlices = _ds(s.slice_gap)


def _set_pixel_module(ds: Dataset, s: _Series, pixels: np.ndarray) -> None:
    """Image pixel attributes, rescale, display window and the int16 pixel data of one slice."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = s.rows
    ds.Columns = s.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = _ds(s.intercept)
    ds.RescaleSlope = _ds(s.slope)
    ds.WindowCenter = _ds((s.window_lo + s.window_hi) / 2)
    ds.WindowWidth = _ds(max(s.window_hi - s.window_lo, 1e-3))
    _set_modality_fields(ds, s.modality)
    ds.PixelData = np.ascontiguousarray(pixels.T).astype("<i2").tobytes()


def _set_modality_fields(ds: Dataset, modality: str) -> None:
    """Type-2 attributes the MR or CT Image module requires (empty: no real acquisition)."""
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


def _slice_dataset(s: _Series, sop_uid: str, k: int, pixels: np.ndarray) -> Dataset:
    """The complete dataset of slice ``k``."""
    ds = Dataset()
    ds.file_meta = _file_meta(s.sop_class, sop_uid)
    _set_identity(ds, s, sop_uid, k)
    _set_geometry(ds, s, k)
    _set_pixel_module(ds, s, pixels)
    return ds


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
    modality = _check_options(modality, compression, file_names)
    rng = None
    if rng_or_seed is not None:
        rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    uid = _uid_maker(rng)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = np.asarray(volume.array, dtype=np.float64)
    a, row_dir, col_dir, dr, dc, normal = _geometry(volume.affine)
    nk = data.shape[2]
    slope, intercept, stored = _stored_int16(data)
    # UIDs are drawn in this order (study, series, frame, file names, one per slice): seeded output depends on it.
    study_uid = study_uid or uid()
    series_uid = series_uid or uid()
    frame_uid = uid()
    date, time = _date_time(rng)
    image_type, series_description = _image_type(derived, series_description)
    name_list = _slice_file_names(file_names, nk, rng)
    window_lo, window_hi = np.percentile(data, [0.5, 99.5]) if data.size else (0.0, 1.0)
    series = _Series(modality=modality, sop_class=_SOP_CLASS[modality], image_type=image_type, date=date, time=time,
                     series_description=series_description, patient_name=patient_name, patient_id=patient_id,
                     study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid, series_number=series_number,
                     a_lps=a, row_dir=row_dir, col_dir=col_dir, row_spacing=dr, col_spacing=dc, normal=normal,
                     slice_gap=abs(float(np.dot(a[:3, 2], normal))), rows=int(data.shape[1]),
                     columns=int(data.shape[0]), slope=slope, intercept=intercept,
                     window_lo=window_lo, window_hi=window_hi)

    paths: list[Path] = []
    for k in range(nk):
        ds = _slice_dataset(series, uid(), k, stored[:, :, k])
        if compression == "rle":
            ds.compress(RLELossless, generate_instance_uid=False)  # lossless: keep our (seeded) UID
        path = out_dir / name_list[k]
        with atomic_path(path, suffix="") as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        paths.append(path)
    return paths
