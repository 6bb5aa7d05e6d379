"""The benchmark's data (part of ``pipelines/benchmark.py``, not a script): the labelled splits staged
as links under OUT/data without reading held-out labels, and what the benchmark ran on."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medidiff.evaluate.labels import read_labels, read_scan_index  # noqa: E402

FITTED_SPLITS = ("train", "calib", "val")  # everything else in labels.csv is held out until the final step
TEST_SPLIT = "test"


def _hash_order(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def stage_splits(data: Path, out: Path, limit: int | None) -> dict[str, Path]:
    """OUT/data/<split>/<scan_id>.nii.gz symlinks to the labelled scans only (never the masks
    that live inside the split folders), so scan ids in every run equal the labels' ids.

    Reads ids, splits, paths and subjects only (``read_scan_index``); with ``--limit`` a val split without
    subjects is limited per label (val labels may be read), held-out splits never: they keep the first
    subjects (or 2 x limit scans) in an order hashed from their ids."""
    index = [e for e in read_scan_index(data / "labels.csv") if e.split and e.path is not None and e.path.exists()]
    has_subjects = any(e.subject for e in index)
    val_label = ({r.scan_id: r.label for r in read_labels(data / "labels.csv", splits=("val",))}
                 if limit is not None and not has_subjects else {})
    by_split: dict[str, list] = {}
    for e in index:
        by_split.setdefault(e.split, []).append(e)
    folders: dict[str, Path] = {}
    for split, entries in by_split.items():
        chosen = entries
        if limit is not None:
            if split in ("train", "calib"):
                chosen = entries[:limit]
            elif has_subjects:
                subs = sorted({e.subject or e.scan_id for e in entries}, key=_hash_order)[:limit]
                chosen = [e for e in entries if (e.subject or e.scan_id) in subs]
            elif split == "val":
                counts: dict[int, int] = {}
                chosen = []
                for e in entries:
                    lab = val_label.get(e.scan_id, 0)
                    if counts.get(lab, 0) < limit:
                        counts[lab] = counts.get(lab, 0) + 1
                        chosen.append(e)
            else:
                keep = set(sorted((e.scan_id for e in entries), key=_hash_order)[:2 * limit])
                chosen = [e for e in entries if e.scan_id in keep]
        d = out / "data" / split
        if d.is_dir():  # a re-run with another --limit: no stale links
            for old in d.iterdir():
                if old.is_symlink():
                    old.unlink()
        d.mkdir(parents=True, exist_ok=True)
        for e in chosen:
            suffix = ".nii.gz" if e.path.name.endswith(".nii.gz") else e.path.suffix
            link = d / f"{e.scan_id}{suffix}"
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(e.path.resolve(), target_is_directory=e.path.is_dir())
        folders[split] = d
    missing = {"train", "calib", "val", TEST_SPLIT} - set(folders)
    if missing:
        raise SystemExit(f"{data}/labels.csv: no scans for split(s) {sorted(missing)}")
    return folders


def data_info(data: Path, splits: dict[str, Path]) -> dict[str, Any]:
    """What the benchmark ran on, without ground truth: the labels file's hash, scans and subjects per
    split (as staged, after --limit), and the staging record when the folder was staged from a split file."""
    import hashlib

    labels = data / "labels.csv"
    index = read_scan_index(labels)
    staged = {s: {p.name.split(".nii")[0] for p in d.iterdir()} for s, d in splits.items()}
    counts = {}
    for split, ids in staged.items():
        subs = {e.subject or e.scan_id for e in index if e.split == split and e.scan_id in ids}
        counts[split] = {"scans": len(ids), "subjects": len(subs)}
    info: dict[str, Any] = {"labels": str(labels), "labels_sha256": hashlib.sha256(labels.read_bytes()).hexdigest(),
                            "has_subjects": any(e.subject for e in index), "splits": counts}
    staging = data / "staging.json"
    if staging.is_file():
        try:
            st = json.loads(staging.read_text())
            info["staging"] = {k: st.get(k) for k in ("params", "split_csv", "model", "roles", "limit_subjects",
                                                      "left_out", "counts")}
        except (OSError, json.JSONDecodeError):
            pass
    return info


def labels_columns(labels: Path) -> list[str]:
    import csv

    with open(labels, newline="") as fh:
        return [h.strip().lower() for h in (next(csv.reader(fh), None) or [])]
