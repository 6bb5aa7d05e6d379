"""Registration and its QC on real heads carrying large inserted lesions (held-out roles of the split).

    python pipelines/benchmark_lesion_registration.py --cohort COHORT --real-scans REAL --out OUT

For every head of the ``val`` and ``test`` roles of ``configs/real_cohort_split.csv``: the whole head and
its skull-stripped brain (the head's own deepbet mask) go through the front end clean, then copies carrying
one large lesion with mass effect (``tests/frontend/lesioned_heads.py``: glioma-like rim + necrotic core +
oedema, moderately or strongly enhancing as on post-contrast T1, or a dark mass; 60-75 mm, 8-10 mm push),
inserted into the skull-stripped brain (as skull-stripped glioma scans arrive) and once into the whole head.

Per copy it records the whole-brain similarity of the plain fit (what the QC before the second look
judged: refused below 0.45), what the QC does now, and how far the registration of the lesioned copy lies
from the clean copy's (mean and largest displacement of the template brain's voxels, and of the corners of
its bounding box, in mm). ``--healthy-only`` runs the clean copies only: run it once with an older medidiff
first on ``PYTHONPATH`` (``--out OLD``), then pass ``--compare OLD`` to measure how far the healthy heads'
transforms moved between the two versions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "tests"))  # appended: an older medidiff on PYTHONPATH still wins

LESIONS = [  # name, kind, diameter mm, rim contrast (x the brain's p95-p5 spread), push mm, input
    ("glioma60", "glioma", 60.0, (1.0, 1.4), 8.0, "stripped"),
    ("glioma60_bright", "glioma", 60.0, (3.0, 3.5), 8.0, "stripped"),
    ("glioma75_bright", "glioma", 75.0, (2.0, 2.5), 10.0, "stripped"),
    ("hypo60", "hypo", 60.0, None, 8.0, "stripped"),
    ("glioma60_bright_whole", "glioma", 60.0, (3.0, 3.5), 8.0, "whole"),
]
CORNERS = np.array([[x, y, z, 1.0] for x in (-70, 70) for y in (-105, 70) for z in (-50, 80)])  # MNI brain box


def shifts(a: np.ndarray, b: np.ndarray) -> dict:
    from medidiff.frontend import load_template

    tpl = load_template()
    idx = np.argwhere(tpl.brain)[::3]
    pts = np.c_[idx @ tpl.affine[:3, :3].T + tpl.affine[:3, 3], np.ones(len(idx))]
    d = np.linalg.norm((pts @ (a - b).T)[:, :3], axis=1)
    c = np.linalg.norm((CORNERS @ (a - b).T)[:, :3], axis=1)
    return {"brain_mean_mm": round(float(d.mean()), 3), "brain_max_mm": round(float(d.max()), 3),
            "corners_max_mm": round(float(c.max()), 3)}


def front_end(vol, min_similarity: float | None = None) -> dict:
    from medidiff.frontend import FrontEndConfig, QCFailed, run_frontend

    cfg = FrontEndConfig() if min_similarity is None else FrontEndConfig(min_similarity=min_similarity)
    t0 = time.perf_counter()
    try:
        fe = run_frontend(vol, cfg)
    except QCFailed as exc:
        return {"accepted": False, "error": str(exc), "seconds": round(time.perf_counter() - t0, 1)}
    return {"accepted": True, "qc": fe.qc, "warnings": list(getattr(fe, "warnings", [])),
            "matrix": fe.template_to_scan.tolist(), "brain": fe.brain_source,
            "seconds": round(time.perf_counter() - t0, 1)}


def run_head(row: dict, healthy_only: bool, log) -> dict:
    from frontend.lesioned_heads import lesioned, skull_stripped
    from medidiff.io import read_nifti

    vol = read_nifti(row["abspath"])  # the val/test heads are NIfTI files
    out: dict = {"subject": row["subject"], "role": row["role"]}
    whole = front_end(vol)
    brain = whole.pop("brain")
    stripped = skull_stripped(vol, brain)
    clean = front_end(stripped)
    clean.pop("brain", None)
    out["whole"], out["stripped"] = whole, clean
    log(f"{row['subject']}: whole {whole['qc']['registration_similarity']}, stripped "
        f"{clean.get('qc', {}).get('registration_similarity')}")
    if healthy_only:
        return out
    for i, (name, kind, diameter, contrast, push, source) in enumerate(LESIONS):
        base = stripped if source == "stripped" else vol
        seed = zlib.crc32(f"{row['subject']}/{kind}/{diameter:.0f}".encode()) % 10_000
        lv, mask, info = lesioned(base, brain, kind, diameter, seed, push_mm=push, contrast=contrast,
                                  name=f"{row['subject']}_{name}.nii.gz")
        r = front_end(lv)
        rec = {"lesion_ml": round(info["volume_mm3"] / 1000, 1), "accepted": r["accepted"],
               "seconds": r["seconds"]}
        ref = whole if source == "whole" else clean
        if r["accepted"]:
            qc = r["qc"]
            rec.update(qc=qc, warnings=r["warnings"], lesion_in_brain_mask=round(float(r["brain"][mask].mean()), 3),
                       after=shifts(np.array(r["matrix"]), np.array(ref["matrix"])))
            if "first_fit_similarity" in qc:  # second look: measure the plain fit, as before it
                plain = front_end(lv, min_similarity=-1.0)
                rec["before"] = shifts(np.array(plain["matrix"]), np.array(ref["matrix"]))
                rec["first_fit_similarity"] = qc["first_fit_similarity"]
                centre = lv.affine @ np.r_[np.argwhere(mask).mean(axis=0), 1.0]
                mni = (np.linalg.inv(np.array(r["matrix"])) @ centre)[:3]
                rec["mismatch_to_lesion_centre_mm"] = round(float(np.linalg.norm(mni - qc["mismatch_centre_mni"])), 1)
            else:
                rec["before"] = rec["after"]
                rec["first_fit_similarity"] = qc["registration_similarity"]
        else:
            rec["error"] = r["error"]
        out[name] = rec
        log(f"  {name}: {rec['lesion_ml']} ml, first fit {rec.get('first_fit_similarity')}, "
            f"{'accepted' if rec['accepted'] else 'REFUSED'}, {rec.get('after')}")
    return out


def _range(xs, fmt: str = ".2f") -> str:
    """median [min–max]"""
    xs = [x for x in xs if x is not None]
    return f"{np.median(xs):{fmt}} [{min(xs):{fmt}}–{max(xs):{fmt}}]" if xs else "—"


def aggregate(results: list[dict], limit: float = 0.45) -> str:
    """One row per lesion kind over all heads: similarity, refusals before and now, registration error."""
    lines = ["| lesion (input) | n | lesion ml | whole-brain similarity, clean → lesioned (first fit) | refused: before / now "
             "| accepted with a warning | registration vs the clean copy, mean over the brain (mm) | largest over the "
             "brain (mm) | box corners, largest (mm) | lesion inside the brain mask |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, kind, diameter, contrast, push, source in LESIONS:
        rs = [(r, r[name]) for r in results if name in r]
        if not rs:
            continue
        ref = "whole" if source == "whole" else "stripped"
        acc = [x for _, x in rs if x["accepted"]]
        before = sum(x.get("first_fit_similarity", 0.0) < limit for _, x in rs if x["accepted"])
        now = sum(not x["accepted"] for _, x in rs)
        warned = sum("first_fit_similarity" in x["qc"] for x in acc)
        clean = _range([r[ref]["qc"]["registration_similarity"] for r, _ in rs])
        first = _range([x.get("first_fit_similarity") for x in acc])
        err = {k: [x["after"][k] for x in acc] for k in ("brain_mean_mm", "brain_max_mm", "corners_max_mm")}
        what = f"{kind} {diameter:.0f} mm" + (f", rim ×{contrast[0]:g}–{contrast[1]:g}" if contrast else "") + \
            f", push {push:g} mm ({'whole head' if source == 'whole' else source})"
        lines.append(f"| {what} | {len(rs)} | {_range([x['lesion_ml'] for _, x in rs], '.0f')} | "
                     f"{clean} → {first} | {before + now} / {now} | {warned} | {_range(err['brain_mean_mm'])} | "
                     f"{_range(err['brain_max_mm'])} | {_range(err['corners_max_mm'])} | "
                     f"{_range([x['lesion_in_brain_mask'] for x in acc])} |")
    second = [(r["subject"], n, x) for r in results for n, *_ in LESIONS if (x := r.get(n)) and x["accepted"]
              and "first_fit_similarity" in x.get("qc", {})]
    if second:
        lines.append("\nSecond look (scans below the limit at the first fit): " + "; ".join(
            f"{s} {n}: {x['first_fit_similarity']:.2f} → outside the region {x['qc']['similarity_outside_mismatch']:.2f}, "
            f"refit moved {x['qc']['refit_shift_mm']:.1f} mm, region centre {x['mismatch_to_lesion_centre_mm']:.0f} mm "
            f"from the lesion's, error vs clean {x['before']['brain_mean_mm']:.2f}/{x['before']['brain_max_mm']:.2f} → "
            f"{x['after']['brain_mean_mm']:.2f}/{x['after']['brain_max_mm']:.2f} mm (mean/largest)"
            for s, n, x in second) + ".")
    return "\n".join(lines)


def summary(results: list[dict], old: dict[str, dict] | None, limit: float = 0.45) -> str:
    lines = [aggregate(results, limit), "", "| head | role | clean whole / stripped | " + " | ".join(n for n, *_ in LESIONS) + " |",
             "|---|---|---|" + "---|" * len(LESIONS)]
    for r in results:
        cells = [r["subject"], r["role"], f"{r['whole']['qc']['registration_similarity']:.2f} / "
                 f"{r['stripped']['qc']['registration_similarity']:.2f}"]
        for name, *_ in LESIONS:
            x = r.get(name)
            if x is None:
                cells.append("—")
            elif not x["accepted"]:
                cells.append("refused")
            else:
                s = x["first_fit_similarity"]
                was = " (refused before)" if s < limit else ""
                cells.append(f"{s:.2f}{was} → {x['qc']['registration_similarity']:.2f}; "
                             f"{x['after']['brain_mean_mm']:.1f}/{x['after']['brain_max_mm']:.1f} mm")
        lines.append("| " + " | ".join(cells) + " |")
    if old:
        moved = []
        for r in results:
            o = old.get(r["subject"])
            if o:
                for k in ("whole", "stripped"):
                    moved.append(shifts(np.array(r[k]["matrix"]), np.array(o[k]["matrix"]))["brain_max_mm"])
        lines.append(f"\nHealthy heads (whole + stripped, {len(moved)} fits): largest displacement between the two "
                     f"versions' transforms {max(moved):.4f} mm.")
    return "\n".join(lines)


def main(argv=None) -> int:
    from real_split import read_split, scan_paths

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--real-scans", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--roles", default="val,test")
    ap.add_argument("--healthy-only", action="store_true")
    ap.add_argument("--compare", type=Path, help="OUT of a --healthy-only run with another medidiff")
    ap.add_argument("--limit", type=int, default=0, help="first N heads only (0: all)")
    args = ap.parse_args(argv)
    import medidiff

    print(f"medidiff from {Path(medidiff.__file__).parent}", flush=True)
    rows = scan_paths(read_split(), args.roles.split(","), args.cohort, args.real_scans)
    rows = rows[:args.limit] if args.limit else rows
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for row in rows:
        f = args.out / f"{row['subject']}.json"
        if f.exists():  # resumable
            results.append(json.loads(f.read_text()))
            continue
        res = run_head(row, args.healthy_only, lambda s: print(s, flush=True))
        f.write_text(json.dumps(res, indent=1, default=float))
        results.append(res)
    old = None
    if args.compare:
        old = {json.loads(p.read_text())["subject"]: json.loads(p.read_text()) for p in args.compare.glob("*.json")}
    if not args.healthy_only:
        text = summary(results, old)
        (args.out / "summary.md").write_text(text + "\n")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
