"""NIfTI reading and writing around :class:`~medidiff.volume.Volume`.

Reading keeps the file's stored orientation (RAS, LPS, permuted, oblique): the
array is not reoriented, the affine says where each voxel is. Writing a map for
a scan reuses that scan's shape and affine exactly, as float32.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from ..volume import Provenance, Volume
from .atomic import atomic_path
from .errors import ScanError
from .naming import scan_id_for_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Refuse headers that claim more voxels than this before allocating anything
# (default 2**29 voxels = 2 GiB as float32); MEDIDIFF_MAX_VOXELS overrides it.
BUILTIN_MAX_VOXELS = 1024**3 // 2


def default_max_voxels() -> int:
    """The voxel limit in force: ``MEDIDIFF_MAX_VOXELS`` (read at call time), else the built-in one."""
    text = os.environ.get("MEDIDIFF_MAX_VOXELS", "").strip().replace("_", "")
    try:
        return int(float(text)) if text else BUILTIN_MAX_VOXELS
    except ValueError:
        return BUILTIN_MAX_VOXELS


DEFAULT_MAX_VOXELS = default_max_voxels()  # value at import, kept for callers that read it


def is_nifti_path(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: str | os.PathLike, root: Path | None = None,
               max_voxels: int | None = None) -> Volume:
    path = Path(path)
    img = load_header(path)
    shape = checked_shape(path, img, max_voxels)
    affine = img.affine
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except (gzip.BadGzipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise ScanError(path, f"image data unreadable or truncated ({_one_line(exc)})",
                        "the file is damaged or incompletely copied; copy or export it again") from exc
    warnings = []
    finite = np.isfinite(data)
    if not finite.all():
        warnings.append(check_non_finite(path, finite))
        data = np.where(finite, data, 0.0).astype(np.float32)
    prov = Provenance(
        source_paths=[str(path)],
        format="nifti",
        original_dtype=str(img.get_data_dtype()),
        series_description=_descrip(img),
        scan_id=scan_id_for_path(path, root),
        warnings=warnings,
    )
    return Volume(data, affine, prov)


def check_non_finite(path: Path, finite: np.ndarray) -> str:
    """NaN/Inf voxels: refused with a one-line reason, unless they only pad the image (every
    non-finite patch touches the volume's border, as in tools that write NaN outside the head),
    which returns the warning to record when they are set to 0. NaN/Inf inside the image would
    be scored as zeros: the scan would fail later (brain extraction, registration QC) for a
    reason that does not name them, or hide an anomaly."""
    from scipy import ndimage

    bad = ~finite
    n_bad, frac = int(bad.sum()), float(bad.mean())
    what = f"{n_bad:,} voxels ({frac:.2%}) are NaN/Inf (not a number)"
    if frac > 0.5:
        raise ScanError(path, f"{what}: no usable intensities",
                        "re-export the scan from the scanner or the tool that wrote it")
    labels, n = ndimage.label(bad, structure=np.ones((3, 3, 3), bool))
    border = np.zeros(n + 1, bool)
    for axis in range(bad.ndim):
        for end in (0, -1):
            border[np.unique(np.take(labels, end, axis=axis))] = True
    border[0] = False
    inner = ~border[labels] & bad
    if inner.any():
        at = tuple(int(i) for i in np.argwhere(inner)[0])
        raise ScanError(path, f"{what}, {int(inner.sum()):,} of them inside the image (first at voxel {at}): "
                        "their intensities are unknown",
                        "re-export the scan without NaN/Inf (a NaN inside the head cannot be scored)")
    return f"{what}, all at the image border (padding): set to 0"


def load_header(path: Path):
    """nibabel image proxy (no voxel data read yet), with a one-line error."""
    try:
        return nib.load(str(path))
    except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise ScanError(path, f"corrupt gzip stream ({_one_line(exc)})",
                        "the file is damaged or incompletely copied; copy it again or re-compress it") from exc
    except Exception as exc:  # nibabel raises many types for bad headers
        raise ScanError(path, f"not a readable NIfTI file ({_one_line(exc)})",
                        "check that it is a NIfTI-1/2 file and was copied completely") from exc


def checked_shape(path: Path, img, max_voxels: int | None = None) -> tuple[int, int, int]:
    """Validate a NIfTI header before any voxel is allocated: 3D, sane size,
    invertible finite affine."""
    max_voxels = default_max_voxels() if max_voxels is None else int(max_voxels)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ScanError(path, f"{len(shape)}D image of shape {tuple(img.shape)}; medidiff scores 3D volumes only",
                        "split the 4D series into 3D volumes first" if len(shape) > 3
                        else "a single slice or 2D image cannot be scored")
    if min(shape) < 2:
        raise ScanError(path, f"shape {shape} is not a volume (a dimension < 2)",
                        "medidiff scores 3D volumes; a single slice cannot be scored")
    n_vox = int(np.prod(shape, dtype=np.int64))
    if n_vox > max_voxels:
        raise ScanError(path, f"header claims {n_vox:,} voxels {shape}, over the limit of {max_voxels:,}",
                        "raise MEDIDIFF_MAX_VOXELS if this is intended")
    affine = img.affine
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ScanError(path, "affine is missing, singular or not finite",
                        "fix the header's sform/qform (voxel sizes and orientation)")
    return shape  # type: ignore[return-value]


def write_nifti(volume_or_array: Volume | np.ndarray, path: str | os.PathLike,
                like: Volume | None = None, dtype: np.dtype | type = np.float32) -> Path:
    """Write atomically. With ``like``, the array is written on ``like``'s grid
    (shape must match, affine copied); the data dtype is always set explicitly
    so a copied integer header can never quantize a float map."""
    path = Path(path)
    if isinstance(volume_or_array, Volume):
        array, affine = volume_or_array.array, volume_or_array.affine
    else:
        if like is None:
            raise ValueError("writing a bare array needs `like=` to give the grid")
        array, affine = np.asarray(volume_or_array), like.affine
    if like is not None and tuple(array.shape) != like.shape:
        raise ValueError(f"array shape {array.shape} differs from the scan's shape {like.shape}")
    img = nib.Nifti1Image(np.asarray(array).astype(dtype), affine)
    img.set_data_dtype(dtype)
    img.set_sform(affine, code=1)
    # qform cannot hold shear (gantry-tilted CT): then only the sform is valid.
    img.set_qform(affine, code=1 if _is_orthogonal(affine) else 0)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def _is_orthogonal(affine: np.ndarray, tol: float = 1e-6) -> bool:
    cols = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return bool(np.allclose(cols.T @ cols, np.eye(3), atol=tol))


def _descrip(img) -> str | None:
    try:
        d = img.header.get("descrip")
        text = bytes(np.asarray(d).tobytes()).split(b"\0")[0].decode("ascii", "replace").strip()
        return text or None
    except Exception:
        return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else exc.__class__.__name__
