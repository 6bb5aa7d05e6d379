"""Scoring settings: how a scan is noised, reconstructed and turned into a map and a score.

Defaults are chosen on sample_data's *validation* split (see BENCHMARKS.md),
never on the test split. Every field can be overridden with ``--set key=value``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..model.backends import BACKENDS

SMOOTHING = ("median", "gaussian", "none")
NORMALIZATION = ("voxelwise", "global", "none")
T_COMBINE = ("reconstruction", "zscore")
SCORE_TYPES = ("topk_mean", "percentile", "supra_volume", "largest_cluster")


@dataclass
class ScoreConfig:
    # Partial noising: t* as fractions of the training timesteps. Several levels are combined by
    # t_combine: "reconstruction" averages the reconstructions into one residual; "zscore" keeps one
    # residual map per t*, z-scores each against its own healthy statistics and averages the z maps
    # (Graham et al. 2023: each t* has its own healthy spread, so raw residuals do not add up)
    t_fractions: tuple[float, ...] = (0.1,)
    t_combine: str = "reconstruction"
    steps: int = 1  # DDIM steps from t* to 0; 1 = single-step x0 prediction
    n_draws: int = 4  # noise draws per t*, batched through the network together
    batch_size: int = 8
    noise: str | None = None  # None: the model's training noise type
    precision: str = "auto"
    seed: int = 0
    # patch models only: sliding-window overlap when scoring; None = the model's own (model.patch_overlap)
    window_overlap: float | None = None
    # where the denoiser runs: torch (reference) | openvino (exported CPU runtime, `pip install 'medidiff[fast-cpu]'`)
    backend: str = "torch"
    # Residual -> map; structural_weight > 0 adds w * (1 - local SSIM(x, x̂))
    structural_weight: float = 0.0
    ssim_sigma_mm: float = 6.0
    smoothing: str = "median"
    smoothing_size: float = 3.0  # median: window in voxels; gaussian: sigma in mm
    erode_mm: float = 3.0  # foreground erosion: brain/body borders are reconstruction noise
    normalization: str = "voxelwise"  # needs calibration; falls back to none without it
    # Map -> scan score
    score: str = "supra_volume"  # mm³ above the calibrated voxel threshold (needs calibration)
    # largest_cluster: mm³ of the largest connected supra-threshold component (needs calibration)
    # cDDPM-style clean-up of the voxel decision: supra-threshold components smaller than this
    # are dropped (from the mask and from supra_volume / largest_cluster); 0 = keep all
    min_component_mm3: float = 0.0
    topk_fraction: float = 0.005
    percentile: float = 99.9
    # AutoDDPM-style inpainting refinement
    refine: bool = False
    refine_t_fraction: float = 0.1
    refine_dilate_mm: float = 4.0
    # Calibration targets
    voxel_fpr: float = 0.001
    scan_fpr: float = 0.05

    def __post_init__(self) -> None:
        _canonical_numbers(self)
        if isinstance(self.t_fractions, (int, float)):
            self.t_fractions = (float(self.t_fractions),)
        self.t_fractions = tuple(float(t) for t in self.t_fractions)
        errs = []
        if not self.t_fractions or any(not 0 < t < 1 for t in self.t_fractions):
            errs.append(f"t_fractions must be in (0, 1), got {list(self.t_fractions)}")
        if self.steps < 1:
            errs.append(f"steps must be >= 1, got {self.steps}")
        if self.n_draws < 1 or self.batch_size < 1:
            errs.append("n_draws and batch_size must be >= 1")
        if self.window_overlap is not None and not 0 <= self.window_overlap < 1:
            errs.append(f"window_overlap must be in [0, 1), got {self.window_overlap}")
        if self.backend not in BACKENDS:
            errs.append(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.smoothing not in SMOOTHING:
            errs.append(f"smoothing must be one of {SMOOTHING}")
        if self.normalization not in NORMALIZATION:
            errs.append(f"normalization must be one of {NORMALIZATION}")
        if self.t_combine not in T_COMBINE:
            errs.append(f"t_combine must be one of {T_COMBINE}")
        elif self.t_combine == "zscore" and self.normalization == "global":
            errs.append("t_combine=zscore needs voxelwise (or no) normalisation: one global mean/std cannot "
                        "z-score each t* on its own")
        if self.score not in SCORE_TYPES:
            errs.append(f"score must be one of {SCORE_TYPES}")
        if self.min_component_mm3 < 0:
            errs.append("min_component_mm3 must be >= 0")
        if not 0 < self.voxel_fpr < 1 or not 0 < self.scan_fpr < 1:
            errs.append("voxel_fpr and scan_fpr must be in (0, 1)")
        if errs:
            raise ValueError("score config: " + "; ".join(errs))

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "ScoreConfig":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown score option(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**d)

    def hash(self, runtime: dict[str, Any] | None = None) -> str:
        """Hash of everything that changes maps: these settings (not ``batch_size``: every noise
        draw has its own generator, so batching never changes a map) plus ``runtime`` — the
        resolved precision, device kind and noise type/parameters (see ``Scorer.runtime_settings``).

        Numbers are canonical (see :func:`_canonical_numbers`): ``smoothing_size=5`` and ``5.0``
        are one setting and one hash."""
        return settings_hash(self.to_dict(), runtime)


# ----------------------------------------------------------------------------- hashing

def _field_kinds() -> dict[str, str]:
    """Field name -> 'float' | 'int' | 'float?' (float or None) for the numeric fields."""
    kinds = {}
    for f in fields(ScoreConfig):
        t = str(f.type).replace(" ", "")
        if t in ("float", "int"):
            kinds[f.name] = t
        elif t in ("float|None", "Optional[float]"):
            kinds[f.name] = "float?"
    return kinds


def _canonical_numbers(cfg: "ScoreConfig") -> None:
    """Float settings are floats and integer settings ints, whatever the YAML, ``--set`` or JSON
    gave (``5`` vs ``5.0``): equal settings must hash alike. An integer setting given a
    fractional value is refused rather than truncated."""
    errs = []
    for name, kind in _FIELD_KINDS.items():
        v = getattr(cfg, name)
        if v is None and kind == "float?":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            if v is not None or kind != "float?":
                errs.append(f"{name} must be a number, got {v!r}")
            continue
        if kind == "int":
            if float(v) != int(v):
                errs.append(f"{name} must be a whole number, got {v!r}")
                continue
            setattr(cfg, name, int(v))
        else:
            setattr(cfg, name, float(v))
    if errs:
        raise ValueError("score config: " + "; ".join(errs))


def _hash_dict(d: dict[str, Any], runtime: dict[str, Any] | None) -> str:
    d = dict(d)
    d.pop("batch_size", None)
    if d.get("t_combine", "reconstruction") == "reconstruction":  # added later: the default keeps older hashes
        d.pop("t_combine", None)
    if d.get("window_overlap") is None:  # likewise
        d.pop("window_overlap", None)
    if d.get("backend", "torch") == "torch":  # likewise
        d.pop("backend", None)
    if runtime is not None:
        d["runtime"] = runtime
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def settings_hash(score_config: dict[str, Any], runtime: dict[str, Any] | None = None) -> str:
    """The settings hash of a settings dict (canonical numbers), as :meth:`ScoreConfig.hash`."""
    return _hash_dict(ScoreConfig.from_dict(score_config).to_dict(), runtime)


def stored_hash_forms(score_config: dict[str, Any], runtime: dict[str, Any] | None) -> set[str]:
    """Every hash a calibration made with ``score_config`` + ``runtime`` may carry: the canonical
    one, and the one of the settings exactly as stored (calibrations made before numbers were
    canonical hashed ``5`` and ``5.0`` differently; both shipped calibrations stay valid)."""
    return {settings_hash(score_config, runtime), _hash_dict(score_config, runtime)}


_FIELD_KINDS = _field_kinds()


def load_score_config(path: str | Path | None = None, overrides: Iterable[str] = (),
                      base: dict[str, Any] | None = None) -> ScoreConfig:
    """Settings from ``base`` (e.g. the calibrated settings) or an optional YAML
    (a ``score:`` section or a flat mapping), plus overrides such as
    ``score.steps=1`` or ``score.t_fractions=[0.1,0.2]``."""
    from ..model.config import apply_overrides

    d: dict[str, Any] = dict(base or {})
    if path is not None:
        d = yaml.safe_load(Path(path).read_text()) or {}
        d = d.get("score", d)
    d = apply_overrides({"score": d}, overrides)["score"]
    return ScoreConfig.from_dict(d)
