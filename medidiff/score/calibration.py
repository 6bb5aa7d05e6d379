"""Calibration on healthy scans (no labels): residual statistics that normalize
maps, a voxel threshold and a scan threshold at target false-positive rates, and
the healthy score distribution that percentiles are reported against.

Thresholds are estimated leave-one-out: each healthy scan is normalized with
statistics from the *other* scans, so the threshold's false-positive rate is
what a new healthy scan would see, not an optimistic in-sample figure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import atomic_path, write_text_atomic
from .config import ScoreConfig
from .maps import NormStats, normalize_map, scan_score

CALIBRATION_JSON = "calibration.json"
CALIBRATION_TENSORS = "calibration.safetensors"


class CalibrationError(Exception):
    pass


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
    achieved_voxel_fpr: float
    achieved_scan_fpr: float
    stats: NormStats | None = None
    scan_ids: list[str] = field(default_factory=list)

    def percentile_of(self, score: float) -> float:
        """Percentage of healthy calibration scans scoring at or below ``score``."""
        h = np.asarray(self.healthy_scores)
        return float(100.0 * (h <= score).mean()) if h.size else float("nan")

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "stats"}
        if self.stats is not None:
            d["global_mean"] = self.stats.global_mean
            d["global_std"] = self.stats.global_std
        return d

    def save(self, run_dir: str | Path) -> None:
        from safetensors.numpy import save_file

        run_dir = Path(run_dir)
        if self.stats is not None:
            with atomic_path(run_dir / CALIBRATION_TENSORS) as tmp:
                save_file({"mean": self.stats.mean, "std": self.stats.std}, str(tmp))
        write_text_atomic(run_dir / CALIBRATION_JSON, json.dumps(self.to_json(), indent=2))

    @classmethod
    def load(cls, run_dir: str | Path, model_hash: str | None = None) -> "Calibration | None":
        run_dir = Path(run_dir)
        path = run_dir / CALIBRATION_JSON
        if not path.is_file():
            return None
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"{path}: not valid JSON ({exc})") from exc
        if model_hash is not None and d.get("model_hash") != model_hash:
            raise CalibrationError(f"{path}: calibrated for model {d.get('model_hash', '?')[:12]}, not this model "
                                   f"({model_hash[:12]}); re-run `medidiff calibrate`")
        gm, gs = d.pop("global_mean", None), d.pop("global_std", None)
        stats = None
        tpath = run_dir / CALIBRATION_TENSORS
        if tpath.is_file() and gm is not None:
            from safetensors.numpy import load_file

            t = load_file(str(tpath))
            stats = NormStats(t["mean"], t["std"], gm, gs)
        return cls(stats=stats, **d)


def fit_calibration(raw_maps: list[np.ndarray], fg_masks: list[np.ndarray], cfg: ScoreConfig, model_hash: str,
                    voxel_volume_mm3: float, scan_ids: list[str] | None = None) -> Calibration:
    """Fit statistics and thresholds from healthy raw (un-normalized) maps on the model grid."""
    n = len(raw_maps)
    if n < 2:
        raise CalibrationError(f"calibration needs at least 2 healthy scans, got {n}")
    masks = [m.astype(bool) for m in fg_masks]
    fm = [m.astype(np.float64) for m in masks]
    s1 = sum(r * m for r, m in zip(raw_maps, fm))
    s2 = sum((r.astype(np.float64) ** 2) * m for r, m in zip(raw_maps, fm))
    cnt = sum(fm)
    g1 = float(sum(r[m].sum() for r, m in zip(raw_maps, masks)))
    g2 = float(sum((r[m].astype(np.float64) ** 2).sum() for r, m in zip(raw_maps, masks)))
    gn = float(sum(m.sum() for m in masks))
    final = NormStats.from_sums(s1, s2, cnt, g1, g2, gn)

    loo_maps = []
    for r, m, f in zip(raw_maps, masks, fm):
        rr = r.astype(np.float64)
        stats = NormStats.from_sums(s1 - rr * f, s2 - rr * rr * f, cnt - f, g1 - float(r[m].sum()),
                                    g2 - float((rr[m] ** 2).sum()), gn - float(m.sum()))
        loo_maps.append(normalize_map(r, m, stats if cfg.normalization != "none" else None, cfg))
    voxels = np.concatenate([lm[m] for lm, m in zip(loo_maps, masks)])
    voxel_thr = float(np.quantile(voxels, 1.0 - cfg.voxel_fpr))
    scores = [scan_score(lm, m, cfg, voxel_volume_mm3, voxel_thr) for lm, m in zip(loo_maps, masks)]
    scan_thr = float(np.quantile(scores, 1.0 - cfg.scan_fpr))
    return Calibration(
        model_hash=model_hash,
        score_config=cfg.to_dict(),
        score_config_hash=cfg.hash(),
        n_scans=n,
        voxel_threshold=voxel_thr,
        scan_threshold=scan_thr,
        healthy_scores=[float(s) for s in scores],
        voxel_fpr=cfg.voxel_fpr,
        scan_fpr=cfg.scan_fpr,
        achieved_voxel_fpr=float((voxels > voxel_thr).mean()),
        achieved_scan_fpr=float(np.mean(np.asarray(scores) > scan_thr)),
        stats=final if cfg.normalization != "none" else None,
        scan_ids=list(scan_ids or []),
    )


def calibrate_model(model_dir: str | Path, healthy: str | Path, *, overrides: tuple[str, ...] = (),
                    config_path: str | Path | None = None, device: str = "auto", limit: int | None = None,
                    progress: bool = True, log=print) -> Calibration:
    """Score held-out healthy scans with the model and store the calibration in its folder."""
    from ..io.discover import discover
    from ..runtime import resolve_device, set_threads
    from ..train.checkpoint import load_model
    from .config import load_score_config
    from .pipeline import Scorer

    set_threads()
    loaded = load_model(model_dir, device=resolve_device(device))
    cfg = load_score_config(config_path, overrides)
    found = discover(healthy)
    for s in found.skipped:
        log(f"skipped: {s.path}: {s.reason}")
    scans = found.scans[:limit] if limit else found.scans
    scorer = Scorer(loaded, cfg, calibration=None)
    raws, masks, ids = [], [], []
    from rich.progress import Progress

    with Progress(disable=not progress) as bar:
        task = bar.add_task("calibrating", total=len(scans))
        for ref in scans:
            try:
                mg = scorer.model_grid(ref.load(), normalized=False)
                raws.append(mg.raw)
                masks.append(mg.mask)
                ids.append(ref.scan_id)
            except Exception as exc:
                log(f"failed: {ref.source}: {exc}")
            bar.advance(task)
    cal = fit_calibration(raws, masks, cfg, loaded.model_hash, scorer.voxel_volume, ids)
    cal.save(model_dir)
    return cal
