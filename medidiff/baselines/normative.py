"""Voxel-wise normative model: per-voxel mean and standard deviation of healthy
training scans on the common model grid (the same :func:`~medidiff.preprocess.preprocess`
as the diffusion model, so the same grid and intensity normalisation).

map = |x - mean| / std on the model grid, inside the scan's eroded foreground
where at least half of the training scans had foreground, mapped back to the
source grid by the shared post-processor. The per-voxel std is floored at half its
median over the brain so a voxel with near-constant training values cannot
explode. Training scans are aligned only by the foreground bounding-box centre
(no registration), so anatomy varies between scans — which is what this baseline measures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..io.atomic import atomic_path, write_text_atomic
from ..preprocess import Preprocessed
from ..preprocess_config import PreprocessConfig
from ..score.cache import preprocessed
from ..score.config import ScoreConfig
from ..score.maps import scoring_mask
from ..score.postprocess import ModelGridMap
from .common import BaselineError, BaselineMethod

STATS_FILE = "normative.safetensors"


class NormativeBaseline(BaselineMethod):
    name = "normative"

    def __init__(self, preprocess_config: PreprocessConfig | None = None, erode_mm: float = 3.0,
                 min_coverage: float = 0.5):
        self.pcfg = preprocess_config or PreprocessConfig()
        self.erode_mm = float(erode_mm)
        self.min_coverage = float(min_coverage)
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.count: np.ndarray | None = None
        self.n_train = 0
        self.train_ids: list[str] = []

    def params(self) -> dict[str, Any]:
        return {"preprocess": self.pcfg.to_dict(), "erode_mm": self.erode_mm, "min_coverage": self.min_coverage}

    def fit(self, train: str | Path | None, log: Callable[[str], None] = print) -> None:
        if train is None:
            if self.mean is None:
                raise BaselineError("the normative baseline needs --train (a folder of healthy scans)")
            return
        from ..io.discover import discover

        shape = tuple(self.pcfg.grid)
        s1 = np.zeros(shape, np.float64)
        s2 = np.zeros(shape, np.float64)
        cnt = np.zeros(shape, np.float64)
        ids = []
        for ref in discover(train).scans:
            try:
                pre, _ = preprocessed(ref.load(), self.pcfg)
            except Exception as exc:
                log(f"normative: skipping {ref.source}: {exc}")
                continue
            f = pre.foreground.astype(np.float64)
            x = pre.image.astype(np.float64)
            s1 += x * f
            s2 += x * x * f
            cnt += f
            ids.append(ref.scan_id)
        if len(ids) < 2:
            raise BaselineError(f"{train}: the normative model needs at least 2 readable healthy scans, got {len(ids)}")
        n = np.maximum(cnt, 1)
        mean = s1 / n
        std = np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))
        valid = cnt >= max(2, self.min_coverage * len(ids))
        floor = 0.5 * float(np.median(std[valid])) if valid.any() else 1e-3
        self.mean = mean.astype(np.float32)
        self.std = np.maximum(std, max(floor, 1e-6)).astype(np.float32)
        self.count = cnt.astype(np.float32)
        self.n_train = len(ids)
        self.train_ids = ids

    @property
    def valid(self) -> np.ndarray:
        return self.count >= max(2, self.min_coverage * self.n_train)

    def zmap(self, pre: Preprocessed, signed: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """z (or |z|) on the model grid and the region it is defined on."""
        if self.mean is None:
            raise BaselineError("normative model not fitted")
        region = scoring_mask(pre.foreground & self.valid, ScoreConfig(erode_mm=self.erode_mm),
                              np.asarray(self.pcfg.spacing))
        z = (pre.image - self.mean) / self.std
        if not signed:
            z = np.abs(z)
        return np.where(region, z, 0.0).astype(np.float32), region

    def model_map(self, volume) -> ModelGridMap:
        pre, _ = preprocessed(volume, self.pcfg)
        z, region = self.zmap(pre)
        return ModelGridMap(pre=pre, raw=z, region=region)

    def state_bytes(self) -> bytes:
        return b"" if self.mean is None else self.mean.tobytes() + self.std.tobytes()

    def save(self, folder: Path) -> None:
        from safetensors.numpy import save_file

        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / STATS_FILE) as tmp:
            save_file({"mean": self.mean, "std": self.std, "count": self.count}, str(tmp))
        write_text_atomic(folder / "params.json", json.dumps(
            {"method": self.name, "params": self.params(), "n_train": self.n_train, "train_ids": self.train_ids},
            indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> "NormativeBaseline":
        from safetensors.numpy import load_file

        folder = Path(folder)
        meta = json.loads((folder / "params.json").read_text())
        p = meta["params"]
        obj = cls(PreprocessConfig.from_dict(p["preprocess"]), p["erode_mm"], p["min_coverage"])
        t = load_file(str(folder / STATS_FILE))
        obj.mean, obj.std, obj.count = t["mean"], t["std"], t["count"]
        obj.n_train, obj.train_ids = int(meta["n_train"]), list(meta["train_ids"])
        return obj
