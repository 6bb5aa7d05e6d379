"""Sets of healthy scans: find them (a folder, or a CSV manifest with splits and labels) and
preprocess each once into memory on a model's grid.

Training (:mod:`medidiff.train`), the latent generator and the baselines all read their scans
through here.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .preprocess import preprocess
from .preprocess_config import PreprocessConfig
from .volume import Volume

log = logging.getLogger(__name__)

HEALTHY_WORDS = {"", "0", "false", "no", "healthy", "normal", "none", "control"}
LABEL_COLUMNS = ("label", "anomaly", "anomalous", "abnormal", "is_anomalous")


@dataclass
class ScanSource:
    scan_id: str
    path: str
    split: str | None
    load: Callable[[], Volume] = field(repr=False)


def _discover(path: Path) -> list[Any]:
    try:
        from .io.discover import discover
    except ImportError:  # pragma: no cover - discover is part of the package
        discover = None
    if discover is not None:
        return list(discover(path).scans)
    from .io.nifti import is_nifti_path, read_nifti

    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if is_nifti_path(p))

    class _Ref:
        def __init__(self, p):
            self.scan_id, self.source = p.name, str(p)

        def load(self):
            return read_nifti(self.source)

    return [_Ref(p) for p in files]


def _is_healthy(row: dict[str, str]) -> bool:
    for col in LABEL_COLUMNS:
        if col in row and row[col] is not None:
            return str(row[col]).strip().lower() in HEALTHY_WORDS
    return True


def list_scans(data: str | Path, splits: Sequence[str] | None = None) -> list[ScanSource]:
    """Scans in a folder (NIfTI/DICOM via discovery) or a CSV manifest.

    Manifest: a ``path`` column (relative to the CSV's folder), optional
    ``split`` (rows kept when their split is in ``splits``) and an optional
    label column (``label``/``anomaly``/...): rows with a non-healthy label are
    dropped — a training set for this tool must be healthy only."""
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"{data}: training data not found")
    out: list[ScanSource] = []
    if data.is_file() and data.suffix.lower() in (".csv", ".tsv"):
        delim = "\t" if data.suffix.lower() == ".tsv" else ","
        with open(data, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter=delim))
        if not rows or "path" not in rows[0]:
            raise ValueError(f"{data}: manifest needs a 'path' column")
        n_unhealthy = 0
        for row in rows:
            split = (row.get("split") or "").strip() or None
            if splits and split not in splits:
                continue
            if not _is_healthy(row):
                n_unhealthy += 1
                continue
            p = Path(row["path"])
            if not p.is_absolute():
                p = data.parent / p
            for ref in _discover(p):
                out.append(ScanSource(ref.scan_id, str(ref.source), split, ref.load))
        if n_unhealthy:
            log.warning("%s: %d row(s) labelled abnormal were left out of training", data, n_unhealthy)
    else:
        for ref in _discover(data):
            out.append(ScanSource(ref.scan_id, str(ref.source), None, ref.load))
    return out


@dataclass
class PreparedData:
    images: np.ndarray  # (N, D, H, W) float32, model grid
    foregrounds: np.ndarray  # (N, D, H, W) bool
    scan_ids: list[str]
    summary: dict[str, Any]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, idx: Sequence[int]) -> "PreparedData":
        idx = list(idx)
        return PreparedData(self.images[idx], self.foregrounds[idx], [self.scan_ids[i] for i in idx],
                            dict(self.summary, count=len(idx)))


def prepare(sources: Sequence[ScanSource], cfg: PreprocessConfig,
            on_progress: Callable[[int, int], None] | None = None) -> PreparedData:
    """Preprocess every scan once (in memory). Unreadable scans are skipped with a warning."""
    images, fgs, ids, spacings, lows, highs, fg_frac, skipped = [], [], [], [], [], [], [], []
    for i, src in enumerate(sources):
        try:
            vol = src.load()
            pp = preprocess(vol, cfg)
        except Exception as exc:  # one bad file never stops training
            log.warning("skipping %s: %s", src.path, exc)
            skipped.append({"path": src.path, "reason": str(exc)[:200]})
            continue
        images.append(pp.image)
        fgs.append(pp.foreground)
        ids.append(src.scan_id)
        spacings.append(list(vol.spacing))
        lows.append(pp.intensity["low"])
        highs.append(pp.intensity["high"])
        fg_frac.append(float(pp.foreground.mean()))
        if on_progress:
            on_progress(i + 1, len(sources))
    if not images:
        shape = tuple(cfg.grid)
        return PreparedData(np.zeros((0, *shape), np.float32), np.zeros((0, *shape), bool), [],
                            {"count": 0, "skipped": skipped})
    sp = np.asarray(spacings)
    summary = {
        "count": len(images),
        "skipped": skipped,
        "source_spacing_mm": {"min": sp.min(0).round(4).tolist(), "median": np.median(sp, 0).round(4).tolist(),
                              "max": sp.max(0).round(4).tolist()},
        "intensity": {"low_median": float(np.median(lows)), "high_median": float(np.median(highs)),
                      "high_min": float(np.min(highs)), "high_max": float(np.max(highs))},
        "foreground_fraction_median": float(np.median(fg_frac)),
        "model_grid": list(cfg.grid),
        "model_spacing_mm": list(cfg.spacing),
    }
    return PreparedData(np.stack(images), np.stack(fgs), ids, summary)
