"""Discovery: walk a file or folder tree and account for every file in it.

Returns the scans found (NIfTI files and validated DICOM stacks, each loadable
into a :class:`~medidiff.volume.Volume`) and the files skipped, each with a
one-line reason. One unreadable file never stops the walk; DICOM headers are
read with pixel data deferred so thousands of files stay cheap to scan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..volume import Volume
from .dicom import (
    MOSAIC_REASON, DicomStack, SliceHeader, _pixel_bytes_ok, classify, group_slices, is_enhanced, load_stack,
    missing_from_stack, read_header, slice_geometry, slice_header, stack_from_enhanced, stack_from_slices,
)
from .errors import ScanError
from .naming import scan_id_for_path, scan_id_for_series
from .nifti import DEFAULT_MAX_VOXELS, checked_shape, default_max_voxels, is_nifti_path, load_header, read_nifti  # noqa: F401

# Extensions that are obviously neither NIfTI nor DICOM: skip without parsing.
NON_SCAN_SUFFIXES = {
    ".txt", ".md", ".csv", ".tsv", ".json", ".yaml", ".yml", ".xml", ".html", ".htm", ".pdf",
    ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".svg", ".py", ".sh", ".log",
    ".zip", ".tar", ".7z", ".parquet", ".jsonl", ".safetensors", ".pt", ".pth", ".npy", ".npz",
    ".mha", ".mhd", ".nrrd", ".hdr", ".img", ".mgz", ".bval", ".bvec",
}
SKIP_DIR_NAMES = {".git", "__pycache__", ".medidiff"}


@dataclass
class Skipped:
    """A file (or folder) discovery did not turn into a scan. ``reason`` is one
    line saying what is wrong with it and, where there is one, what to do."""

    path: str
    reason: str
    hint: str | None = None

    def __post_init__(self) -> None:
        if self.hint:
            self.reason = f"{self.reason} ({self.hint})"
            self.hint = None

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


def group_skipped(skipped: list[Skipped]) -> list[tuple[str, int, str]]:
    """(path, n_files, reason) rows for display: files that share a reason and a
    folder (the slices of one refused series) become one row."""
    groups: dict[tuple[str, str], list[str]] = {}
    for s in skipped:
        per_series = s.reason.startswith("series ") or s.reason == MOSAIC_REASON
        key = (str(Path(s.path).parent), s.reason) if per_series else (s.path, s.reason)
        groups.setdefault(key, []).append(s.path)
    rows = []
    for (where, reason), paths in groups.items():
        rows.append((paths[0] if len(paths) == 1 else where + os.sep, len(paths), reason))
    return rows


@dataclass
class ScanRef:
    """A scan found by discovery: enough header facts to list it, and ``load()``."""

    scan_id: str
    format: str
    paths: list[str]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    orientation: str
    modality: str | None = None
    series_description: str | None = None
    series_uid: str | None = None
    warnings: list[str] = field(default_factory=list)
    _stack: DicomStack | None = field(default=None, repr=False)
    _root: Path | None = field(default=None, repr=False)

    @property
    def source(self) -> str:
        """One path identifying the scan (the file, or the series' folder)."""
        if self.format == "nifti" or len(self.paths) == 1:
            return self.paths[0]
        return os.path.commonpath(self.paths)

    def load(self, max_voxels: int | None = None) -> Volume:
        max_voxels = default_max_voxels() if max_voxels is None else max_voxels
        if self._stack is not None:
            check_voxels(self.source, self.shape, max_voxels)
            vol = load_stack(self._stack, scan_id=self.scan_id)
        else:
            vol = read_nifti(self.paths[0], root=self._root, max_voxels=max_voxels)
            vol.provenance.scan_id = self.scan_id
        vol.provenance.modality = vol.provenance.modality or self.modality
        # discovery-time warnings (e.g. an incomplete series) travel with the volume into results
        vol.provenance.warnings.extend(w for w in self.warnings if w not in vol.provenance.warnings)
        return vol

    def to_dict(self) -> dict:
        return {
            "scan_id": self.scan_id,
            "format": self.format,
            "modality": self.modality,
            "shape": list(self.shape),
            "spacing": [round(s, 4) for s in self.spacing],
            "orientation": self.orientation,
            "series_description": self.series_description,
            "series_uid": self.series_uid,
            "source": self.source,
            "n_files": len(self.paths),
            "warnings": list(self.warnings),
        }


@dataclass
class Discovery:
    root: str
    scans: list[ScanRef] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "scans": [s.to_dict() for s in self.scans],
            "skipped": [s.to_dict() for s in self.skipped],
        }


def iter_files(root: Path, skipped: list[Skipped], exclude: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """All regular files under root, following directory symlinks at most once
    each (symlink loops are reported, not followed forever). Folders in
    ``exclude`` (e.g. the output folder of the run, when it lies inside the
    input) are not entered."""
    if root.is_file():
        yield root
        return
    excluded = {os.path.realpath(e) for e in exclude}
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=lambda e: skipped.append(
            Skipped(str(getattr(e, "filename", root)), f"cannot list folder ({e.strerror or e})",
                    "check the folder's permissions"))):
        real = os.path.realpath(dirpath)
        if real in excluded:
            skipped.append(Skipped(dirpath, "output folder of this run (not read as input)"))
            dirnames[:] = []
            continue
        if real in seen:
            skipped.append(Skipped(dirpath, "folder already visited through a symlink (loop or duplicate); "
                                            "not entered again"))
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIR_NAMES and not d.startswith(".medidiff"))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.startswith(".") and ".tmp" in name:
                continue  # our own in-flight temp files
            if p.is_symlink() and not p.exists():
                skipped.append(Skipped(str(p), "broken symlink"))
                continue
            if not p.is_file():
                skipped.append(Skipped(str(p), "not a regular file"))
                continue
            yield p


def discover(path: str | os.PathLike, max_voxels: int | None = None,
             exclude: Iterable[str | os.PathLike] = ()) -> Discovery:
    """Every scan under ``path`` and every file that is not one, with a reason.
    ``max_voxels`` (default: ``MEDIDIFF_MAX_VOXELS``) bounds the size a header
    may claim; ``exclude`` lists folders not to enter."""
    max_voxels = default_max_voxels() if max_voxels is None else int(max_voxels)
    root = Path(path)
    result = Discovery(root=str(root))
    if not root.exists():
        result.skipped.append(Skipped(str(root), "path does not exist", "check the spelling of the input path"))
        return result
    base = root if root.is_dir() else root.parent
    slice_headers: list[SliceHeader] = []
    # Series UID of DICOM files refused one by one (truncated, no pixel data, ...),
    # so a series that then lacks them says why.
    refused_in_series: dict[str, list[tuple[Skipped, tuple]]] = {}
    for p in iter_files(root, result.skipped, exclude):
        try:
            _examine_file(p, base, max_voxels, result, slice_headers, refused_in_series)
        except ScanError as exc:
            result.skipped.append(Skipped(str(p), exc.reason, exc.hint))
        except Exception as exc:  # one bad file never stops the walk
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            result.skipped.append(Skipped(str(p), f"unexpected error: {exc.__class__.__name__}: {first}",
                                          "please report this file's problem to the medidiff developers"))
    _stack_series(slice_headers, refused_in_series, base, max_voxels, result)
    _dedupe_ids(result.scans)
    result.scans.sort(key=lambda s: s.scan_id)
    return result


def _examine_file(p: Path, base: Path, max_voxels: int, result: Discovery, slice_headers: list[SliceHeader],
                  refused_in_series: dict[str, list[tuple[Skipped, tuple]]]) -> None:
    """One file of the walk: a NIfTI or enhanced DICOM scan into ``result.scans``, a DICOM slice into
    ``slice_headers`` (stacked later), anything else into ``result.skipped`` with its reason."""
    if is_nifti_path(p):
        result.scans.append(_nifti_ref(p, base, max_voxels))
        return
    if p.suffix.lower() in NON_SCAN_SUFFIXES:
        result.skipped.append(Skipped(str(p), f"not a scan file ({p.suffix.lower()}), ignored"))
        return
    if p.stat().st_size == 0:
        result.skipped.append(Skipped(str(p), "empty file (0 bytes)", "an interrupted copy? copy it again"))
        return
    ds = read_header(p)
    reason = classify(ds, str(p))
    if reason is None:
        reason = _pixel_bytes_ok(ds, str(p))
    if reason is not None:
        skip = Skipped(str(p), reason)
        result.skipped.append(skip)
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        # only a refused would-be slice makes its series incomplete; a raw-data object or a
        # pixel-less non-image file that shares the UID does not
        geometry = slice_geometry(ds)
        if uid and geometry is not None:
            refused_in_series.setdefault(uid, []).append((skip, geometry))
        return
    if is_enhanced(ds):
        stack = stack_from_enhanced(ds, str(p))
        check_voxels(str(p), stack.shape, max_voxels)
        result.scans.append(_dicom_ref(stack, base))
    elif int(ds.get("NumberOfFrames", 1) or 1) > 1:
        result.skipped.append(Skipped(str(p), "multi-frame object without per-frame geometry "
                                              "(cine/2D multi-frame), not a volume"))
    else:
        slice_headers.append(slice_header(ds, str(p)))


def _stack_series(slice_headers: list[SliceHeader], refused_in_series: dict[str, list[tuple[Skipped, tuple]]],
                  base: Path, max_voxels: int, result: Discovery) -> None:
    """The collected DICOM slices stacked into one scan per series (and stack), each refused series'
    files skipped with the reason; a series missing files refused earlier says so."""
    groups = group_slices(slice_headers)
    per_uid: dict[str, int] = {}
    for (uid, *_), headers in groups:
        idx = per_uid.get(uid, 0)
        per_uid[uid] = idx + 1
        refused = [s for s, geometry in refused_in_series.get(uid, []) if missing_from_stack(headers, geometry)]
        because = ""
        if refused:
            because = (f"; {len(refused)} file(s) of this series were refused, e.g. "
                       f"{Path(refused[0].path).name}: {refused[0].reason}")
        try:
            stack = stack_from_slices(headers, stack_index=idx)
            check_voxels(_series_label(headers), stack.shape, max_voxels)
            ref = _dicom_ref(stack, base)
            if refused:
                ref.warnings.append(f"incomplete series: {len(refused)} file(s) refused "
                                    f"(e.g. {Path(refused[0].path).name}: {refused[0].reason}); "
                                    "the volume may lack its end slices")
            result.scans.append(ref)
        except ScanError as exc:
            reason = exc.reason + because + (f" ({exc.hint})" if exc.hint else "")
            for h in headers:
                result.skipped.append(Skipped(h.path, f"series {uid}: {reason}"))


def check_voxels(where: str, shape, max_voxels: int | None = None) -> None:
    max_voxels = default_max_voxels() if max_voxels is None else max_voxels
    n_vox = int(np.prod([int(s) for s in shape], dtype=np.int64))
    if n_vox > max_voxels:
        raise ScanError(where, f"series claims {n_vox:,} voxels {tuple(shape)}, over the limit of {max_voxels:,}",
                        "raise MEDIDIFF_MAX_VOXELS if this is intended")


def _series_label(headers) -> str:
    return os.path.commonpath([h.path for h in headers]) if len(headers) > 1 else headers[0].path


def _nifti_ref(p: Path, base: Path, max_voxels: int) -> ScanRef:
    import nibabel as nib

    img = load_header(p)
    shape = checked_shape(p, img, max_voxels)
    return ScanRef(
        scan_id=scan_id_for_path(p, base),
        format="nifti",
        paths=[str(p)],
        shape=shape,
        spacing=tuple(float(s) for s in np.linalg.norm(img.affine[:3, :3], axis=0)),  # type: ignore[arg-type]
        orientation="".join(nib.aff2axcodes(img.affine)),
        _root=base,
    )


def _dicom_ref(stack: DicomStack, base: Path) -> ScanRef:
    import nibabel as nib

    sid = scan_id_for_series(stack.series_uid, stack.modality, stack.series_number)
    if stack.stack_index:
        sid += f"_stack{stack.stack_index + 1}"
    return ScanRef(
        scan_id=sid,
        format="dicom-enhanced" if stack.enhanced_frame_order is not None else "dicom",
        paths=list(stack.paths),
        shape=stack.shape,
        spacing=stack.spacing,
        orientation="".join(nib.aff2axcodes(stack.affine)),
        modality=stack.modality,
        series_description=stack.series_description,
        series_uid=stack.series_uid,
        warnings=list(stack.warnings),
        _stack=stack,
    )


def _dedupe_ids(scans: list[ScanRef]) -> None:
    """Two scans never share an id (and so never share output files): NIfTI
    files that share a name get their folders prepended; anything still equal
    gets a numeric suffix."""
    by_id: dict[str, list[ScanRef]] = {}
    for s in scans:
        by_id.setdefault(s.scan_id, []).append(s)
    for group in by_id.values():
        if len(group) > 1:
            for s in group:
                if s.format == "nifti" and s._root is not None:
                    s.scan_id = scan_id_for_path(Path(s.paths[0]), s._root, with_parents=True)
    seen: dict[str, int] = {}
    for s in sorted(scans, key=lambda s: (s.scan_id, s.paths[0])):
        n = seen.get(s.scan_id, 0)
        seen[s.scan_id] = n + 1
        if n:
            s.scan_id = f"{s.scan_id}_{n + 1}"
