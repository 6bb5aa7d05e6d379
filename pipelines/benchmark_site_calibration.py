"""Healthy heads of another scanner: how many are flagged with the shipped calibration, and with a site
calibration (``medidiff calibrate`` on the site's own healthy scans), measured leave-one-out.

    python pipelines/benchmark_site_calibration.py --model models/brain_t1_2mm --heads SITE_HEADS --out OUT \\
        [--set score.KEY=VAL ...]

* shipped: every head scored with the model's own calibration (its folder as shipped);
* site, leave-one-out: for each head, a copy of the model is calibrated (``calibrate_model``) on the
  *other* heads only and scores the held-out head (``score_folder``), so no head is scored against a
  threshold it helped set. With n heads every fold calibrates on n - 1: with fewer than 20 a 5 % scan
  threshold is the highest healthy score of the fold (the resolution of the estimate is 1 / (n - 1)).

Only the public entry points are used (``medidiff.batch.calibrate.calibrate_model`` and
``medidiff.batch.run.score_folder``): a model copy keeps every file of the model folder except its
calibration, so a stored scoring method travels with it. Each held-out subject may bring lesioned copies
(``extra``): they are scored by the same fold, which says whether the site threshold still finds lesions.
Writes ``OUT/site_calibration.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medidiff.io.atomic import write_text_atomic  # noqa: E402

CALIBRATION_FILES = ("calibration.json", "calibration.safetensors")


def model_copy_without_calibration(model: Path, dest: Path) -> Path:
    """Every file of the model folder (weights, model.json, a stored scoring method ...) but its calibration."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for p in Path(model).iterdir():
        if p.is_file() and p.name not in CALIBRATION_FILES:
            shutil.copy2(p, dest / p.name)
    return dest


def _link_folder(folder: Path, files: list[Path]) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for f in files:
        f = Path(f)
        (folder / f.name).symlink_to(f.resolve(), target_is_directory=f.is_dir())
    return folder


def _flags(run: Path) -> dict[str, dict[str, Any]]:
    from medidiff.batch.output import read_results

    return {r["scan_id"]: {"flag": r.get("flag"), "score": r.get("score"), "percentile": r.get("percentile"),
                           "status": r.get("status")} for r in read_results(run)}


def _scan_id(path: Path) -> str:
    from medidiff.io import discover

    found = discover(path)
    if len(found.scans) != 1:
        raise ValueError(f"{path}: expected one scan, found {len(found.scans)}")
    return found.scans[0].scan_id


def site_calibration(model: Path, heads: dict[str, Path], out: Path, *, overrides: tuple[str, ...] = (),
                     extra: dict[str, list[Path]] | None = None, shipped: dict[str, dict[str, Any]] | None = None,
                     device: str = "auto", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Flag rates of healthy ``heads`` ({subject: scan path}) with the calibration in ``model`` and with a
    leave-one-out site calibration; ``extra`` ({subject: lesioned scan paths}) are scored by the fold that
    leaves their subject out. ``shipped`` ({scan_id: result}) reuses an existing scoring with the model's
    calibration (e.g. the benchmark's run of these scans); otherwise they are scored here."""
    from medidiff.batch.run import score_folder
    from medidiff.batch.calibrate import calibrate_model

    out = Path(out)
    extra = extra or {}
    subjects = sorted(heads)
    ids = {s: _scan_id(heads[s]) for s in subjects}
    extra_ids = {s: [_scan_id(p) for p in extra.get(s, [])] for s in subjects}
    if shipped is None:
        run = out / "shipped"
        score_folder(model, _link_folder(out / "shipped_input", [heads[s] for s in subjects]
                                         + [p for s in subjects for p in extra.get(s, [])]),
                     run, overrides=overrides, overwrite=True, dicom_outputs=False, device=device, progress=False,
                     log=log)
        shipped = _flags(run)
    per: list[dict[str, Any]] = []
    for s in subjects:
        rec: dict[str, Any] = {"subject": s, "scan_id": ids[s],
                               "shipped": shipped.get(ids[s], {}).get("flag"),
                               "shipped_lesioned": [shipped.get(i, {}).get("flag") for i in extra_ids[s]]}
        others = [heads[o] for o in subjects if o != s]
        if len(others) < 2:
            rec["site"] = None
            rec["site_error"] = f"a site calibration needs at least 2 other healthy heads, {len(others)} here"
            per.append(rec)
            continue
        fold = out / "folds" / ids[s]
        try:
            mdir = model_copy_without_calibration(model, fold / "model")
            cal = calibrate_model(mdir, _link_folder(fold / "calib", others), overrides=overrides, device=device,
                                  progress=False, log=log)
            run = fold / "scored"
            score_folder(mdir, _link_folder(fold / "heldout", [heads[s]] + list(extra.get(s, []))), run,
                         overrides=overrides, overwrite=True, dicom_outputs=False, device=device, progress=False,
                         log=log)
            got = _flags(run)
            rec.update(site=got.get(ids[s], {}).get("flag"), site_score=got.get(ids[s], {}).get("score"),
                       site_lesioned=[got.get(i, {}).get("flag") for i in extra_ids[s]],
                       site_n_calibration=len(others), site_scan_threshold=cal.scan_threshold)
        except Exception as exc:  # noqa: BLE001 - a failed fold is reported, the others go on
            rec.update(site=None, site_error=f"{type(exc).__name__}: {exc}")
            log(f"  site calibration without {s} failed: {exc}")
        per.append(rec)
    result = {"n_heads": len(subjects), "per_subject": per, "overrides": list(overrides),
              "shipped": _rate([r["shipped"] for r in per]),
              "site_leave_one_out": _rate([r.get("site") for r in per]),
              "shipped_lesioned": _rate([f for r in per for f in r["shipped_lesioned"]]),
              "site_lesioned": _rate([f for r in per for f in r.get("site_lesioned", [])]),
              "note": "site: each head scored by a copy of the model calibrated on the other heads only "
                      "(leave-one-out); with n - 1 < 20 healthy scans a 5 % scan threshold is their highest score"}
    return result


def _rate(flags: list) -> dict[str, Any]:
    known = [bool(f) for f in flags if f is not None]
    return {"flagged": sum(known), "n": len(known), "rate": (sum(known) / len(known)) if known else None,
            "n_unknown": len(flags) - len(known)}


def table(result: dict[str, Any]) -> list[str]:
    def cell(d):
        return "n/a" if not d or not d.get("n") else f"{d['flagged']}/{d['n']}"

    L = ["| calibration | healthy heads flagged | lesioned copies flagged |", "|---|---|---|",
         f"| shipped (calib split) | {cell(result['shipped'])} | {cell(result['shipped_lesioned'])} |",
         f"| site, leave-one-out (n − 1 = {max(result['n_heads'] - 1, 0)} heads each) | "
         f"{cell(result['site_leave_one_out'])} | {cell(result['site_lesioned'])} |"]
    errs = [f"{r['subject']}: {r['site_error']}" for r in result["per_subject"] if r.get("site_error")]
    if errs:
        L += ["", "Site calibration not measured for " + "; ".join(errs) + "."]
    return L


def main(argv=None, log: Callable[[str], None] = print) -> dict[str, Any]:
    from medidiff.io import discover
    from medidiff.runtime import set_threads

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="a calibrated medidiff model folder (not modified)")
    p.add_argument("--heads", required=True, type=Path, help="folder of healthy heads from one site or scanner")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--set", dest="overrides", action="append", default=[], help="scoring override (repeatable)")
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    set_threads()
    found = discover(a.heads)
    heads = {ref.scan_id: Path(ref.source) for ref in found.scans}
    res = site_calibration(a.model, heads, a.out, overrides=tuple(a.overrides), device=a.device, log=log)
    res.update(model=str(a.model), heads=str(a.heads))
    write_text_atomic(a.out / "site_calibration.json", json.dumps(res, indent=2, default=str))
    for line in table(res):
        log(line)
    return res


if __name__ == "__main__":
    main()
