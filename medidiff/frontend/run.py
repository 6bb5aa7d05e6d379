"""The front end as one call: scan → brain mask, bias field, transform to template, QC.

Everything is computed once per scan and kept as small pieces (a source-grid mask, a
log bias field on a 2 mm brain box, one 4x4 matrix), so :func:`medidiff.preprocess.preprocess`
can still bring the scan onto the model grid with a single resampling and map every
result back through its exact inverse.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections import OrderedDict
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from ..geometry import GridMapping, resample
from ..volume import Volume
from .bias import n4_log_field
from .brain import brain_mask, resolve_method
from .config import FrontEndConfig
from .qc import check_brain_volume, check_registration, ncc
from .register import refine_deformable, register_to_template
from .template import Template, load_template

WORK_SPACING = 2.0  # mm: N4 and registration run on a 2 mm box around the brain
WORK_MARGIN = 8.0  # mm around the brain's bounding box


@dataclass
class FrontEndResult:
    brain_source: np.ndarray  # bool, the scan's own grid
    template_to_scan: np.ndarray  # 4x4, RAS mm (template) -> RAS mm (scan)
    work_affine: np.ndarray  # 2 mm RAS box around the brain
    log_bias: np.ndarray | None  # on the work box; None without bias correction
    # deformable refinement: displacement (3, X, Y, Z) in template RAS mm on the template grid, so that
    # template point x lies at template_to_scan @ (x + warp(x)); None for affine-only registration
    warp: np.ndarray | None = None
    warp_affine: np.ndarray | None = None  # voxel -> template RAS mm of the warp's grid
    qc: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # accepted by QC, but the user should look (one line each)

    def bias_factor_on(self, mapping) -> np.ndarray:
        """exp(log bias) sampled on a mapping's model grid (1 where the field is unknown)."""
        if self.log_bias is None:
            return np.ones(mapping.model_shape, dtype=np.float32)
        log = mapping.pull(self.log_bias, self.work_affine, order=1, fill=0.0, antialias=False)
        return np.exp(log).astype(np.float32)


def source_label(volume: Volume) -> str:
    """Where a volume came from, for one-line messages (a DICOM series: its folder)."""
    paths = volume.provenance.source_paths
    if len(paths) > 1:
        import os

        return os.path.commonpath(paths)
    return paths[0] if paths else volume.scan_id


def work_box(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """2 mm RAS grid covering the mask's world bounding box plus a margin."""
    idx = np.argwhere(mask)
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=np.float64)
    lo_i, hi_i = idx.min(axis=0) - 0.5, idx.max(axis=0) + 0.5
    pts = lo_i + corners * (hi_i - lo_i)
    world = pts @ affine[:3, :3].T + affine[:3, 3]
    lo, hi = world.min(axis=0) - WORK_MARGIN, world.max(axis=0) + WORK_MARGIN
    shape = tuple(int(s) for s in np.ceil((hi - lo) / WORK_SPACING) + 1)
    aff = np.diag([WORK_SPACING] * 3 + [1.0])
    aff[:3, 3] = lo
    return aff, shape


# ----------------------------------------------------------------------------- opt-in memo

DEFAULT_MEMO_MB = 1024  # MEDIDIFF_FRONTEND_MEMO_MB overrides; a 1 mm head's result is ~15-20 MB


def result_bytes(result: FrontEndResult) -> int:
    arrays = (result.brain_source, result.log_bias, result.warp, result.template_to_scan, result.work_affine)
    return int(sum(a.nbytes for a in arrays if a is not None)) + 4096


class FrontEndMemo:
    """Front-end results of scans seen in this block, least recently used dropped first so that
    their arrays never hold more than ``max_bytes``. Off unless :func:`frontend_memo` is active:
    normal scoring keeps nothing, and a timing is never of a memoised front end."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: "OrderedDict[str, tuple[FrontEndResult, int]]" = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> FrontEndResult | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: str, result: FrontEndResult) -> None:
        size = result_bytes(result)
        if size > self.max_bytes:
            return
        if key in self._items:
            self.bytes -= self._items.pop(key)[1]
        self._items[key] = (result, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self.bytes -= self._items.popitem(last=False)[1][1]

    def __len__(self) -> int:
        return len(self._items)


_MEMO: ContextVar[FrontEndMemo | None] = ContextVar("medidiff_frontend_memo", default=None)


def default_memo_bytes() -> int:
    try:
        mb = float(os.environ.get("MEDIDIFF_FRONTEND_MEMO_MB", "") or DEFAULT_MEMO_MB)
    except ValueError:
        mb = DEFAULT_MEMO_MB
    return int(max(mb, 0) * 2**20)


@contextlib.contextmanager
def frontend_memo(max_bytes: int | None = None) -> Iterator[FrontEndMemo]:
    """Reuse front-end results of identical scans inside this block (settings searches, benchmarks;
    :func:`medidiff.score.cache.first_pass_cache` enters it). Nested blocks share the outer memo."""
    outer = _MEMO.get()
    if outer is not None:
        yield outer
        return
    memo = FrontEndMemo(default_memo_bytes() if max_bytes is None else max_bytes)
    token = _MEMO.set(memo)
    try:
        yield memo
    finally:
        _MEMO.reset(token)


def active_memo() -> FrontEndMemo | None:
    return _MEMO.get()


def _cache_key(volume: Volume, cfg: FrontEndConfig, modality: str) -> str:
    h = hashlib.sha1(np.ascontiguousarray(volume.array).tobytes())
    h.update(np.asarray(volume.affine, dtype=np.float64).tobytes())
    h.update(json.dumps([cfg.to_dict(), modality], sort_keys=True).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- the front end

# SimpleITK threads for N4 and registration. The Mattes metric sums per-thread partial results in
# the order threads finish: with 2+ threads the same scan registered twice in one process gave
# transforms differing by ~1e-5 (and N4 fields differ by thread count), enough to move a
# supra-threshold voxel. One thread makes every process (a local run, any Dask worker) compute
# the same bits; measured on 2 cores, the front end took as long with 1 thread as with 2.
FRONTEND_ITK_THREADS = 1


@contextlib.contextmanager
def _itk_threads(n: int) -> Iterator[None]:
    import SimpleITK as sitk

    prev = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(prev)


def run_frontend(volume: Volume, cfg: FrontEndConfig, modality: str = "mri",
                 template: Template | None = None) -> FrontEndResult:
    """Brain extraction → N4 → registration to the template → QC. Raises QCFailed.

    Deterministic (bit for bit, in any process); inside :func:`frontend_memo` results are reused
    per scan content + settings."""
    memo = _MEMO.get()
    key = None if memo is None else _cache_key(volume, cfg, modality)
    if memo is not None:
        hit = memo.get(key)
        if hit is not None:
            return hit
    with _itk_threads(FRONTEND_ITK_THREADS):
        result = _run_frontend(volume, cfg, modality, template)
    if memo is not None:
        memo.put(key, result)
    # a scan accepted with a QC warning (e.g. a large region unlike the template) carries it like a
    # reader's warning, into every result, table and report of this scan (also on a memo hit)
    for w in result.warnings:
        if w not in volume.provenance.warnings:
            volume.provenance.warnings.append(w)
    return result


def _run_frontend(volume: Volume, cfg: FrontEndConfig, modality: str, template: Template | None) -> FrontEndResult:
    template = template or load_template(cfg.template)
    where, secs = source_label(volume), {}
    t0 = time.perf_counter()
    method = resolve_method(cfg.brain, volume, modality, cfg.max_brain_ml)
    brain = brain_mask(volume, method)
    secs["brain"] = time.perf_counter() - t0
    voxel_ml = abs(float(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
    brain_ml = float(brain.sum()) * voxel_ml
    check_brain_volume(brain_ml, cfg, where)

    work_aff, work_shape = work_box(brain, volume.affine)
    image = resample(volume.array, volume.affine, work_aff, work_shape, order=1)
    mask = resample(brain.astype(np.float32), volume.affine, work_aff, work_shape, order=1) > 0.5
    t0 = time.perf_counter()
    log_bias = None
    if cfg.bias == "n4" and modality == "mri":
        log_bias = n4_log_field(image, mask, work_aff, iterations=tuple(cfg.n4_iterations))
        image = image / np.exp(log_bias)
    secs["bias"] = time.perf_counter() - t0
    stripped = np.where(mask, image, 0.0).astype(np.float32)

    t0 = time.perf_counter()
    warp = None
    kind = None if cfg.registration == "none" else "affine" if cfg.registration == "deformable" else cfg.registration
    to_scan = np.eye(4) if kind is None else register_to_template(stripped, work_aff, template, kind=kind)
    # the affine must be sound before a warp is allowed to bend it; a brain below the similarity limit
    # gets a second look without its worst-matching region (a large lesion) before it is refused
    nan = [w for w in volume.provenance.warnings if "NaN/Inf" in w]  # zeroed by the reader: never a "lesion"
    to_scan, reg_qc, warnings = check_registration(stripped, work_aff, template, to_scan, cfg, where, kind, nan)
    qc = {"brain_method": method, "brain_volume_ml": round(brain_ml, 1), **reg_qc}
    if cfg.registration == "deformable":
        warp = refine_deformable(stripped, work_aff, template, to_scan, cfg.deformable_spacing_mm)
        mapping = GridMapping(stripped.shape, work_aff, template.t1.shape, to_scan @ template.affine,
                              warp_in_voxels(warp, template.affine))
        qc["deformable_similarity"] = round(ncc(mapping.to_model(stripped, antialias=False), template.t1,
                                                template.brain), 4)
        qc["warp_p95_mm"] = round(float(np.percentile(np.linalg.norm(warp, axis=0)[template.brain], 95)), 2)
    secs["registration"] = time.perf_counter() - t0
    return FrontEndResult(brain_source=brain, template_to_scan=to_scan, work_affine=work_aff,
                          log_bias=log_bias, qc=qc, seconds=secs, warp=warp, warnings=warnings,
                          warp_affine=None if warp is None else template.affine)


def warp_in_voxels(warp_mm: np.ndarray, grid_affine: np.ndarray) -> np.ndarray:
    """A displacement in template mm (3, ...) expressed in the voxel units of a grid with ``grid_affine``."""
    inv = np.linalg.inv(np.asarray(grid_affine, dtype=np.float64)[:3, :3])
    return np.einsum("ij,j...->i...", inv, warp_mm).astype(np.float32)
