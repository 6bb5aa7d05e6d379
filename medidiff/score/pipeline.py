"""Score one scan with the diffusion model: preprocess → reconstruct → raw map on the
model grid, then the shared :class:`~medidiff.score.postprocess.PostProcessor`
(normalise, threshold, score, back onto the source grid).
"""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage

from ..volume import Volume
from .cache import active_cache, cached, preprocessed
from .calibration import Calibration, CalibrationCheck, check_calibration
from .config import ScoreConfig
from .maps import normalize_map, raw_map, scoring_mask
from .postprocess import ModelGridMap, PostProcessor
from .reconstruct import Reconstructor
from .result import ScanResult

__all__ = ["ModelGridMap", "ScanResult", "Scorer"]


class Scorer:
    """``calibration`` is applied as given (thresholds, flags, percentiles); :func:`medidiff.batch.scorer.
    load_scorer` decides whether a model folder's calibration is valid for the settings first
    (:meth:`check_calibration`). ``precision``: a resolved precision to use instead of resolving
    ``cfg.precision`` here (Dask workers take the client's, so every process computes alike)."""

    def __init__(self, loaded, cfg: ScoreConfig, calibration: Calibration | None = None,
                 precision: str | None = None):
        self.loaded = loaded
        self.cfg = cfg
        self.calibration = calibration
        # filled by load_scorer: the model's method, the folder's calibration (applied or not) and its check
        self.method = None
        self.calibration_record = calibration
        self.calibration_check: CalibrationCheck | None = None
        self.calibration_applied = calibration is not None
        self.reconstructor = Reconstructor(
            loaded, cfg, calibrated_precision=calibration.runtime.get("precision") if calibration else None,
            precision=precision)
        self.pcfg = loaded.preprocess_config
        self.spacing = np.asarray(self.pcfg.spacing, dtype=np.float64)
        self.post = PostProcessor(cfg, self.spacing, calibration)
        self.voxel_volume = self.post.voxel_volume
        if calibration is not None and cfg.refine and calibration.refine_stats is None \
                and calibration.refine_voxel_threshold is None:
            raise ValueError("score.refine=true but the calibration was made without the refinement; "
                             "re-run `medidiff calibrate --set score.refine=true`")

    def runtime_settings(self) -> dict:
        return self.reconstructor.runtime_settings()

    def settings_hash(self) -> str:
        return self.cfg.hash(self.runtime_settings())

    def check_calibration(self, calibration: Calibration | None = None) -> CalibrationCheck | None:
        """Whether ``calibration`` (default: this scorer's) was measured with these settings, device
        and precision; None without a calibration."""
        cal = self.calibration if calibration is None else calibration
        return None if cal is None else check_calibration(cal, self.cfg, self.runtime_settings())

    def first_pass(self, volume: Volume, seed: int | None = None) -> ModelGridMap:
        """Raw residual map of the plain partial-diffusion reconstruction."""
        pre, recs = self._reconstructions(volume, seed)
        region = scoring_mask(pre.foreground, self.cfg, self.spacing)
        n_evals = sum(r.n_evals for r in recs)
        if len(recs) > 1:
            # one raw map per t* (leading axis), z-scored per t* by the post-processor
            raw = np.stack([raw_map(pre.image, r.mean, region, self.cfg, self.spacing) for r in recs])
            recon = np.mean([r.mean for r in recs], axis=0).astype(np.float32)
            return ModelGridMap(pre=pre, raw=raw, region=region, n_evals=n_evals, recon=recon)
        raw = raw_map(pre.image, recs[0].mean, region, self.cfg, self.spacing)
        return ModelGridMap(pre=pre, raw=raw, region=region, n_evals=n_evals, recon=recs[0].mean)

    def warm_front_end(self, volume: Volume) -> None:
        """Run the front end of ``volume`` into the active first-pass cache, where scoring it will
        find it (a batch on a GPU reads the next scan ahead, :mod:`medidiff.batch.prefetch`)."""
        preprocessed(volume, self.pcfg)

    def _reconstructions(self, volume: Volume, seed: int | None):
        """Front end + reconstruction(s); inside ``first_pass_cache()`` (settings searches) both
        are reused for a scan already seen with the settings that produce them."""
        cache = active_cache()
        pre, key = preprocessed(volume, self.pcfg)
        c = self.cfg
        # a z-scored t* ensemble keeps one reconstruction per t* level: the same as that t* alone
        levels = [(f,) for f in c.t_fractions] if c.t_combine == "zscore" and len(c.t_fractions) > 1 \
            else [tuple(c.t_fractions)]
        seed = c.seed if seed is None else seed
        recs = []
        for fr in levels:
            # everything that changes a reconstruction: weights, t*, K, draws, seed, the sliding-window
            # overlap of a patch model, and the runtime (precision, device, noise)
            rkey = None if key is None else "|".join(map(str, (
                key, self.loaded.model_hash, fr, c.steps, c.n_draws, seed, c.window_overlap,
                sorted(self.runtime_settings().items()))))
            recs.append(cached(cache, rkey, lambda fr=fr: self.reconstructor.reconstruct(pre.image, seed=seed,
                                                                                       fractions=fr)))
        return pre, recs

    def refine(self, mg: ModelGridMap, first_map: np.ndarray, hole_threshold: float,
               seed: int | None = None) -> ModelGridMap:
        """AutoDDPM-style: voxels of the normalised first-pass map above ``hole_threshold``
        (dilated) are re-noised lightly and inpainted from healthy context (known voxels
        re-imposed at every step). Calibration calls this with the same rule."""
        hole = first_map > hole_threshold
        radius = np.maximum(np.round(self.cfg.refine_dilate_mm / self.spacing).astype(int), 1)
        hole = ndimage.binary_dilation(hole, structure=np.ones(tuple(2 * radius + 1), bool)) & mg.pre.foreground
        if not hole.any():
            return mg
        steps = max(self.cfg.steps, 5)  # inpainting needs a few steps to harmonise the border
        rec = self.reconstructor.reconstruct(mg.pre.image, seed=seed, fractions=(self.cfg.refine_t_fraction,),
                                             inpaint_mask=hole, steps=steps)
        raw = raw_map(mg.pre.image, rec.mean, mg.region, self.cfg, self.spacing)
        return ModelGridMap(pre=mg.pre, raw=raw, region=mg.region, n_evals=mg.n_evals + rec.n_evals, recon=rec.mean)

    def model_grid(self, volume: Volume, seed: int | None = None) -> ModelGridMap:
        mg = self.first_pass(volume, seed)
        if not self.cfg.refine:
            return mg
        cal = self.calibration
        if cal is None:
            raise ValueError("score.refine=true needs a calibrated model (the inpainting holes use the "
                             "calibrated first-pass threshold); run `medidiff calibrate --set score.refine=true`")
        first_map = normalize_map(mg.raw, mg.region, cal.refine_stats, self.cfg)
        return self.refine(mg, first_map, cal.refine_voxel_threshold, seed)

    def score_volume(self, volume: Volume, seed: int | None = None, keep_model_grid: bool = False,
                     with_reconstruction: bool = False) -> ScanResult:
        t0 = time.perf_counter()
        mg = self.model_grid(volume, seed=seed)
        return self.post.finish(volume, mg, t0, keep_model_grid=keep_model_grid,
                                with_reconstruction=with_reconstruction)
