"""``medidiff synthesize``: sample volumes, write them (NIfTI, optional DICOM), optionally
insert labelled synthetic anomalies, and write a manifest and a quality report.

Output folder::

    OUT/images/synth_00000.nii.gz      generated scan (anomalies inserted when labelled anomalous)
    OUT/clean/synth_00001.nii.gz       the generated scan before anomaly insertion (anomalous ones only)
    OUT/masks/synth_00001_mask.nii.gz  ground-truth mask (uint8), anomalous samples only
    OUT/dicom/synth_00000/IM0001 ...   optional DICOM series (fresh UIDs, DERIVED, synthetic identity)
    OUT/samples/synth_00000.json       per-sample sidecar, written LAST: its presence = sample complete
    OUT/manifest.csv / manifest.json   rebuilt from the sidecars after every run (also on Ctrl-C)
    OUT/labels.csv / lesions.json      with --with-anomalies: the format `medidiff evaluate` reads
    OUT/quality.json / quality.png     diversity, distance to real scans, memorization; mid-slice grid

Geometry: every volume lies on the model grid (``preprocess.grid`` voxels of
``preprocess.spacing`` mm), RAS-aligned: for template-space models the fixed box in MNI152
space (``medidiff.frontend.template_grid_affine``, MNI coordinates), else centred at world (0, 0, 0).
The model is a pixel-space diffusion model (``medidiff train``) or a latent-diffusion
generator (``medidiff.generator``); ``open_generator`` dispatches on the folder's format.
Intensities are *model units*: MRI = signal / (99.5th percentile inside the
brain) of the training normalisation (background 0, brain ~[0, 1], bright tail
above 1 kept); CT = HU window mapped to [0, 1]. DICOM stores the same model
units through RescaleSlope (MR), or HU for CT (the inverse of the window map).

Conditioned latent generators (``latent.conditioning``: age, sex) take a condition
(``--condition age=70 --condition sex=F``: every sample; or ``SynthOptions.conditions``: one per
index, cycled) and a classifier-free guidance scale; each sidecar records its sample's
condition, and a folder never mixes samples of two conditions for one index. Without a
condition a conditioned generator samples unconditionally (the default).

Sample ``i`` uses seed ``base_seed + i`` (or the i-th of ``--seeds``); its image,
its healthy/anomalous label (index-based, see :func:`is_anomalous`) and its
anomalies depend only on (seed, index, settings), so one sample can be
regenerated alone. Every file is written atomically; a re-run with the same
settings generates only the missing indices.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..io.atomic import write_text_atomic
from ..jsonutil import json_default as _json_default
from ..model.sampler_config import SamplerConfig

PREFIX = "synth"
SIDE_DIR = "samples"
# Settings that change a sample's content: a folder never mixes samples made with different values.
CONTENT_KEYS = ("model_hash", "sampler", "steps", "spacing", "temperature", "eta", "clip_x0", "noise",
                "with_anomalies", "anomaly_fraction", "anomaly_kinds", "anomaly_count", "guidance")
LABEL_COLUMNS = ["scan_id", "split", "path", "label", "mask_path", "anomaly_types", "lesion_volume_mm3",
                 "n_anomalies", "orientation", "shape", "spacing_mm", "seed", "index", "clean_path"]
MANIFEST_COLUMNS = ["scan_id", "index", "file", "seed", "steps", "spacing", "sampler", "temperature", "eta", "model_hash",
                    "seconds", "label", "mask", "anomaly_types", "dicom_dir", "clean_file", "precision", "created",
                    "condition", "guidance"]


class SynthConflict(Exception):
    """The output folder holds samples made with other settings."""


@dataclass
class SynthOptions:
    n: int | None = None
    indices: Sequence[int] | None = None  # generate only these indices
    seeds: Sequence[int] | None = None  # explicit seed per index (overrides base_seed + i)
    base_seed: int = 0
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    dicom: bool = False
    with_anomalies: bool = False
    anomaly_fraction: float = 0.5
    anomaly_kinds: Sequence[str] | None = None  # None -> all kinds
    anomaly_count: int | None = None  # None -> 1-3 per anomalous scan
    split: str = "val"
    reference: Path | None = None
    train_data: Path | None = None
    memorization_threshold: float = 0.9
    quality: bool = True
    overwrite: bool = False
    reference_limit: int | None = None
    condition: dict[str, Any] | None = None  # conditioned generators: the condition of every sample
    conditions: Sequence[dict[str, Any] | None] | None = None  # or one per index (cycled), e.g. real demographics
    guidance: float | None = None  # classifier-free guidance scale (None: the generator's latent.guidance)

    def condition_for(self, index: int) -> dict[str, Any] | None:
        from ..generator.conditioning import canonical

        if self.conditions:
            c = self.conditions[int(index) % len(self.conditions)]
        else:
            c = self.condition
        return canonical(c) or None


@dataclass
class SynthSummary:
    out: Path
    n_total: int
    n_generated: int
    n_existing: int
    seconds: float
    seconds_per_sample: float | None
    quality: dict[str, Any] | None = None
    labels: Path | None = None

    def line(self) -> str:
        sps = f", {self.seconds_per_sample:.2f} s/sample" if self.seconds_per_sample else ""
        extra = ""
        if self.quality and isinstance(self.quality.get("memorization"), dict):
            flagged = self.quality["memorization"].get("flagged") or []
            extra = f"; memorization flags: {len(flagged)}"
        return (f"{self.n_total} samples in {self.out} ({self.n_generated} generated, {self.n_existing} kept) "
                f"in {self.seconds:.1f} s{sps}{extra}")


def scan_id(index: int) -> str:
    return f"{PREFIX}_{int(index):05d}"


def is_anomalous(index: int, fraction: float) -> bool:
    """Exact-proportion interleaving: index i is anomalous when floor((i+1) f) > floor(i f).
    Any prefix 0..k-1 has floor(k f) anomalous scans; depends on the index only."""
    f = float(fraction)
    if f <= 0:
        return False
    if f >= 1:
        return True
    return math.floor((index + 1) * f + 1e-9) > math.floor(index * f + 1e-9)


def plan(opts: SynthOptions) -> list[tuple[int, int]]:
    """(index, seed) pairs to have in the folder after this run."""
    if opts.seeds:
        pairs = [(k, int(s)) for k, s in enumerate(opts.seeds)]
    else:
        if opts.n is None and not opts.indices:
            raise ValueError("give --n, --index or --seeds")
        n = int(opts.n) if opts.n is not None else max(opts.indices) + 1  # type: ignore[arg-type]
        if n < 0:
            raise ValueError("--n must be >= 0")
        pairs = [(i, int(opts.base_seed) + i) for i in range(n)]
    if opts.indices:
        wanted = sorted({int(i) for i in opts.indices})
        bad = [i for i in wanted if i < 0 or (opts.seeds and i >= len(opts.seeds))]
        if bad:
            raise ValueError(f"--index {bad} outside the {len(opts.seeds or [])} given seeds" if opts.seeds
                             else f"--index must be >= 0, got {bad}")
        if opts.seeds:
            pairs = [pairs[i] for i in wanted]
        else:
            pairs = [(i, int(opts.base_seed) + i) for i in wanted]
    return pairs




def _dump(obj) -> str:
    return json.dumps(obj, indent=2, default=_json_default) + "\n"


def read_sidecars(out: Path) -> list[dict[str, Any]]:
    recs = []
    for p in sorted((Path(out) / SIDE_DIR).glob(f"{PREFIX}_*.json")):
        try:
            recs.append(json.loads(p.read_text()))
        except (json.JSONDecodeError, OSError):
            continue  # a damaged sidecar = sample missing; it is regenerated
    return sorted(recs, key=lambda r: int(r.get("index", 0)))


def _complete(out: Path, rec: dict[str, Any]) -> bool:
    files = [rec.get("file"), rec.get("mask"), rec.get("clean_file")]
    return all((out / f).is_file() for f in files if f)


def _rel(path: Path, out: Path) -> str:
    return path.relative_to(out).as_posix()


# ----------------------------------------------------------------------------- manifest + labels

def condition_text(cond: dict[str, Any] | None) -> str:
    """``age=70;sex=F`` (keys sorted), '' when unconditional."""
    return ";".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted((cond or {}).items()))


def rebuild_outputs(out: str | Path, run_settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """manifest.csv / manifest.json (and labels.csv + lesions.json when any sample carries a label)
    from the per-sample sidecars; complete samples only."""
    out = Path(out)
    recs = [r for r in read_sidecars(out) if _complete(out, r)]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in recs:
        row = dict(r)
        row["anomaly_types"] = ";".join(r.get("anomaly_types") or [])
        row["label"] = "" if r.get("label") is None else r["label"]
        row["condition"] = condition_text(r.get("condition"))
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in MANIFEST_COLUMNS})
    write_text_atomic(out / "manifest.csv", buf.getvalue())
    previous = {}
    if run_settings is None and (out / "manifest.json").is_file():
        try:
            previous = json.loads((out / "manifest.json").read_text()).get("run", {})
        except (json.JSONDecodeError, OSError):
            previous = {}
    write_text_atomic(out / "manifest.json", _dump({"run": run_settings or previous, "n_samples": len(recs),
                                                     "samples": recs}))
    labelled = [r for r in recs if r.get("label") is not None]
    if labelled:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=LABEL_COLUMNS, lineterminator="\n")
        w.writeheader()
        lesions = {}
        for r in labelled:
            shape, spacing = r.get("shape") or [], r.get("spacing_mm") or []
            sp = {f"{s:g}" for s in spacing}
            w.writerow({
                "scan_id": r["scan_id"], "split": r.get("split") or "", "path": r["file"], "label": int(r["label"]),
                "mask_path": r.get("mask") or "", "anomaly_types": ";".join(r.get("anomaly_types") or []),
                "lesion_volume_mm3": round(float(r.get("lesion_volume_mm3") or 0.0), 3),
                "n_anomalies": len(r.get("anomalies") or []), "orientation": "RAS",
                "shape": "x".join(str(s) for s in shape),
                "spacing_mm": sp.pop() if len(sp) == 1 else "x".join(f"{s:g}" for s in spacing),
                "seed": r["seed"], "index": r["index"], "clean_path": r.get("clean_file") or "",
            })
            if r.get("anomalies"):
                lesions[r["scan_id"]] = r["anomalies"]
        write_text_atomic(out / "labels.csv", buf.getvalue())
        write_text_atomic(out / "lesions.json", _dump(lesions))
    return recs


# ----------------------------------------------------------------------------- one sample

def _write_dicom(image: np.ndarray, affine: np.ndarray, out: Path, sid: str, seed: int, index: int,
                 modality: str, ct_window: Sequence[float]) -> str:
    from ..io.dicom_write import write_dicom_series
    from ..volume import Provenance, Volume

    final = out / "dicom" / sid
    final.parent.mkdir(parents=True, exist_ok=True)
    arr = image
    if modality == "CT":  # DICOM CT pixel values are HU: undo the window map
        lo, hi = (float(v) for v in ct_window)
        arr = image * (hi - lo) + lo
    tmp = Path(tempfile.mkdtemp(prefix=f".{sid}.", suffix=".tmp", dir=final.parent))
    try:
        write_dicom_series(Volume(arr, affine, Provenance(format="synthetic")), tmp, modality=modality,
                           series_description=f"SYNTHETIC medidiff sample {index} (not a patient)",
                           patient_id=f"SYNTH-{seed}", patient_name="SYNTHETIC^medidiff",
                           derived=True, rng_or_seed=None)
        if final.exists():
            shutil.rmtree(final)  # a partial series from an interrupted run (no sidecar yet)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _rel(final, out)


def _brain_mask(image: np.ndarray) -> tuple[np.ndarray, str]:
    from .quality import foreground

    fg = foreground(image)
    if fg.sum() >= max(27, 0.01 * fg.size):
        return fg, "estimated"
    # untrained / collapsed model: fall back to the grid interior so insertion still works
    inner = np.zeros(image.shape, bool)
    inner[tuple(slice(1, s - 1) for s in image.shape)] = True
    return inner, "fallback_interior"


def _finish_sample(out: Path, image: np.ndarray, index: int, seed: int, settings: dict[str, Any],
                   opts: SynthOptions, affine: np.ndarray, spacing: Sequence[float], modality: str,
                   ct_window: Sequence[float], seconds: float, batch: dict[str, Any]) -> dict[str, Any]:
    from ..io.nifti import write_nifti
    from ..volume import Provenance, Volume

    sid = scan_id(index)
    rec: dict[str, Any] = {
        "scan_id": sid, "index": int(index), "seed": int(seed), **settings,
        "seconds": round(float(seconds), 4), **batch,
        "shape": list(image.shape), "spacing_mm": [float(s) for s in spacing], "affine": affine.tolist(),
        "units": "model", "modality": modality,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "label": None, "mask": None, "clean_file": None, "anomaly_types": [], "anomalies": [],
        "lesion_volume_mm3": 0.0, "dicom_dir": None, "split": None,
    }
    final = image
    if opts.with_anomalies:
        rec["split"] = opts.split
        rec["label"] = 0
        if is_anomalous(index, opts.anomaly_fraction):
            from ..lesions.anomalies import KINDS, insert_anomalies, insert_random_anomalies

            brain, how = _brain_mask(image)
            rng = np.random.default_rng([int(seed), 0xA11])  # anomaly stream: independent of the sampling noise
            kinds = list(opts.anomaly_kinds or KINDS)
            if opts.anomaly_count is None:
                final, mask, infos = insert_random_anomalies(image, spacing, rng, kinds=kinds, brain_mask=brain)
            else:
                chosen = [str(k) for k in rng.choice(kinds, size=int(opts.anomaly_count),
                                                     replace=int(opts.anomaly_count) > len(kinds))]
                final, mask, infos = insert_anomalies(image, spacing, chosen, rng, brain_mask=brain)
            write_nifti(Volume(image, affine, Provenance(format="synthetic")), out / "clean" / f"{sid}.nii.gz")
            mpath = out / "masks" / f"{sid}_mask.nii.gz"
            write_nifti(Volume(mask.astype(np.float32), affine), mpath, dtype=np.uint8)
            rec.update(label=1, mask=_rel(mpath, out), clean_file=f"clean/{sid}.nii.gz",
                       anomaly_types=sorted({i["kind"] for i in infos}), anomalies=infos,
                       lesion_volume_mm3=float(mask.sum() * float(np.prod(spacing))), brain_mask=how)
    ipath = out / "images" / f"{sid}.nii.gz"
    write_nifti(Volume(final, affine, Provenance(format="synthetic")), ipath)
    rec["file"] = _rel(ipath, out)
    if opts.dicom:
        rec["dicom_dir"] = _write_dicom(final, affine, out, sid, seed, index, modality, ct_window)
    write_text_atomic(out / SIDE_DIR / f"{sid}.json", _dump(rec))  # commit marker: written last
    return rec


# ----------------------------------------------------------------------------- entry point

def open_generator(model: str | Path, device, scfg: SamplerConfig, guidance: float | None = None):
    """(loaded model, sampler, noise kind, model kind) for a pixel-space model folder
    (``medidiff train``) or a latent-diffusion generator folder (``pipelines/train_generator.py``)."""
    from ..model.folder import LATENT_KIND, PIXEL_KIND, model_kind

    if model_kind(model) == LATENT_KIND:
        from ..generator.sampler import LatentSampler
        from ..generator.store import load_generator

        loaded = load_generator(model, device)
        return loaded, LatentSampler(loaded, scfg, guidance), f"latent_{loaded.config.latent.scheduler}", LATENT_KIND
    if guidance is not None:
        raise ValueError("--guidance needs a conditioned latent-diffusion generator")
    from ..model.store import load_model
    from .sampler import Sampler

    loaded = load_model(model, device)
    return loaded, Sampler(loaded, scfg), loaded.config.diffusion.noise, PIXEL_KIND


def grid_affine(pcfg) -> np.ndarray:
    """Affine of the model grid: MNI coordinates for template-space models, else RAS centred at 0."""
    from ..geometry import model_affine

    spacing = tuple(float(s) for s in pcfg.spacing)
    if pcfg.space == "template":
        from ..frontend import load_template, template_grid_affine

        return template_grid_affine(spacing, pcfg.grid, load_template(pcfg.frontend_config().template))
    return model_affine(spacing, pcfg.grid, (0.0, 0.0, 0.0))


def _settings(loaded, scfg: SamplerConfig, opts: SynthOptions, precision: str, noise: str,
              guidance: float | None = None) -> dict[str, Any]:
    from ..lesions.anomalies import KINDS

    return {
        "guidance": guidance,
        "model_hash": loaded.model_hash,
        "sampler": scfg.sampler, "steps": int(scfg.steps), "spacing": scfg.spacing, "temperature": float(scfg.temperature),
        "eta": float(scfg.eta), "clip_x0": list(scfg.clip_x0) if scfg.clip_x0 else None,
        "noise": noise, "precision": precision,
        "with_anomalies": bool(opts.with_anomalies),
        "anomaly_fraction": float(opts.anomaly_fraction) if opts.with_anomalies else None,
        "anomaly_kinds": sorted(opts.anomaly_kinds or KINDS) if opts.with_anomalies else None,
        "anomaly_count": opts.anomaly_count if opts.with_anomalies else None,
    }


def _differences(rec: dict[str, Any], settings: dict[str, Any], seed: int,
                 condition: dict[str, Any] | None = None) -> list[str]:
    diffs = [f"{k}: {rec.get(k)!r} -> {settings.get(k)!r}" for k in CONTENT_KEYS if rec.get(k) != settings.get(k)]
    if (rec.get("condition") or None) != (condition or None):
        diffs.append(f"condition: {condition_text(rec.get('condition')) or 'none'} -> {condition_text(condition) or 'none'}")
    if int(rec.get("seed", -1)) != int(seed):
        diffs.append(f"seed: {rec.get('seed')} -> {seed}")
    return diffs


def _check_anomaly_options(opts: SynthOptions) -> None:
    """Refuse a bad anomaly fraction or kind before the generator is loaded."""
    if not 0 <= float(opts.anomaly_fraction) <= 1:
        raise ValueError(f"anomaly fraction must be in [0, 1], got {opts.anomaly_fraction}")
    if opts.anomaly_kinds:
        from ..lesions.anomalies import KINDS

        bad = [k for k in opts.anomaly_kinds if k not in KINDS]
        if bad:
            raise ValueError(f"unknown anomaly kind(s) {bad}; choose from {KINDS}")


def _check_conditions(kind: str, sampler, cond_of: dict[int, dict[str, Any] | None]) -> None:
    """Refuse conditions a pixel-space model cannot take, or a latent generator was not trained with."""
    if kind != "latent_diffusion" and any(cond_of.values()):
        raise ValueError("--condition needs a conditioned latent-diffusion generator; this is a pixel-space model")
    if kind == "latent_diffusion":
        for c in {condition_text(c): c for c in cond_of.values()}.values():
            sampler.condition_tensor(c, 1)  # refuses a condition the generator was not trained with


def _precision(scfg: SamplerConfig, device) -> str:
    """The precision the sampler actually runs at on ``device``."""
    try:
        from ..runtime import resolve_precision

        return resolve_precision(scfg.precision, device)
    except ImportError:  # older runtime module
        return scfg.precision


def _run_settings(settings: dict[str, Any], kind: str, opts: SynthOptions, pcfg, spacing: tuple[float, ...],
                  affine: np.ndarray, scfg: SamplerConfig, sampler) -> dict[str, Any]:
    """The run-level record written beside the manifest: settings plus grid, units and intensity note."""
    return {**settings, "model_kind": kind, "base_seed": int(opts.base_seed), "grid": list(pcfg.grid),
            "spacing_mm": list(spacing), "affine": affine.tolist(), "units": "model",
            "space": pcfg.space, "batch_size": int(scfg.batch_size),
            "conditioning": list(getattr(sampler, "conditioning", ())),
            "intensity_note": ("MRI: white-matter median = 0.8 (background 0)" if pcfg.intensity == "wm_median"
                               else "MRI: x / p99.5 inside the brain (background 0, brain ~[0, 1])")
            + "; CT: HU window mapped to [0, 1]"}


def _sort_existing(out: Path, pairs: list[tuple[int, int]], settings: dict[str, Any], opts: SynthOptions,
                   cond_of: dict[int, dict[str, Any] | None]
                   ) -> tuple[list[tuple[int, int]], int, list[dict[str, Any]]]:
    """(indices to generate, number already complete, complete ones that still need a DICOM export);
    raises SynthConflict when the folder holds samples made with other settings and no --overwrite."""
    existing = {int(r["index"]): r for r in read_sidecars(out)}
    todo: list[tuple[int, int]] = []
    n_existing = 0
    conflicts = []
    dicom_only: list[dict[str, Any]] = []
    for idx, seed in pairs:
        rec = existing.get(idx)
        if rec is None or not _complete(out, rec):
            todo.append((idx, seed))
            continue
        diffs = _differences(rec, settings, seed, cond_of[idx])
        if diffs and not opts.overwrite:
            conflicts.append(f"{rec['scan_id']}: " + ", ".join(diffs))
        elif diffs or opts.overwrite:
            todo.append((idx, seed))
        else:
            n_existing += 1
            if opts.dicom and not (rec.get("dicom_dir") and (out / rec["dicom_dir"]).is_dir()):
                dicom_only.append(rec)
    if conflicts:
        more = f" (+{len(conflicts) - 3} more)" if len(conflicts) > 3 else ""
        raise SynthConflict(f"{out} holds samples made with other settings: " + "; ".join(conflicts[:3]) + more
                            + " — use another --out, the same settings, or --overwrite")
    return todo, n_existing, dicom_only


def _export_stored_dicom(out: Path, recs: list[dict[str, Any]], affine: np.ndarray, modality: str,
                         ct_window: Sequence[float]) -> None:
    """--dicom added on a re-run: export the stored NIfTI, no resampling."""
    from ..io.nifti import read_nifti

    for rec in recs:
        img = read_nifti(out / rec["file"]).array
        rec["dicom_dir"] = _write_dicom(img, affine, out, rec["scan_id"], int(rec["seed"]), int(rec["index"]),
                                        modality, ct_window)
        write_text_atomic(out / SIDE_DIR / f"{rec['scan_id']}.json", _dump(rec))


def _generate(todo: list[tuple[int, int]], sampler, kind: str, scfg: SamplerConfig,
              cond_of: dict[int, dict[str, Any] | None], progress: bool,
              finish: Callable[[np.ndarray, int, int, float, dict[str, Any]], None]) -> tuple[int, float]:
    """Sample ``todo`` in batches under a progress bar, handing each image to ``finish``;
    returns (samples done, seconds spent sampling)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    gen_seconds = 0.0
    n_done = 0
    steps = int(scfg.steps)
    columns = [TextColumn("[bold]synthesize"), TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.fields[samples]}"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn()]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("", total=len(todo) * steps, samples=f"0/{len(todo)} samples")
        bs = int(scfg.batch_size)
        for start in range(0, len(todo), bs):
            chunk = todo[start:start + bs]
            bar.update(task, description=", ".join(scan_id(i) for i, _ in chunk[:2])
                       + (" ..." if len(chunk) > 2 else ""))
            b = len(chunk)
            t0 = time.perf_counter()
            if kind == "latent_diffusion":
                images = sampler.sample([s for _, s in chunk], on_step=lambda k: bar.advance(task, b),
                                        conditions=[cond_of[i] for i, _ in chunk])
            else:
                images = sampler.sample([s for _, s in chunk], on_step=lambda k: bar.advance(task, b))
            dt = time.perf_counter() - t0
            gen_seconds += dt
            for k, (idx, seed) in enumerate(chunk):
                finish(images[k], idx, seed, dt / b, {"batch_size": b, "batch_seconds": round(dt, 4),
                                                      "condition": cond_of[idx]})
                n_done += 1
            bar.update(task, samples=f"{n_done}/{len(todo)} samples")
    return n_done, gen_seconds


def synthesize_run(model: str | Path, out: str | Path, opts: SynthOptions, device: str = "auto",
                   progress: bool = True, log: Callable[[str], None] = print) -> SynthSummary:
    from ..runtime import resolve_device, set_threads

    t_start = time.perf_counter()
    _check_anomaly_options(opts)
    out = Path(out)
    pairs = plan(opts)
    set_threads()
    loaded, sampler, noise, kind = open_generator(model, resolve_device(device), opts.sampler, opts.guidance)
    scfg = sampler.cfg
    conditioned = bool(getattr(sampler, "conditioning", ()))
    cond_of = {idx: opts.condition_for(idx) for idx, _ in pairs}
    _check_conditions(kind, sampler, cond_of)
    guidance = float(sampler.guidance) if conditioned else None
    precision = _precision(scfg, loaded.device)
    settings = _settings(loaded, scfg, opts, precision, noise, guidance)
    pcfg = loaded.preprocess_config
    spacing = tuple(float(s) for s in pcfg.spacing)
    affine = grid_affine(pcfg)
    modality = "CT" if pcfg.modality == "ct" else "MR"
    run_settings = _run_settings(settings, kind, opts, pcfg, spacing, affine, scfg, sampler)

    todo, n_existing, dicom_only = _sort_existing(out, pairs, settings, opts, cond_of)
    out.mkdir(parents=True, exist_ok=True)
    log(f"synthesize: {len(pairs)} sample(s) requested, {n_existing} already in {out}, {len(todo)} to generate "
        f"({scfg.sampler}, {scfg.steps} steps, temperature {scfg.temperature:g}, batch {scfg.batch_size}, "
        f"grid {list(pcfg.grid)} at {list(spacing)} mm, {precision})"
        + (f"; conditions: {', '.join(sorted({condition_text(c) or 'none' for c in cond_of.values()}))}, "
           f"guidance {guidance:g}" if conditioned else ""))

    def finish(image: np.ndarray, idx: int, seed: int, seconds: float, batch: dict[str, Any]) -> None:
        _finish_sample(out, image, idx, seed, settings, opts, affine, spacing, modality, pcfg.ct_window,
                       seconds, batch)

    gen_seconds = 0.0
    n_done = 0
    try:
        _export_stored_dicom(out, dicom_only, affine, modality, pcfg.ct_window)
        if todo:
            n_done, gen_seconds = _generate(todo, sampler, kind, scfg, cond_of, progress, finish)
    finally:
        recs = rebuild_outputs(out, run_settings)
    quality = None
    if opts.quality and recs:
        from .quality import quality_report

        quality = quality_report(out, recs, loaded.preprocess_config, opts, log=log)
    return SynthSummary(out=out, n_total=len(recs), n_generated=n_done, n_existing=n_existing,
                        seconds=time.perf_counter() - t_start,
                        seconds_per_sample=(gen_seconds / n_done) if n_done else None, quality=quality,
                        labels=(out / "labels.csv") if (out / "labels.csv").is_file() else None)
