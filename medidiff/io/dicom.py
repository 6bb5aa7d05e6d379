"""DICOM series reading: header scan, grouping into 3D stacks, geometry, pixels.

Rules:
* group by SeriesInstanceUID, then split by orientation, matrix size and pixel
  spacing — one UID can hold several stacks (e.g. localizers);
* sort slices by ImagePositionPatient projected on the slice normal, never by
  file name or InstanceNumber;
* spacing comes from the sorted positions; a missing slice, irregular spacing
  or duplicate positions refuse the series with the reason;
* gantry tilt is represented exactly by a sheared affine (slice axis = real
  step between slice origins), not resampled;
* affine built in LPS from IOP/IPP/PixelSpacing and converted to RAS;
* RescaleSlope/Intercept applied per slice; Enhanced (multi-frame) MR/CT read
  from their functional groups.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..volume import LPS_TO_RAS, Provenance, Volume
from .errors import ScanError

# Objects that are never image volumes, by Modality.
NON_VOLUME_MODALITIES = {
    "RTSTRUCT": "RT structure set",
    "RTDOSE": "RT dose",
    "RTPLAN": "RT plan",
    "RTRECORD": "RT treatment record",
    "RTIMAGE": "RT image (2D)",
    "SR": "structured report",
    "SEG": "segmentation object",
    "PR": "presentation state",
    "KO": "key object selection",
    "REG": "registration object",
    "DOC": "encapsulated document",
    "ECG": "waveform",
}
# Objects that are never image slices, by SOP Class (they may share an image series' UID).
NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66": "raw data object",
    "1.2.840.10008.5.1.4.1.1.4.2": "MR spectroscopy object",
    "1.2.840.10008.5.1.4.1.1.11.1": "presentation state",
    "1.2.840.10008.5.1.4.1.1.104.1": "encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.7": "secondary capture (screenshot)",
}
MOSAIC_REASON = ("Siemens mosaic (the slices are tiled in one image), not supported: convert the series with "
                 "dcm2niix and score the NIfTI")
PROJECTION_MODALITIES = {"CR", "DX", "MG", "XA", "RF", "IO", "PX", "OP", "XC", "ES", "GM", "SM", "US"}
MIN_SLICES = 3
# Relative tolerance on slice spacing before a stack counts as irregular.
SPACING_RTOL = 0.02
ORIENTATION_DECIMALS = 4


@dataclass
class SliceHeader:
    path: str
    series_uid: str
    iop: tuple[float, ...]
    ipp: tuple[float, float, float]
    rows: int
    cols: int
    pixel_spacing: tuple[float, float]
    modality: str | None
    series_description: str | None
    series_number: Any
    study_uid: str | None
    patient_id: str | None
    patient_name: str | None
    instance_number: Any = None
    repeat_tags: dict[str, Any] = field(default_factory=dict)  # temporal/echo tags that tell 4D repeats apart


# Tags that distinguish the volumes of a classic 4D (dynamic / multi-echo) series at one slice position.
REPEAT_TAGS = ("TemporalPositionIdentifier", "AcquisitionNumber", "EchoNumbers", "TriggerTime", "DiffusionBValue")


@dataclass
class DicomStack:
    """A sorted, validated 3D stack of single-frame slices, or one enhanced file."""

    series_uid: str
    paths: list[str]
    affine: np.ndarray  # RAS
    shape: tuple[int, int, int]
    modality: str | None
    series_description: str | None
    series_number: Any
    study_uid: str | None
    patient_id: str | None
    patient_name: str | None
    enhanced_frame_order: list[int] | None = None  # frame indices, spatially sorted
    warnings: list[str] = field(default_factory=list)
    stack_index: int = 0

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


def read_header(path: str | os.PathLike):
    """Parse a DICOM header (pixel data deferred, not loaded).

    Files without the 128-byte preamble are accepted only when they start like a
    DICOM data set (group 0x0008/0x0002 tag), so arbitrary binaries are refused.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        return pydicom.dcmread(str(path), defer_size="4 KB")
    except InvalidDicomError:
        with open(path, "rb") as fh:
            head = fh.read(4)
        if len(head) == 4 and head[:2] in (b"\x08\x00", b"\x02\x00") and head[2:4] in (b"\x00\x00", b"\x05\x00", b"\x08\x00", b"\x16\x00", b"\x18\x00", b"\x20\x00"):
            try:
                return pydicom.dcmread(str(path), defer_size="4 KB", force=True)
            except Exception as exc:
                raise ScanError(path, f"unreadable DICOM without preamble ({_first_line(exc)})",
                                "the file is damaged; export it again") from exc
        raise ScanError(path, "not a DICOM file (no DICM preamble) nor NIfTI, ignored",
                        "if it is a scan, convert it to NIfTI or DICOM")
    except (EOFError, OSError) as exc:
        raise ScanError(path, f"truncated or unreadable DICOM header ({_first_line(exc)})",
                        "the file is damaged or incompletely copied; copy it again") from exc
    except Exception as exc:
        raise ScanError(path, f"corrupt DICOM header ({_first_line(exc)})",
                        "the file is damaged; export it again") from exc


def classify(ds, path: str) -> str | None:
    """Return a skip reason for objects that are not slices of a 3D volume, else None."""
    modality = str(ds.get("Modality", "") or "").upper()
    if path.upper().endswith("DICOMDIR") or "DirectoryRecordSequence" in ds:
        return "DICOMDIR index file (the images it lists are read directly)"
    if modality in NON_VOLUME_MODALITIES:
        return f"non-volumetric object: {NON_VOLUME_MODALITIES[modality]} (Modality {modality})"
    if modality in PROJECTION_MODALITIES:
        return f"2D projection image (Modality {modality}), not a volume"
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if sop_class in NON_IMAGE_SOP_CLASSES:
        return f"non-image object: {NON_IMAGE_SOP_CLASSES[sop_class]} (SOP Class {sop_class})"
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "MOSAIC" in image_type or (0x0019, 0x100A) in ds:
        return MOSAIC_REASON
    if "LOCALIZER" in image_type or "SCOUT" in image_type:
        return "localizer/scout image (ImageType LOCALIZER)"
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return "DICOM without a pixel data element (no image in this file; export the images themselves)"
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return f"colour image (SamplesPerPixel={ds.get('SamplesPerPixel')}), not a grayscale volume"
    return None


def slice_geometry(ds) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(IOP, IPP) of a refused file that would have been an image slice, else None: non-image
    objects (raw data, pixel-less files without plane geometry, localizers) are never slices."""
    if str(ds.get("SOPClassUID", "") or "") in NON_IMAGE_SOP_CLASSES:
        return None
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type or "SCOUT" in image_type or "MOSAIC" in image_type:
        return None
    try:
        iop = tuple(float(v) for v in ds.ImageOrientationPatient)
        ipp = tuple(float(v) for v in ds.ImagePositionPatient)
    except (AttributeError, TypeError, ValueError):
        return None
    return (iop, ipp) if len(iop) == 6 and len(ipp) == 3 else None


def missing_from_stack(headers: list[SliceHeader], geometry) -> bool:
    """Is a refused slice (IOP, IPP) absent from this stack (same orientation, a position the
    stack does not have)? Only then does the stack lack it."""
    iop, ipp = geometry
    h0 = headers[0]
    if not np.allclose(np.round(iop, ORIENTATION_DECIMALS), np.round(h0.iop, ORIENTATION_DECIMALS)):
        return False
    _, _, normal = _directions(h0.iop)
    proj = np.array([h.ipp for h in headers], dtype=np.float64) @ normal
    step = float(np.median(np.diff(np.sort(proj)))) if len(proj) > 1 else 1.0
    return bool(np.abs(proj - float(np.asarray(ipp) @ normal)).min() > 0.1 * abs(step))


def _pixel_bytes_ok(ds, path: str) -> str | None:
    """For uncompressed transfer syntaxes, check the file holds all pixel bytes."""
    try:
        ts = ds.file_meta.TransferSyntaxUID
        compressed = ts.is_compressed
    except AttributeError:
        compressed = False
    if compressed:
        return None
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        expected = int(ds.Rows) * int(ds.Columns) * frames * int(ds.BitsAllocated) // 8
    except Exception:
        return "DICOM image without Rows/Columns/BitsAllocated (malformed header; export it again)"
    elem = ds.get_item("PixelData")
    length = getattr(elem, "length", None)  # RawDataElement (possibly deferred)
    if length is None:  # already a DataElement: the bytes pydicom could read
        value = getattr(elem, "value", None)
        length = len(value) if isinstance(value, (bytes, bytearray)) else None
    if length is not None and length != 0xFFFFFFFF and length < expected:
        return (f"file is truncated: pixel data holds {length} bytes, expected {expected} "
                "(damaged or incompletely copied; copy it again)")
    tell = getattr(elem, "value_tell", None)
    if length is not None and tell is not None and tell + min(length, expected) > os.path.getsize(path):
        return "file is truncated: pixel data runs past the end of the file (incompletely copied? copy it again)"
    return None


def is_enhanced(ds) -> bool:
    return int(ds.get("NumberOfFrames", 1) or 1) > 1 and "PerFrameFunctionalGroupsSequence" in ds


def slice_header(ds, path: str) -> SliceHeader:
    """Geometry of a single-frame slice; raises ScanError when geometry is missing."""
    try:
        iop = tuple(float(v) for v in ds.ImageOrientationPatient)
        ipp = tuple(float(v) for v in ds.ImagePositionPatient)
        ps = tuple(float(v) for v in ds.PixelSpacing)
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ScanError(path, "no usable ImagePositionPatient/ImageOrientationPatient/PixelSpacing "
                        "(not a slice of a 3D stack)") from exc
    if len(iop) != 6 or len(ipp) != 3 or len(ps) != 2 or min(ps) <= 0:
        raise ScanError(path, "malformed geometry tags (IOP/IPP/PixelSpacing)")
    return SliceHeader(
        path=path,
        series_uid=str(ds.get("SeriesInstanceUID", "") or f"no-uid:{Path(path).parent}"),
        iop=iop, ipp=ipp, rows=rows, cols=cols, pixel_spacing=ps,  # type: ignore[arg-type]
        modality=_str_or_none(ds.get("Modality")),
        series_description=_str_or_none(ds.get("SeriesDescription")),
        series_number=ds.get("SeriesNumber"),
        study_uid=_str_or_none(ds.get("StudyInstanceUID")),
        patient_id=_str_or_none(ds.get("PatientID")),
        patient_name=_str_or_none(ds.get("PatientName")),
        instance_number=ds.get("InstanceNumber"),
        repeat_tags={k: str(ds.get(k)) for k in REPEAT_TAGS if ds.get(k) not in (None, "")},
    )


def _directions(iop) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row = np.asarray(iop[:3], dtype=np.float64)
    col = np.asarray(iop[3:], dtype=np.float64)
    row /= np.linalg.norm(row)
    col /= np.linalg.norm(col)
    return row, col, np.cross(row, col)


def _stack_affine(iop, first_ipp, pixel_spacing, slice_step: np.ndarray) -> np.ndarray:
    """Voxel (i=column, j=row, k=slice) -> RAS affine."""
    row, col, _ = _directions(iop)
    a = np.eye(4)
    a[:3, 0] = row * pixel_spacing[1]  # i runs along a row: column spacing
    a[:3, 1] = col * pixel_spacing[0]  # j runs down a column: row spacing
    a[:3, 2] = slice_step
    a[:3, 3] = first_ipp
    return LPS_TO_RAS @ a


def check_not_4d(iop, ipps: np.ndarray, where: str, repeat_labels: list[dict[str, Any]] | None = None,
                 kind: str = "series") -> None:
    """Refuse a stack whose slice positions all repeat the same number of times (a dynamic,
    multi-echo or diffusion run) with one message for classic and enhanced DICOM alike."""
    _, _, normal = _directions(iop)
    proj = np.round(np.asarray(ipps, dtype=np.float64) @ normal, 2)
    _, counts = np.unique(proj, return_counts=True)
    if len(counts) < 1 or counts.min() < 2 or counts.min() != counts.max():
        return
    varying = sorted({k for lab in (repeat_labels or []) for k in lab
                      if len({str(x.get(k)) for x in repeat_labels}) > 1})
    by = f" (they differ in {', '.join(varying)})" if varying else ""
    raise ScanError(where, f"4D {kind}: {int(counts[0])} volumes of {len(counts)} slices at the same positions{by} "
                    "— dynamic, multi-echo or diffusion runs are not scored as one volume",
                    "export one time point / echo per series, or convert with dcm2niix and score one volume")


def build_stack(iop, ipps: np.ndarray, pixel_spacing, where: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Sort slice origins along the normal, validate spacing, and return
    (order, affine_RAS, warnings)."""
    _, _, normal = _directions(iop)
    proj = ipps @ normal
    order = np.argsort(proj, kind="stable")
    proj_sorted = proj[order]
    ipps_sorted = ipps[order]
    n = len(order)
    if n < MIN_SLICES:
        raise ScanError(where, f"only {n} slice(s); at least {MIN_SLICES} are needed for a volume")
    diffs = np.diff(proj_sorted)
    if np.any(diffs < 1e-3):
        dup = int(np.sum(diffs < 1e-3))
        raise ScanError(where, f"{dup} duplicate slice position(s) — multi-echo/dynamic/repeated series?",
                        "export one echo or time point per series")
    median = float(np.median(diffs))
    rel = np.abs(diffs - median) / median
    if np.any(rel > SPACING_RTOL):
        ratios = diffs / median
        multiples = np.round(ratios)
        if np.any(multiples >= 2) and np.all(np.abs(ratios - multiples) <= SPACING_RTOL * multiples):
            missing = int((multiples - 1).sum())
            raise ScanError(where, f"{missing} missing slice(s): spacing {median:.3g} mm with gap(s) of "
                            f"{diffs.max():.3g} mm", "re-export the complete series")
        raise ScanError(where, f"irregular slice spacing ({diffs.min():.3g}-{diffs.max():.3g} mm)",
                        "resample to a regular grid before scoring")
    warnings: list[str] = []
    step = (ipps_sorted[-1] - ipps_sorted[0]) / (n - 1)
    # In-plane offset between consecutive origins = gantry tilt (or a sheared acquisition).
    along = float(step @ normal)
    tilt = float(np.degrees(np.arctan2(np.linalg.norm(step - along * normal), along)))
    if tilt > 0.01:
        residual = ipps_sorted - (ipps_sorted[0] + np.outer(np.arange(n), step))
        if np.abs(residual).max() > 0.05 * median:
            raise ScanError(where, "slice origins do not lie on a line (curved/irregular stack)")
        warnings.append(f"gantry tilt {tilt:.2f}°: represented exactly by a sheared affine")
    else:
        step = along * normal
    affine = _stack_affine(iop, ipps_sorted[0], pixel_spacing, step)
    return order, affine, warnings


def group_slices(headers: list[SliceHeader]) -> list[tuple[tuple, list[SliceHeader]]]:
    """Group by series UID, then orientation, matrix size and pixel spacing."""
    groups: dict[tuple, list[SliceHeader]] = {}
    for h in headers:
        key = (
            h.series_uid,
            tuple(np.round(h.iop, ORIENTATION_DECIMALS)),
            (h.rows, h.cols),
            tuple(np.round(h.pixel_spacing, 4)),
        )
        groups.setdefault(key, []).append(h)
    return sorted(groups.items(), key=lambda kv: (kv[0][0], min(h.path for h in kv[1])))


def stack_from_slices(headers: list[SliceHeader], stack_index: int = 0) -> DicomStack:
    where = _series_where(headers)
    ipps = np.array([h.ipp for h in headers], dtype=np.float64)
    h0 = headers[0]
    check_not_4d(h0.iop, ipps, where, [h.repeat_tags for h in headers])
    order, affine, warnings = build_stack(h0.iop, ipps, h0.pixel_spacing, where)
    return DicomStack(
        series_uid=h0.series_uid,
        paths=[headers[i].path for i in order],
        affine=affine,
        shape=(h0.cols, h0.rows, len(headers)),
        modality=h0.modality,
        series_description=h0.series_description,
        series_number=h0.series_number,
        study_uid=h0.study_uid,
        patient_id=h0.patient_id,
        patient_name=h0.patient_name,
        warnings=warnings,
        stack_index=stack_index,
    )


def _frame_geometry(ds, i: int):
    """IOP, IPP and PixelSpacing of frame i of an enhanced object."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared = shared[0] if shared else None
    per = ds.PerFrameFunctionalGroupsSequence[i]

    def find(seq_name: str):
        for src in (per, shared):
            if src is not None and seq_name in src and len(src.get(seq_name)) > 0:
                return src.get(seq_name)[0]
        return None

    orient = find("PlaneOrientationSequence")
    pos = find("PlanePositionSequence")
    meas = find("PixelMeasuresSequence")
    if orient is None or pos is None or meas is None:
        raise ScanError(ds.filename, f"enhanced object frame {i} lacks plane position/orientation/pixel measures")
    rescale = find("PixelValueTransformationSequence")
    slope = float(rescale.get("RescaleSlope", 1.0)) if rescale is not None else float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(rescale.get("RescaleIntercept", 0.0)) if rescale is not None else float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return (tuple(float(v) for v in orient.ImageOrientationPatient),
            tuple(float(v) for v in pos.ImagePositionPatient),
            tuple(float(v) for v in meas.PixelSpacing), slope, intercept)


def _frame_repeat_tags(ds, i: int) -> dict[str, Any]:
    """Temporal/echo labels of frame i (FrameContentSequence, MR echo / diffusion sequences)."""
    per = ds.PerFrameFunctionalGroupsSequence[i]
    out: dict[str, Any] = {}
    for seq, tag in (("FrameContentSequence", "TemporalPositionIndex"), ("FrameContentSequence", "StackID"),
                     ("MREchoSequence", "EffectiveEchoTime"), ("MRDiffusionSequence", "DiffusionBValue")):
        items = per.get(seq)
        if items and tag in items[0]:
            out[tag] = str(items[0].get(tag))
    return out


def stack_from_enhanced(ds, path: str) -> DicomStack:
    n = int(ds.NumberOfFrames)
    geoms = [_frame_geometry(ds, i) for i in range(n)]
    iops = {tuple(np.round(g[0], ORIENTATION_DECIMALS)) for g in geoms}
    if len(iops) != 1:
        raise ScanError(path, f"enhanced object holds {len(iops)} orientations; one stack expected")
    ipps = np.array([g[1] for g in geoms])
    check_not_4d(geoms[0][0], ipps, path, [_frame_repeat_tags(ds, i) for i in range(n)], kind="enhanced object")
    order, affine, warnings = build_stack(geoms[0][0], ipps, geoms[0][2], path)
    return DicomStack(
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        paths=[path],
        affine=affine,
        shape=(int(ds.Columns), int(ds.Rows), n),
        modality=_str_or_none(ds.get("Modality")),
        series_description=_str_or_none(ds.get("SeriesDescription")),
        series_number=ds.get("SeriesNumber"),
        study_uid=_str_or_none(ds.get("StudyInstanceUID")),
        patient_id=_str_or_none(ds.get("PatientID")),
        patient_name=_str_or_none(ds.get("PatientName")),
        enhanced_frame_order=[int(i) for i in order],
        warnings=warnings,
    )


def load_stack(stack: DicomStack, scan_id: str | None = None) -> Volume:
    """Decode pixels (rescale applied) into a Volume with the stack's geometry."""
    data = np.empty(stack.shape, dtype=np.float32)
    dtype_name = None
    if stack.enhanced_frame_order is not None:
        path = stack.paths[0]
        ds = _dcmread_pixels(path)
        try:
            frames = ds.pixel_array
        except Exception as exc:
            raise _decode_error(ds, path, exc) from exc
        dtype_name = str(frames.dtype)
        for k, fi in enumerate(stack.enhanced_frame_order):
            _, _, _, slope, intercept = _frame_geometry(ds, fi)
            data[:, :, k] = frames[fi].T.astype(np.float32) * slope + intercept
    else:
        for k, path in enumerate(stack.paths):
            ds = _dcmread_pixels(path)
            try:
                px = ds.pixel_array
            except Exception as exc:
                raise _decode_error(ds, path, exc) from exc
            if px.shape != (stack.shape[1], stack.shape[0]):
                raise ScanError(path, f"pixel array {px.shape} does not match Rows/Columns of the series")
            dtype_name = dtype_name or str(px.dtype)
            slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
            intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
            data[:, :, k] = px.T.astype(np.float32) * slope + intercept
    prov = Provenance(
        source_paths=list(stack.paths),
        format="dicom-enhanced" if stack.enhanced_frame_order is not None else "dicom",
        series_uid=stack.series_uid,
        study_uid=stack.study_uid,
        modality=stack.modality,
        original_dtype=dtype_name,
        series_description=stack.series_description,
        scan_id=scan_id,
        patient_id=stack.patient_id,
        patient_name=stack.patient_name,
        warnings=list(stack.warnings),
    )
    return Volume(data, stack.affine, prov)


def _dcmread_pixels(path: str):
    import pydicom

    try:
        return pydicom.dcmread(path, force=True)
    except Exception as exc:
        raise ScanError(path, f"unreadable DICOM ({_first_line(exc)})",
                        "the file changed or was damaged since discovery; copy it again") from exc


# The default install decodes every compressed syntax with permissively licensed plugins (pydicom's
# own RLE, pylibjpeg-openjpeg, python-gdcm, pyjpegls, Pillow) except 12-bit JPEG Extended, which
# only the GPL-3.0 pylibjpeg-libjpeg reads: that one lives in an optional extra.
GPL_JPEG_EXTRA = "jpeg-12bit"
DEFAULT_DECODERS = "python-gdcm pylibjpeg-openjpeg"


def _decode_error(ds, path: str, exc: BaseException) -> ScanError:
    """One line naming the file, the transfer syntax and, when the decoder is missing, what to install."""
    try:
        ts = ds.file_meta.TransferSyntaxUID
    except AttributeError:
        ts = None
    if ts is None or not ts.is_compressed:
        return ScanError(path, f"pixel data cannot be decoded ({_first_line(exc)})")
    syntax = f"transfer syntax {ts.name} ({ts})"
    try:
        from pydicom.pixels import get_decoder

        plugins = set(get_decoder(ts).available_plugins)
    except Exception:  # a syntax pydicom has no decoder for at all (video, deflate, private)
        return ScanError(path, f"no DICOM decoder exists for {syntax}",
                         "convert the series to an uncompressed syntax, e.g. with dcmdjpeg or gdcmconv --raw")
    try:
        bits = int(ds.get("BitsStored", 8) or 8)
    except (TypeError, ValueError):
        bits = 8
    if ts == "1.2.840.10008.1.2.4.51" and bits > 8 and "pylibjpeg" not in plugins:
        return ScanError(path, f"no decoder installed for {bits}-bit {syntax}",
                         f"pip install 'medidiff[{GPL_JPEG_EXTRA}]', a GPL-3.0 decoder")
    if not plugins:
        return ScanError(path, f"no decoder installed for {syntax}",
                         f"pip install {DEFAULT_DECODERS}, part of medidiff's default install")
    return ScanError(path, f"pixel data cannot be decoded, {syntax} ({_first_line(exc)})")


def _series_where(headers: list[SliceHeader]) -> str:
    folder = os.path.commonpath([h.path for h in headers]) if len(headers) > 1 else headers[0].path
    return f"{folder} [series {headers[0].series_uid}, {len(headers)} files]"


def _str_or_none(v) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0][:200] if lines else exc.__class__.__name__)
