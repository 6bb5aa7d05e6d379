"""The images of one scan's page: the source scan, anomaly map, mask, ground truth and clusters
(or, for a failed scan, its image with the brain mask the front end finds)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .context import RunContext, finite_float
from .entries import ScanEntry
from .wording import histogram_axis


def _load_source(entry: ScanEntry):
    """The source scan as a Volume (None when it cannot be read any more)."""
    from ..io.discover import discover

    src = entry.result.get("source_path")
    if not src or not Path(src).exists():
        raise FileNotFoundError("source scan not found at its recorded path")
    found = discover(src)
    refs = [r for r in found.scans if r.scan_id == entry.scan_id] or found.scans
    if not refs:
        raise FileNotFoundError("no scan found at the recorded source path")
    if len(refs) > 1:
        refs = [r for r in refs if str(r.source) == str(src)] or refs
    return refs[0].load()


def load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    import nibabel as nib

    if not path.is_file():
        return None
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine


def _same_grid(shape: tuple, affine: np.ndarray, arr: np.ndarray, aff: np.ndarray) -> bool:
    return tuple(arr.shape) == tuple(shape) and np.allclose(aff, affine, atol=1e-3)


def _source_info(ctx: RunContext, entry: ScanEntry, shape: tuple, affine: np.ndarray) -> np.ndarray:
    """The source scan's pixels (for display) and its provenance, minus identifiers."""
    vol = _load_source(entry)
    if not _same_grid(shape, affine, vol.array, vol.affine):
        raise ValueError(f"source scan grid {vol.shape} no longer matches the anomaly map {tuple(shape)}")
    prov = vol.provenance
    for s in (prov.patient_id, prov.patient_name, prov.study_uid, prov.series_uid):
        if s and str(s).strip():
            ctx.phi_strings.add(str(s).strip())
    if ctx.show_phi:
        entry.phi = {"patient name": str(prov.patient_name or ""), "patient ID": str(prov.patient_id or "")}
    d = prov.to_dict(include_phi=False)
    n_files = len(d.pop("source_paths", []) or [])
    for k in ("warnings", "scan_id", "format", *(() if ctx.show_phi else ("study_uid", "series_uid"))):
        d.pop(k, None)
    entry.series_description = str(prov.series_description or "")
    entry.provenance = {k: v for k, v in d.items() if v not in (None, "", [])}
    entry.provenance["files"] = n_files
    entry.provenance["stored orientation"] = vol.orientation
    return vol.array


def _ground_truth(ctx: RunContext, entry: ScanEntry, shape: tuple, affine: np.ndarray) -> np.ndarray | None:
    path = ctx.gt_masks.get(entry.scan_id) or ctx.gt_masks.get(str(entry.result.get("scan_id") or ""))
    if path is None:
        return None
    gt = load_nifti(Path(path))
    if gt is None:
        entry.gt_note = f"ground-truth mask {Path(path).name} not found: contour not drawn"
    elif not _same_grid(shape, affine, gt[0], gt[1]):
        entry.gt_note = (f"ground-truth mask {Path(path).name} is on another grid ({tuple(gt[0].shape)}) than the "
                         f"scan ({tuple(shape)}): contour not drawn")
    else:
        return np.asarray(gt[0]) > 0
    return None


def _failed_view(ctx: RunContext, entry: ScanEntry, img_dir: Path) -> None:
    """A failed scan's image with the brain mask its front end finds, and that mask's volume."""
    from .render import render_failed

    try:
        vol = _load_source(entry)
    except Exception as exc:
        entry.failed_view = {"note": "The scan could not be read again, so there is no image to show "
                                     f"({type(exc).__name__})."}
        return
    prov = vol.provenance
    for s in (prov.patient_id, prov.patient_name, prov.study_uid, prov.series_uid):
        if s and str(s).strip():
            ctx.phi_strings.add(str(s).strip())
    brain, note, method = None, "", ""
    fe = (ctx.model.get("preprocess") or {}).get("frontend") or {}
    if ctx.template_space:
        try:
            from ..frontend.brain import brain_mask, resolve_method

            method = resolve_method(str(fe.get("brain", "auto")), vol, str(ctx.model["preprocess"].get("modality", "mri")),
                                    float(fe.get("max_brain_ml", 2100.0)))
            brain = np.asarray(brain_mask(vol, method), bool)
        except Exception as exc:  # the image is still worth showing
            note = f"brain mask not recomputed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    else:
        note = "this model scores in scan space: it has no brain-extraction step, so no brain mask is drawn"
    view = render_failed(img_dir, np.asarray(vol.array, np.float32), vol.affine, brain)
    view.update(note=note, method=method)
    if brain is not None:
        ml = float(brain.sum()) * abs(float(np.linalg.det(vol.affine[:3, :3]))) / 1000.0
        view["brain_ml"] = ml
        lo, hi = finite_float(fe.get("min_brain_ml")), finite_float(fe.get("max_brain_ml"))
        if lo is not None and hi is not None:
            view["brain_limit"] = f"{lo:.0f}–{hi:.0f} ml"
            view["brain_ok"] = lo <= ml <= hi
    entry.failed_view = view


def _scan_facts(ctx: RunContext, entry: ScanEntry, brain: np.ndarray | None, affine: np.ndarray | None) -> None:
    """What makes the scan unlike the model's data; its brain volume on the scan's grid."""
    from .explain import brain_at_edge, outside_grid, qc_outside, thick_slices

    qc = entry.qc
    unlike = qc_outside(qc, ctx.cal_state.qc_ranges)
    if "voxel_size_max_mm" not in ctx.cal_state.qc_ranges:
        t = thick_slices(entry.result.get("affine"), ctx.training_max_mm)
        if t:
            unlike.append(t)
    if brain is not None and affine is not None:
        entry.brain_mm3 = float(np.count_nonzero(brain)) * abs(float(np.linalg.det(np.asarray(affine)[:3, :3])))
        edge = brain_at_edge(brain, affine)
        if edge:
            unlike.append(edge)
    elif finite_float(qc.get("brain_volume_ml")) is not None:
        entry.brain_mm3 = 1000.0 * float(qc["brain_volume_ml"])
    g = outside_grid(qc)
    if g:
        unlike.append(g)
    entry.unlike = unlike


def render_entry(ctx: RunContext, entry: ScanEntry, page_dir: Path) -> None:
    from . import scroller
    from .clusters import find_clusters, supra_threshold
    from .render import render_scan, score_histogram

    t0 = time.perf_counter()
    img_dir = page_dir / entry.scan_id
    if ctx.healthy_scores and entry.score is not None:
        div, xlabel = histogram_axis(ctx)
        score_histogram(img_dir / "distribution.png", [h / div for h in ctx.healthy_scores], marker=entry.score / div,
                        threshold=ctx.scan_threshold / div if ctx.scan_threshold is not None else None,
                        title="this scan vs healthy calibration scores", xlabel=xlabel)
        entry.hist = "distribution.png"
    if entry.status != "ok":
        _failed_view(ctx, entry, img_dir)
        return
    outputs = entry.result.get("outputs") or {}
    amap = load_nifti(entry.scan_dir / outputs.get("anomaly_map", "anomaly_map.nii.gz"))
    if amap is None:
        entry.render_error = "anomaly_map.nii.gz missing"
        return
    amap_arr, affine = np.asarray(amap[0], np.float32), amap[1]
    mask = load_nifti(entry.scan_dir / outputs["mask"]) if outputs.get("mask") else None
    recon = load_nifti(entry.scan_dir / outputs["reconstruction"]) if outputs.get("reconstruction") else None
    scan_arr = None
    try:
        scan_arr = _source_info(ctx, entry, amap_arr.shape, affine)
    except Exception as exc:  # the map is still worth showing
        entry.render_error = f"source scan not shown: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    gt = _ground_truth(ctx, entry, amap_arr.shape, affine)
    entry.has_gt = gt is not None
    brain_name = outputs.get("brain_mask") or ("brain_mask.nii.gz" if (entry.scan_dir / "brain_mask.nii.gz").is_file()
                                               else None)
    brain = load_nifti(entry.scan_dir / brain_name) if brain_name else None
    brain_arr = np.asarray(brain[0]) > 0 if brain is not None and _same_grid(amap_arr.shape, affine, *brain) else None
    _scan_facts(ctx, entry, brain_arr, affine)
    supra = supra_threshold(amap_arr, mask[0] if mask is not None else None, ctx.voxel_threshold)
    if supra is not None:
        to_template = (entry.result.get("qc") or {}).get("scan_to_template")  # registered scans: MNI names
        entry.clusters = find_clusters(amap_arr, supra, affine,
                                       np.asarray(to_template) if to_template is not None else None,
                                       threshold=ctx.voxel_threshold)
    worlds = [c.inside_world for c in entry.clusters.clusters] if entry.clusters else []
    entry.views = render_scan(img_dir, amap_arr, affine, ctx.scale, scan=scan_arr,
                              mask=mask[0] if mask is not None else None, gt=gt,
                              recon=recon[0] if recon is not None else None, cluster_worlds=worlds)
    meta, data = scroller.payload(entry.views.prepared, ctx.scale, cluster_worlds=worlds)
    entry.views.prepared = None  # the volumes are not needed any more
    entry.scroller = (scroller.meta_json(meta), data)
    entry.render_seconds = time.perf_counter() - t0
