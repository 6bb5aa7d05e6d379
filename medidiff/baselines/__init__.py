"""Simple baselines evaluated by the same code as medidiff, writing the same output layout.

* ``intensity`` (variants ``hyper``, ``hypo``, ``abs``; or ``intensity-hyper`` etc.)
* ``normative``: voxel-wise mean/std of healthy training scans on the model grid
* ``autoencoder``: a compact 3D convolutional autoencoder
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..preprocess_config import PreprocessConfig
from .common import BASELINE_DIR, BaselineError, BaselineMethod, run_baseline

NAMES = ("intensity", "intensity-hyper", "intensity-hypo", "intensity-abs", "normative", "autoencoder")


DEFAULT_PREPROCESS = "default_preprocess.yaml"  # package data: the bundled model's preprocessing


def load_preprocess_config(source: str | Path | None) -> PreprocessConfig:
    """Preprocessing from a YAML with a ``preprocess:`` section, or a medidiff
    model folder (its model.json); the bundled model's (= configs/brain_t1_4mm.yaml's, shipped in
    the package as ``default_preprocess.yaml``, so installed and checkout runs agree) when None."""
    import yaml

    if source is None:
        from importlib.resources import files

        text = (files(__package__) / DEFAULT_PREPROCESS).read_text()
    else:
        source = Path(source)
        if source.is_dir():
            from ..model.store import read_metadata

            return PreprocessConfig.from_dict(read_metadata(source)["config"]["preprocess"])
        text = source.read_text()
    d = yaml.safe_load(text) or {}
    return PreprocessConfig.from_dict(d.get("preprocess", d))


def make_baseline(name: str, *, preprocess: PreprocessConfig | None = None, variant: str | None = None,
                  state_dir: str | Path | None = None, **kwargs: Any) -> BaselineMethod:
    """Build a baseline by name. With ``state_dir`` (an earlier OUT/baseline folder)
    a fitted normative model / autoencoder is loaded instead of trained."""
    from .autoencoder import AutoencoderBaseline
    from .intensity import IntensityBaseline
    from .normative import NormativeBaseline

    if name.startswith("intensity"):
        v = name.split("-", 1)[1] if "-" in name else (variant or "hyper")
        return IntensityBaseline(v, preprocess=preprocess,
                                 **{k: kwargs[k] for k in ("median_size", "erode_mm") if k in kwargs})
    if name == "normative":
        if state_dir is not None and (Path(state_dir) / "params.json").is_file():
            return NormativeBaseline.load(state_dir)
        return NormativeBaseline(preprocess, **{k: kwargs[k] for k in ("erode_mm", "min_coverage") if k in kwargs})
    if name in ("autoencoder", "ae"):
        if state_dir is not None and (Path(state_dir) / "params.json").is_file():
            return AutoencoderBaseline.load(state_dir)
        return AutoencoderBaseline(preprocess, **kwargs)
    raise BaselineError(f"unknown baseline {name!r}; choose from {', '.join(NAMES)}")


__all__ = ["BASELINE_DIR", "NAMES", "BaselineError", "BaselineMethod", "load_preprocess_config", "make_baseline",
           "run_baseline"]
