"""Calibration on healthy scans (no labels): residual statistics that normalise
maps, a voxel threshold and a scan threshold at target false-positive rates, and
the healthy score distribution that percentiles are reported against.

It runs the post-processor's own code (:class:`~medidiff.score.postprocess.PostProcessor`)
on every method's raw model-grid maps, on the model grid where the thresholds
are applied. What it stores:

* statistics and thresholds from **all** calibration scans (what scoring uses);
  each scan's map is normalised with statistics from the *other* scans, so the
  thresholds are placed on out-of-sample maps;
* an honest **leave-one-out** check: for each scan, the voxel and scan thresholds
  are re-derived from the other scans only and applied to it; the achieved voxel
  and scan FPRs come with Clopper-Pearson 95 % intervals (the voxel interval
  treats voxels as independent, which they are not: read it as a lower bound on
  the uncertainty);
* warnings when the data cannot support the target (fewer than 1/scan_fpr scans).

``calibration.json`` records the SHA-256 of ``calibration.safetensors``; a
missing, extra or altered tensor file is refused with what to do.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..io.atomic import atomic_path, write_text_atomic
from .config import ScoreConfig, settings_hash, stored_hash_forms
from .maps import NormStats
from .postprocess import PostProcessor

CALIBRATION_JSON = "calibration.json"
CALIBRATION_TENSORS = "calibration.safetensors"
FORMAT_VERSION = 2


class CalibrationError(Exception):
    pass


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial confidence interval for k successes in n trials."""
    from scipy.stats import beta

    if n <= 0:
        return (float("nan"), float("nan"))
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


@dataclass
class Calibration:
    model_hash: str
    score_config: dict[str, Any]
    score_config_hash: str
    n_scans: int
    voxel_threshold: float
    scan_threshold: float
    healthy_scores: list[float]
    voxel_fpr: float
    scan_fpr: float
    achieved_voxel_fpr: float  # leave-one-out (see module docstring)
    achieved_scan_fpr: float  # leave-one-out
    achieved_voxel_fpr_ci95: list[float] = field(default_factory=list)
    achieved_scan_fpr_ci95: list[float] = field(default_factory=list)
    n_false_positive_scans: int = 0
    voxel_fpr_per_scan: list[float] = field(default_factory=list)
    grid: list[int] = field(default_factory=list)
    method: str = "medidiff"
    runtime: dict[str, Any] = field(default_factory=dict)
    refine_voxel_threshold: float | None = None  # first-pass hole threshold of the inpainting refinement
    warnings: list[str] = field(default_factory=list)
    scan_ids: list[str] = field(default_factory=list)
    tensors_sha256: str | None = None
    format_version: int = FORMAT_VERSION
    stats: NormStats | None = None
    refine_stats: NormStats | None = None

    def percentile_of(self, score: float) -> float:
        """Percentage of healthy calibration scans scoring at or below ``score``."""
        h = np.asarray(self.healthy_scores)
        return float(100.0 * (h <= score).mean()) if h.size else float("nan")

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("stats", "refine_stats")}
        for key, st in (("", self.stats), ("refine_", self.refine_stats)):
            if st is not None:
                d[f"{key}global_mean"], d[f"{key}global_std"] = st.global_mean, st.global_std
        return d

    def summary_lines(self) -> list[str]:
        """What was computed, in words (the CLI prints these)."""
        vci, sci = self.achieved_voxel_fpr_ci95 or [math.nan] * 2, self.achieved_scan_fpr_ci95 or [math.nan] * 2
        lines = [
            f"calibrated on {self.n_scans} healthy scans",
            f"voxel threshold {self.voxel_threshold:.4g} (target FPR {self.voxel_fpr:g}); leave-one-out achieved "
            f"{self.achieved_voxel_fpr:.4g} [95% CI {vci[0]:.3g}-{vci[1]:.3g}, voxels treated as independent]",
            f"scan threshold {self.scan_threshold:.4g} (target FPR {self.scan_fpr:g}); leave-one-out achieved "
            f"{self.achieved_scan_fpr:.3g} ({self.n_false_positive_scans}/{self.n_scans} healthy scans flagged) "
            f"[95% CI {sci[0]:.3g}-{sci[1]:.3g}]",
        ]
        if self.runtime.get("precision") and self.runtime.get("device"):
            lines.append(f"measured in {self.runtime['precision']} on {self.runtime['device']}: thresholds apply only "
                         "when scoring computes the same way (other devices or precisions score uncalibrated)")
        return lines + [f"warning: {w}" for w in self.warnings]

    def _tensors(self) -> dict[str, np.ndarray]:
        t = {}
        for key, st in (("", self.stats), ("refine_", self.refine_stats)):
            if st is not None:
                t[f"{key}mean"], t[f"{key}std"] = st.mean, st.std
        return t

    def save(self, folder: str | Path) -> None:
        """Tensors first, then the JSON that names their hash (the JSON is what marks a calibration)."""
        from safetensors.numpy import save

        folder = Path(folder)
        tpath = folder / CALIBRATION_TENSORS
        tensors = self._tensors()
        if tensors:
            blob = save(tensors, metadata={"score_config_hash": self.score_config_hash})
            self.tensors_sha256 = hashlib.sha256(blob).hexdigest()
            with atomic_path(tpath) as tmp:
                Path(tmp).write_bytes(blob)
        else:
            self.tensors_sha256 = None
            tpath.unlink(missing_ok=True)
        write_text_atomic(folder / CALIBRATION_JSON, json.dumps(self.to_json(), indent=2))

    @classmethod
    def load(cls, folder: str | Path, model_hash: str | None = None) -> "Calibration | None":
        """None when the folder holds no calibration; :class:`CalibrationError` when what it holds is
        incomplete, altered or for another model."""
        folder = Path(folder)
        path, tpath = folder / CALIBRATION_JSON, folder / CALIBRATION_TENSORS
        redo = "re-run `medidiff calibrate` for this model"
        if not path.is_file():
            if tpath.is_file():
                raise CalibrationError(f"{tpath}: calibration tensors without {CALIBRATION_JSON}; {redo}")
            return None
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CalibrationError(f"{path}: not valid JSON ({exc}); {redo}") from exc
        if d.get("format_version") != FORMAT_VERSION:
            raise CalibrationError(f"{path}: calibration format {d.get('format_version', 1)} is not the current "
                                   f"{FORMAT_VERSION} (no hash link, in-sample FPRs); {redo}")
        if model_hash is not None and d.get("model_hash") != model_hash:
            raise CalibrationError(f"{path}: calibrated for model {str(d.get('model_hash', '?'))[:12]}, not this "
                                   f"model ({model_hash[:12]}); {redo}")
        glob = {k: d.pop(k, None) for k in ("global_mean", "global_std", "refine_global_mean", "refine_global_std")}
        try:
            cal = cls(**d)
            forms = stored_hash_forms(cal.score_config, cal.runtime)
        except (TypeError, ValueError) as exc:
            raise CalibrationError(f"{path}: settings not readable ({exc}); {redo}") from exc
        if cal.score_config_hash not in forms:
            raise CalibrationError(f"{path}: score_config_hash {cal.score_config_hash} does not match the settings "
                                   f"stored with it (edited by hand?); {redo}")
        if cal.tensors_sha256 is None:
            if tpath.is_file():
                raise CalibrationError(f"{tpath}: not referenced by {CALIBRATION_JSON} (left by another calibration?); {redo}")
            if ScoreConfig.from_dict(cal.score_config).normalization != "none":
                raise CalibrationError(f"{path}: normalisation needs statistics but none are recorded; {redo}")
            return cal
        if not tpath.is_file():
            raise CalibrationError(f"{tpath}: missing ({CALIBRATION_JSON} needs its normalisation statistics); {redo}")
        blob = tpath.read_bytes()
        if hashlib.sha256(blob).hexdigest() != cal.tensors_sha256:
            raise CalibrationError(f"{tpath}: does not match {CALIBRATION_JSON} (SHA-256 differs: altered or from "
                                   f"another calibration); {redo}")
        from safetensors.numpy import load

        t = load(blob)
        cal.stats = NormStats(t["mean"], t["std"], glob["global_mean"], glob["global_std"]) if "mean" in t else None
        if "refine_mean" in t:
            cal.refine_stats = NormStats(t["refine_mean"], t["refine_std"], glob["refine_global_mean"],
                                         glob["refine_global_std"])
        return cal


# ----------------------------------------------------------------------------- validity

@dataclass
class CalibrationCheck:
    """Whether a calibration's thresholds apply to these settings on this device and precision."""

    valid: bool
    reason: str | None = None  # why not, in words (None when valid)

    def status(self, applied: bool) -> str:
        """The per-scan wording (result.json, scores.csv)."""
        if self.valid:
            return "calibrated"
        if applied:
            return f"mismatched calibration applied (--use-mismatched-calibration): {self.reason}"
        return f"uncalibrated for these settings: {self.reason}"


def settings_differences(score_config: dict[str, Any], runtime: dict[str, Any] | None, cfg: ScoreConfig,
                         now_runtime: dict[str, Any] | None) -> list[tuple[str, Any, Any]]:
    """(setting, calibrated value, value now) for every difference that changes maps (numbers
    compared canonically; ``batch_size`` never changes a map and is left out)."""
    then = dict(ScoreConfig.from_dict(score_config).to_dict(),
                **{f"runtime.{k}": v for k, v in (runtime or {}).items()})
    now = dict(cfg.to_dict(), **{f"runtime.{k}": v for k, v in (now_runtime or {}).items()})
    keys = sorted(k for k in set(now) | set(then) if k != "batch_size" and now.get(k) != then.get(k))
    return [(k, then.get(k), now.get(k)) for k in keys]


def check_calibration(cal: "Calibration", cfg: ScoreConfig, runtime: dict[str, Any]) -> CalibrationCheck:
    """Valid when the settings and runtime (device kind, resolved precision, noise) hash exactly
    as the ones the thresholds were measured with; otherwise the reason names every difference."""
    if settings_hash(cal.score_config, cal.runtime) == cfg.hash(runtime):
        return CalibrationCheck(True)
    diff = settings_differences(cal.score_config, cal.runtime, cfg, runtime)
    words = {"runtime.precision": "precision", "runtime.device": "device", "runtime.noise": "noise",
             "runtime.noise_params": "noise parameters"}
    reason = "; ".join(f"{words.get(k, k)}: calibrated {json.dumps(a, default=str)}, now {json.dumps(b, default=str)}"
                       for k, a, b in diff) or "settings hash differs"
    return CalibrationCheck(False, reason)


# ----------------------------------------------------------------------------- fitting

@dataclass
class _Fit:
    stats: NormStats | None
    loo_maps: list[np.ndarray]  # each scan normalised without itself
    voxel_threshold: float
    scan_threshold: float
    healthy_scores: list[float]
    loo: dict[str, Any]


def _sums(raws, masks):
    fm = [m.astype(np.float64) for m in masks]
    s1 = sum(r * f for r, f in zip(raws, fm))
    s2 = sum((r.astype(np.float64) ** 2) * f for r, f in zip(raws, fm))
    # r[..., m]: a raw map may carry a leading t* axis (t_combine=zscore); the mask is spatial
    g1 = float(sum(r[..., m].sum() for r, m in zip(raws, masks)))
    g2 = float(sum((r[..., m].astype(np.float64) ** 2).sum() for r, m in zip(raws, masks)))
    gn = float(sum(m.sum() * (r.size // m.size) for r, m in zip(raws, masks)))
    return s1, s2, sum(fm), g1, g2, gn


def _loo_stats(raws, masks) -> tuple[NormStats, list[NormStats]]:
    s1, s2, cnt, g1, g2, gn = _sums(raws, masks)
    final = NormStats.from_sums(s1, s2, cnt, g1, g2, gn)
    loo = []
    for r, m in zip(raws, masks):
        rr, f = r.astype(np.float64), m.astype(np.float64)
        loo.append(NormStats.from_sums(s1 - rr * f, s2 - rr * rr * f, cnt - f, g1 - float(rr[..., m].sum()),
                                       g2 - float((rr[..., m] ** 2).sum()), gn - float(m.sum() * (r.size // m.size))))
    return final, loo


def _quantile(values: np.ndarray, q: float) -> float:
    return float(np.quantile(values, q))


def _leave_one_out_check(post: PostProcessor, maps, masks) -> dict[str, Any]:
    """For each scan: thresholds from the other scans only, applied to it."""
    cfg = post.cfg
    vals = [m[k] for m, k in zip(maps, masks)]
    n = len(maps)
    exceed, total, per_scan, fp = 0, 0, [], 0
    for i in range(n):
        others = [j for j in range(n) if j != i]
        vthr = _quantile(np.concatenate([vals[j] for j in others]), 1.0 - cfg.voxel_fpr)
        k = int((vals[i] > vthr).sum())
        exceed, total = exceed + k, total + vals[i].size
        per_scan.append(k / max(vals[i].size, 1))
        other_scores = [post.score(maps[j], masks[j], vthr) for j in others]
        sthr = _quantile(np.asarray(other_scores), 1.0 - cfg.scan_fpr)
        fp += int(post.score(maps[i], masks[i], vthr) > sthr)
    return {"achieved_voxel_fpr": exceed / max(total, 1), "achieved_voxel_fpr_ci95": list(clopper_pearson(exceed, total)),
            "voxel_fpr_per_scan": [float(v) for v in per_scan], "achieved_scan_fpr": fp / n,
            "achieved_scan_fpr_ci95": list(clopper_pearson(fp, n)), "n_false_positive_scans": fp}


def fit_thresholds(raws: Sequence[np.ndarray], masks: Sequence[np.ndarray], post: PostProcessor) -> _Fit:
    """Statistics and thresholds from healthy raw maps, with the post-processor's own normalise/score."""
    masks = [np.asarray(m, bool) for m in masks]
    cfg = post.cfg
    if cfg.normalization == "none":
        final, loo_maps = None, [post.normalize(r, m, None) for r, m in zip(raws, masks)]
    else:
        final, loo_stats = _loo_stats(raws, masks)
        loo_maps = [post.normalize(r, m, s) for r, m, s in zip(raws, masks, loo_stats)]
    voxels = np.concatenate([a[m] for a, m in zip(loo_maps, masks)])
    vthr = _quantile(voxels, 1.0 - cfg.voxel_fpr)
    scores = [post.score(a, m, vthr) for a, m in zip(loo_maps, masks)]
    sthr = _quantile(np.asarray(scores), 1.0 - cfg.scan_fpr)
    return _Fit(final, loo_maps, vthr, sthr, [float(s) for s in scores], _leave_one_out_check(post, loo_maps, masks))


def sample_size_warnings(n: int, cfg: ScoreConfig) -> list[str]:
    need = math.ceil(1.0 / cfg.scan_fpr - 1e-9)
    if n < need:
        return [f"only {n} healthy scans for a {cfg.scan_fpr:g} scan false-positive rate: at least {need} are needed "
                f"to place that threshold (with {n}, 1 flagged scan is already {1 / n:.2g}); the achieved rate is "
                "the leave-one-out achieved_scan_fpr (calibration.json), not the target"]
    return []


def build_calibration(fit: _Fit, cfg: ScoreConfig, *, model_hash: str, runtime: dict[str, Any], grid,
                      scan_ids: Sequence[str], method: str = "medidiff") -> Calibration:
    return Calibration(
        model_hash=model_hash, score_config=cfg.to_dict(), score_config_hash=cfg.hash(runtime),
        n_scans=len(fit.healthy_scores), voxel_threshold=fit.voxel_threshold, scan_threshold=fit.scan_threshold,
        healthy_scores=fit.healthy_scores, voxel_fpr=cfg.voxel_fpr, scan_fpr=cfg.scan_fpr, grid=[int(g) for g in grid],
        method=method, runtime=dict(runtime), warnings=sample_size_warnings(len(fit.healthy_scores), cfg),
        scan_ids=list(scan_ids), stats=fit.stats, **fit.loo)


def calibrate_maps(maps, ids: Sequence[str], post: PostProcessor, *, model_hash: str, runtime: dict[str, Any],
                   method: str = "medidiff", refine: Callable | None = None) -> Calibration:
    """Calibration from healthy :class:`ModelGridMap` s. ``refine(mg, first_pass_map, threshold)``
    (the inpainting refinement) is applied with the same rule it is scored with: holes are
    first-pass voxels above the first-pass calibrated threshold."""
    if len(maps) < 2:
        raise CalibrationError(f"calibration needs at least 2 healthy scans, got {len(maps)}")
    first = fit_thresholds([m.raw for m in maps], [m.region for m in maps], post)
    if refine is None:
        return build_calibration(first, post.cfg, model_hash=model_hash, runtime=runtime,
                                 grid=maps[0].region.shape, scan_ids=ids, method=method)
    refined = [refine(m, amap, first.voxel_threshold) for m, amap in zip(maps, first.loo_maps)]
    fit = fit_thresholds([m.raw for m in refined], [m.region for m in refined], post)
    cal = build_calibration(fit, post.cfg, model_hash=model_hash, runtime=runtime, grid=maps[0].region.shape,
                            scan_ids=ids, method=method)
    cal.refine_stats, cal.refine_voxel_threshold = first.stats, first.voxel_threshold
    return cal


def collect_maps(scans, make_map: Callable, log: Callable[[str], None], progress: bool = False,
                 label: str = "calibrating"):
    """Model-grid maps of healthy scans; a scan that fails is logged and left out."""
    from rich.progress import Progress

    maps, ids = [], []
    with Progress(disable=not progress) as bar:
        task = bar.add_task(label, total=len(scans))
        for ref in scans:
            try:
                maps.append(make_map(ref.load()))
                ids.append(ref.scan_id)
            except Exception as exc:  # one bad healthy scan must not stop calibration
                log(f"calibration: failed: {ref.source}: {exc}")
            bar.advance(task)
    return maps, ids


def calibration_settings(model_dir: str | Path, config_path: str | Path | None, overrides: tuple[str, ...],
                         log=print) -> tuple[ScoreConfig, Any]:
    """The settings a calibration is made with: the model's method (method.json) plus explicit
    ``--set``/``--config``; every setting that then differs from the method is logged, so a
    recalibration never changes the method silently. A folder without method.json starts from its
    existing calibration's settings, else from the defaults (said in one line)."""
    from .config import load_score_config
    from .method import METHOD_FILE, format_diff, load_method, method_diff

    method = load_method(model_dir)
    base = None
    if method is not None:
        base = method.score_config
    else:
        try:
            old = Calibration.load(model_dir)
        except CalibrationError:
            old = None
        if old is not None and config_path is None:
            base = old.score_config
            log(f"{model_dir}: no {METHOD_FILE}: starting from the settings of its existing calibration")
        elif config_path is None:
            log(f"{model_dir}: no {METHOD_FILE}: starting from the default settings (not a validated method; "
                f"copy the {METHOD_FILE} of the model you started from to keep its method)")
    cfg = load_score_config(config_path, overrides, base=None if config_path is not None else base)
    if method is not None:
        diff = method_diff(method.score_config, cfg)
        if diff:
            sets = " ".join(f"--set score.{k}={json.dumps(b, separators=(',', ':'))}" for k, _, b in diff)
            log(f"settings differ from the model's method ({method.describe()}):\n" + "\n".join(format_diff(diff))
                + f"\n  `medidiff score` uses the method: pass the same {sets} when scoring, or this calibration "
                  "will not apply")
        else:
            log(f"settings: the model's method ({method.describe()})")
    return cfg, method


def calibrate_model(model_dir: str | Path, healthy: str | Path, *, overrides: tuple[str, ...] = (),
                    config_path: str | Path | None = None, device: str = "auto", limit: int | None = None,
                    progress: bool = True, log=print) -> Calibration:
    """Score held-out healthy scans with the model and store the calibration in its folder."""
    from ..io.discover import discover
    from ..runtime import resolve_device, set_threads
    from ..model.store import load_model
    from .pipeline import Scorer

    set_threads(power_of_two=True)
    loaded = load_model(model_dir, device=resolve_device(device))
    cfg, method = calibration_settings(model_dir, config_path, overrides, log)
    found = discover(healthy)
    for s in found.skipped:
        log(f"skipped: {s.path}: {s.reason}")
    scans = found.scans[:limit] if limit else found.scans
    scorer = Scorer(loaded, cfg, calibration=None)
    maps, ids = collect_maps(scans, scorer.first_pass, log, progress)
    cal = calibrate_maps(maps, ids, scorer.post, model_hash=loaded.model_hash, runtime=scorer.runtime_settings(),
                         refine=scorer.refine if cfg.refine else None)
    cal.save(model_dir)
    return cal
