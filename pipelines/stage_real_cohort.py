"""Stage the real healthy cohort into the ``labels.csv`` layout that ``pipelines/benchmark.py`` reads.

    python pipelines/stage_real_cohort.py --cohort COHORT --real-scans REAL_SCANS \\
        --split configs/real_cohort_split.csv --model models/brain_t1_2mm --out OUT [--copies 3] [--seed 0] [--reuse]

writes ``OUT/data/``:

* ``train/``, ``calib/``: every head of the split's train / calib role, as is (healthy, no mask);
* ``val/``, ``test/``: every head once as is (label 0, empty mask) and ``--copies`` times with 1-3 lesions
  of every kind ``medidiff.lesions.anomalies.insert_random_anomalies`` makes (label 1, mask), placed in
  brain tissue that the model's front end finds on the scan's own grid;
* ``cross/``: the ``cross_scanner`` role (other sites and vendors, never fitted on), as is and with
  lesioned copies, a split of its own;
* ``masks/<scan_id>_mask.nii.gz`` (lesions), ``brains/<subject>_brain.nii.gz`` (the front end's brain of
  the untouched head: the evaluation region of all its copies, the same for every method);
* ``labels.csv`` (scan_id, split, path, label, mask_path, anomaly_types, lesion_volume_mm3, n_anomalies,
  **subject**, brain_mask_path, site, scanner), ``lesions.json`` (kind and centre of each lesion) and
  ``staging.json`` (what was staged from what: split file hash, seed, copies, model, per-subject facts).

Every scan is read with ``medidiff.io.discover`` (NIfTI files and DICOM series alike) and written as
float32 NIfTI on its own grid: the untouched copy goes through the same writer as the lesioned ones.
Copies of a subject are named ``<subject>_v<k>``; which k is the untouched head is drawn from the seed,
so a file name does not tell the label. Lesions come from ``numpy.random.default_rng([seed,
crc32(subject), copy])``: the same seed stages the same lesions, and adding a subject changes no other.
``--reuse`` keeps the subjects already staged in OUT with the same split file, seed, copies and front end.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from medidiff.io.atomic import write_text_atomic  # noqa: E402

ROLE_TO_SPLIT = {"train": "train", "calib": "calib", "val": "val", "test": "test", "cross_scanner": "cross"}
LESIONED_SPLITS = ("val", "test", "cross")
COLUMNS = ["scan_id", "split", "path", "label", "mask_path", "anomaly_types", "lesion_volume_mm3", "n_anomalies",
           "subject", "brain_mask_path", "site", "scanner"]
STAGING_VERSION = 1


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cohort", required=True, type=Path, help="the real cohort folder (paths of 'cohort' rows)")
    p.add_argument("--real-scans", type=Path, default=None, help="folder of the 'real' rows (NIfTI or DICOM)")
    p.add_argument("--split", type=Path, default=ROOT / "configs" / "real_cohort_split.csv")
    p.add_argument("--model", type=Path, default=ROOT / "models" / "brain_t1_2mm",
                   help="a template-space model: its front end finds the brain the lesions are placed in")
    p.add_argument("--out", required=True, type=Path, help="OUT: the staged folder is OUT/data")
    p.add_argument("--copies", type=int, default=3, help="lesioned copies per val/test/cross head")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--roles", default=",".join(ROLE_TO_SPLIT), help="roles of the split file to stage")
    p.add_argument("--limit-subjects", type=parse_limit, default=None,
                   help="at most this many subjects per role (smoke runs; the first ones of the split file): N, "
                        "or ROLE=N,... (e.g. train=2,calib=2,val=1,test=2; roles not named are not limited)")
    p.add_argument("--reuse", action="store_true",
                   help="keep subjects already staged in OUT with the same split file, seed, copies and front end")
    a = p.parse_args(argv)
    if a.copies < 1:
        p.error("--copies must be at least 1")
    return a


def parse_limit(text: str | int | None) -> int | dict[str, int] | None:
    """``--limit-subjects``: N (every role) or ROLE=N,ROLE=N."""
    if text is None or isinstance(text, int):
        return text
    if "=" not in text:
        return int(text)
    out = {}
    for part in text.split(","):
        role, n = part.split("=", 1)
        if role.strip() not in ROLE_TO_SPLIT:
            raise argparse.ArgumentTypeError(f"unknown role {role!r} (roles: {', '.join(ROLE_TO_SPLIT)})")
        out[role.strip()] = int(n)
    return out


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def subject_seed(seed: int, subject: str, copy: int) -> list[int]:
    """The lesion generator's seed of one copy: stable across subjects added or removed."""
    return [int(seed), zlib.crc32(subject.encode("utf-8")), int(copy)]


def healthy_slot(seed: int, subject: str, copies: int) -> int:
    """Which of the copies ``v0..v<copies>`` is the untouched head (seeded, not always v0)."""
    return int(np.random.default_rng([int(seed), zlib.crc32(subject.encode("utf-8")), 10_007]).integers(0, copies + 1))


def tissue_mask(array: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Brain tissue where lesions may go: the front end's brain without CSF-dark voxels (ventricles)."""
    arr = np.asarray(array, np.float32)
    if not brain.any():
        return brain
    return brain & (arr > 0.5 * float(np.median(arr[brain])))


def load_one(path: Path):
    """The single scan at ``path`` (a NIfTI file or a DICOM series folder), via medidiff's discovery."""
    from medidiff.io import discover

    found = discover(path)
    if len(found.scans) != 1:
        why = "; ".join(f"{s.path}: {s.reason}" for s in found.skipped[:3])
        raise ValueError(f"{path}: expected one scan, discovery found {len(found.scans)}"
                         + (f" (skipped: {why})" if why else ""))
    ref = found.scans[0]
    return ref, ref.load()


def _frontend_key(model: Path) -> dict[str, Any]:
    from medidiff.baselines import load_preprocess_config

    pcfg = load_preprocess_config(model)
    if pcfg.space != "template":
        raise SystemExit(f"{model}: a template-space model is needed (its front end places the lesions in the brain)")
    fcfg = pcfg.frontend_config()
    desc = json.dumps({"frontend": getattr(fcfg, "__dict__", str(fcfg)), "modality": pcfg.modality},
                      sort_keys=True, default=str)
    return {"pcfg": pcfg, "fcfg": fcfg, "hash": hashlib.sha256(desc.encode()).hexdigest()[:16]}


def stage(cohort: Path, real_scans: Path | None, split_csv: Path, out: Path, model: Path, *, copies: int = 3,
          seed: int = 0, roles: tuple[str, ...] = tuple(ROLE_TO_SPLIT), limit_subjects: int | dict[str, int] | None = None,
          reuse: bool = False, log: Callable[[str], None] = print) -> Path:
    """Stage the split's heads under ``out/data`` (see the module docstring); returns labels.csv."""
    from real_split import read_split, scan_paths

    from medidiff.frontend import run_frontend
    from medidiff.io import write_nifti
    from medidiff.io.naming import sanitize
    from medidiff.lesions.anomalies import insert_random_anomalies
    from medidiff.volume import Volume

    data = out / "data"
    rows = read_split(split_csv)
    unknown = {r["role"] for r in rows} - set(ROLE_TO_SPLIT)
    if unknown:
        raise SystemExit(f"{split_csv}: unknown role(s) {sorted(unknown)}")
    fe_key = _frontend_key(model) if any(ROLE_TO_SPLIT[r] in LESIONED_SPLITS for r in roles) else None
    params = {"version": STAGING_VERSION, "split_file": _sha256(split_csv), "seed": seed, "copies": copies,
              "frontend": fe_key["hash"] if fe_key else None}
    old = _load_staging(data) if reuse else None
    if old is not None and old.get("params") != params:
        raise SystemExit(f"{data}: staged with other settings ({old.get('params')} vs {params}): "
                         "use a fresh --out or drop --reuse")
    if not reuse and data.exists():
        if not (data / "staging.json").is_file():
            raise SystemExit(f"{data} exists and was not made by this script: choose another --out")
        shutil.rmtree(data)
    subjects: dict[str, Any] = dict(old.get("subjects", {})) if old else {}
    left_out: dict[str, str] = {}
    lesions_info: dict[str, Any] = dict(old.get("lesions", {})) if old else {}
    t_all = time.perf_counter()

    picked: list[dict[str, str]] = []
    for role in roles:
        role_rows = [r for r in rows if r["role"] == role]
        n = limit_subjects.get(role) if isinstance(limit_subjects, dict) else limit_subjects
        picked += role_rows[:n] if n is not None else role_rows
    picked_roles = sorted({r["role"] for r in picked})
    resolved = {r["subject"]: r for r in scan_paths(picked, picked_roles, cohort, real_scans)}
    for r in picked:
        if r["subject"] not in resolved:
            left_out[r["subject"]] = f"'{r['source']}' row and no folder given for it (--real-scans)"
    for subject, r in resolved.items():
        split = ROLE_TO_SPLIT[r["role"]]
        sid = sanitize(subject)
        done = subjects.get(subject)
        if done and all((data / row["path"]).is_file() for row in done["rows"]):
            log(f"  {subject}: reused")
            continue
        t0 = time.perf_counter()
        try:
            ref, vol = load_one(Path(r["abspath"]))
        except Exception as exc:  # noqa: BLE001 - one unreadable head leaves the others
            left_out[subject] = f"unreadable: {exc}"
            log(f"  left out {subject}: {exc}")
            continue
        arr = np.asarray(vol.array, dtype=np.float32)
        info: dict[str, Any] = {"role": r["role"], "split": split, "source": r["source"], "source_path": r["path"],
                                "format": ref.format, "shape": list(vol.shape),
                                "spacing_mm": [round(s, 4) for s in vol.spacing], "site": r.get("site", ""),
                                "scanner": r.get("scanner", ""), "rows": []}
        common = {"split": split, "subject": subject, "site": r.get("site", ""), "scanner": r.get("scanner", "")}
        if split not in LESIONED_SPLITS:
            rel = f"{split}/{sid}.nii.gz"
            write_nifti(Volume(arr, vol.affine), data / rel)
            info["rows"].append({**common, "scan_id": sid, "path": rel, "label": 0, "mask_path": "",
                                 "anomaly_types": "", "lesion_volume_mm3": 0.0, "n_anomalies": 0,
                                 "brain_mask_path": ""})
            subjects[subject] = info
            log(f"  {subject} -> {rel} ({time.perf_counter() - t0:.0f} s)")
            continue
        try:
            fe = run_frontend(vol, fe_key["fcfg"], fe_key["pcfg"].modality)
        except Exception as exc:  # noqa: BLE001 - a QC refusal is reported, the others go on
            left_out[subject] = f"front end: {exc}"
            log(f"  left out {subject}: front end: {exc}")
            continue
        brain = np.asarray(fe.brain_source, bool)
        tissue = tissue_mask(arr, brain)
        brain_rel = f"brains/{sid}_brain.nii.gz"
        write_nifti(brain.astype(np.uint8), data / brain_rel, like=vol, dtype=np.uint8)
        info.update(brain_ml=round(float(brain.sum()) * float(np.prod(vol.spacing)) / 1000.0, 1),
                    qc={k: v for k, v in (fe.qc or {}).items() if isinstance(v, (int, float, str, bool))})
        slot = healthy_slot(seed, subject, copies)
        lesion_copy = 0
        for k in range(copies + 1):
            scan_id = f"{sid}_v{k}"
            rel, mrel = f"{split}/{scan_id}.nii.gz", f"masks/{scan_id}_mask.nii.gz"
            if k == slot:
                img, mask, infos = arr, np.zeros(arr.shape, np.uint8), []
            else:
                rng = np.random.default_rng(subject_seed(seed, subject, lesion_copy))
                lesion_copy += 1
                img, mask, infos = insert_random_anomalies(arr, vol.spacing, rng, brain_mask=tissue)
            write_nifti(Volume(np.asarray(img, np.float32), vol.affine), data / rel)
            write_nifti(np.asarray(mask, np.uint8), data / mrel, like=vol, dtype=np.uint8)
            mm3 = float(np.count_nonzero(mask)) * float(np.prod(vol.spacing))
            info["rows"].append({**common, "scan_id": scan_id, "path": rel, "label": int(bool(infos)),
                                 "mask_path": mrel, "anomaly_types": ";".join(sorted({d["kind"] for d in infos})),
                                 "lesion_volume_mm3": round(mm3, 1), "n_anomalies": len(infos),
                                 "brain_mask_path": brain_rel})
            lesions_info[scan_id] = [_jsonable(d) for d in infos]
        subjects[subject] = info
        log(f"  {subject} -> {split}: brain {info['brain_ml']:.0f} ml, untouched + {copies} lesioned copies "
            f"({time.perf_counter() - t0:.0f} s)")

    subjects = {k: v for k, v in subjects.items() if k in resolved}  # --reuse with fewer roles or subjects
    lesions_info = {row["scan_id"]: lesions_info.get(row["scan_id"], []) for v in subjects.values()
                    for row in v["rows"] if row["label"]}
    label_rows = [row for s in sorted(subjects, key=lambda x: (subjects[x]["split"], x)) for row in subjects[s]["rows"]]
    data.mkdir(parents=True, exist_ok=True)
    _write_csv(data / "labels.csv", label_rows)
    write_text_atomic(data / "lesions.json", json.dumps(lesions_info, indent=1))
    staging = {"params": params, "split_csv": str(split_csv), "model": str(model), "cohort": str(cohort),
               "real_scans": str(real_scans) if real_scans else None, "roles": list(roles),
               "limit_subjects": limit_subjects, "subjects": subjects, "left_out": left_out, "lesions": lesions_info,
               "counts": _counts(label_rows), "seconds": round(time.perf_counter() - t_all, 1)}
    write_text_atomic(data / "staging.json", json.dumps(staging, indent=1, default=str))
    log(f"staged {len(label_rows)} scans of {len(subjects)} subjects under {data} "
        f"({', '.join(f'{k} {v}' for k, v in staging['counts'].items())})"
        + (f"; left out: {', '.join(left_out)}" if left_out else ""))
    return data / "labels.csv"


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, (np.integer,)):
            v = int(v)
        elif isinstance(v, (np.floating,)):
            v = float(v)
        elif isinstance(v, tuple):
            v = [int(x) if isinstance(x, (np.integer, int)) else float(x) for x in v]
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        out[k] = v
    return out


def _counts(rows: list[dict[str, Any]]) -> dict[str, str]:
    out: dict[str, list[int]] = {}
    for r in rows:
        c = out.setdefault(r["split"], [0, 0, 0])
        c[0] += 1
        c[1] += int(r["label"])
    subj: dict[str, set] = {}
    for r in rows:
        subj.setdefault(r["split"], set()).add(r["subject"])
    return {k: f"{v[0]} scans ({v[1]} lesioned) of {len(subj[k])} subjects" for k, v in out.items()}


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def _load_staging(data: Path) -> dict[str, Any] | None:
    try:
        return json.loads((data / "staging.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def main(argv=None, log: Callable[[str], None] = print) -> Path:
    from medidiff.runtime import set_threads

    a = parse_args(argv)
    set_threads()
    return stage(a.cohort, a.real_scans, a.split, a.out, a.model, copies=a.copies, seed=a.seed,
                 roles=tuple(x for x in a.roles.split(",") if x), limit_subjects=a.limit_subjects, reuse=a.reuse,
                 log=log)


if __name__ == "__main__":
    main()
