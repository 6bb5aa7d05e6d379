"""One post-processor for every method (in the spirit of anomalib's PostProcessor).

A method — the diffusion scorer or any baseline — supplies only a
:class:`ModelGridMap`: a raw anomaly map on the model grid and the region it is
scored in. Everything after that is done here, by the same code at calibration
and at scoring time:

1. normalisation with healthy statistics (voxel-wise or global z, or none);
2. the voxel decision ``map > voxel_threshold`` **on the model grid**, where the
   threshold was calibrated, so the calibrated voxel FPR holds for the mask;
3. the scan score (``supra_volume`` counts exactly the voxels of that decision,
   so score and mask agree), flag and percentile;
4. the source grid: the map is resampled linearly for display, the decision is
   resampled nearest-neighbour (a label is never re-thresholded after
   interpolation);
5. the :class:`~medidiff.score.result.ScanResult` contract.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..io.errors import ScanError
from ..preprocess import Preprocessed
from ..volume import Volume
from .config import ScoreConfig
from .maps import NormStats, min_component_voxels, normalize_map, scan_score, voxel_decision
from .result import ScanResult


@dataclass
class ModelGridMap:
    """What a method hands to the post-processor."""

    pre: Preprocessed
    # float32 raw anomaly map on the model grid (0 outside ``region``); (n_t, *grid) with t_combine=zscore
    raw: np.ndarray
    region: np.ndarray  # bool scoring mask on the model grid
    n_evals: int = 0
    recon: np.ndarray | None = None  # model-grid reconstruction (model intensity units), if the method has one
    amap: np.ndarray | None = None  # normalised map, filled by the post-processor


class PostProcessor:
    def __init__(self, cfg: ScoreConfig, spacing_mm, calibration=None, uncalibrated_reason: str | None = None):
        self.cfg = cfg
        self.calibration = calibration
        # why there is no calibration to apply (e.g. "uncalibrated for these settings: precision ..."),
        # said in every result's warnings
        self.uncalibrated_reason = uncalibrated_reason
        self.voxel_volume = float(np.prod(np.asarray(spacing_mm, dtype=np.float64)))

    @property
    def voxel_threshold(self) -> float | None:
        return None if self.calibration is None else self.calibration.voxel_threshold

    def normalize(self, raw: np.ndarray, region: np.ndarray, stats: NormStats | None = None) -> np.ndarray:
        """z-like map; ``stats`` defaults to the calibration's (leave-one-out stats during calibration)."""
        if stats is None and self.calibration is not None:
            stats = self.calibration.stats
        return normalize_map(raw, region, stats, self.cfg)

    def decide(self, amap: np.ndarray, region: np.ndarray, voxel_threshold: float) -> np.ndarray:
        """The voxel decision on the model grid (bool): the voxels the supra-threshold scores count."""
        return voxel_decision(amap, region, voxel_threshold, min_component_voxels(self.cfg, self.voxel_volume))[0]

    def score(self, amap: np.ndarray, region: np.ndarray, voxel_threshold: float | None) -> float:
        return scan_score(amap, region, self.cfg, self.voxel_volume, voxel_threshold)

    def finish(self, volume: Volume, mg: ModelGridMap, t0: float | None = None, keep_model_grid: bool = False,
               with_reconstruction: bool = False) -> ScanResult:
        """Normalise, decide, score and map back onto ``volume``'s exact grid."""
        t0 = time.perf_counter() if t0 is None else t0
        if not mg.region.any():
            src = volume.provenance.source_paths[0] if volume.provenance.source_paths else volume.scan_id
            raise ScanError(src, "no foreground found to score (the image is blank or nearly constant after "
                                 "preprocessing)", "check the scan; for CT or unusual contrasts set preprocess.foreground")
        mg.amap = self.normalize(mg.raw, mg.region)
        cal, vthr = self.calibration, self.voxel_threshold
        score = self.score(mg.amap, mg.region, vthr)
        warnings = list(volume.provenance.warnings)
        if cal is None:
            warnings.append(f"{self.uncalibrated_reason or 'uncalibrated model'}: the map is the raw residual, "
                            "no mask, flag or percentile"
                            + ("; the scan score is the top-k mean, not the supra-threshold volume"
                               if self.cfg.score in ("supra_volume", "largest_cluster") else ""))
        mapping = mg.pre.mapping
        amap_src = mapping.to_source(mg.amap, order=1, fill=0.0, antialias=True).astype(np.float32)
        mask_src = None
        if vthr is not None:
            decision = self.decide(mg.amap, mg.region, vthr)
            mask_src = (mapping.to_source(decision.astype(np.float32), order=0, fill=0.0, antialias=False)
                        > 0.5).astype(np.uint8)
        brain = getattr(mg.pre, "brain_source", None)
        if brain is not None:  # the front end's brain mask: nothing outside the brain is ever anomalous
            amap_src[~brain] = 0.0
            if mask_src is not None:
                mask_src[~brain] = 0
        recon_src = None
        if with_reconstruction and mg.recon is not None:
            recon_src = mapping.to_source(mg.pre.denormalize(mg.recon), order=1, fill=0.0).astype(np.float32)
        return ScanResult(
            scan_id=volume.scan_id, score=score,
            flag=bool(score > cal.scan_threshold) if cal is not None else None,
            percentile=cal.percentile_of(score) if cal is not None else None,
            anomaly_map=amap_src, mask=mask_src, reconstruction=recon_src, n_evals=mg.n_evals,
            seconds=time.perf_counter() - t0, model_grid=mg if keep_model_grid else None, warnings=warnings,
            qc=dict(getattr(mg.pre, "qc", None) or {}),
            extra_maps=dict(getattr(mg.pre, "source_maps", None) or {}),
        )
