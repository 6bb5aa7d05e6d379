"""Detection on real anatomy: lesions inserted into real healthy whole-head scans.

sample_data's scans are warps of one template, where a voxel-wise normative model knows the
expected intensity almost exactly. This benchmark asks the question that matters for real data:
on real brains (real sulci, ventricles, scanners), which method still finds a lesion?

    python pipelines/benchmark_real_anatomy.py --real DIR --model models/sample --data sample_data \\
        --out OUT [--copies 3] [--baselines normative,intensity-hyper]

1. Every scan under ``--real`` (healthy volunteers, whole heads, any format medidiff reads) is
   kept once as is (label 0) and ``--copies`` times with 1-3 random lesions (the sample_data
   kinds) inserted in brain tissue on its own grid (label 1). The brain comes from the model's
   front end; lesions are placed and sized in millimetres on the scan's grid.
2. medidiff scores them with the model's own calibration; each baseline is fit on the ``train``
   split of ``--data``, calibrated leave-one-out on its ``calib`` split, and uses medidiff's
   post-processing (score type, minimum component size).
3. Metrics on the scans' own grids: voxel AP pooled inside the front end's brain mask (the same
   mask for every method), sample AUROC; medidiff minus each baseline with paired bootstrap CIs
   (resampling scans). A table goes to stdout and ``OUT/real_anatomy.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medidiff.io.atomic import write_text_atomic  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", required=True, help="folder of real healthy scans (whole heads)")
    p.add_argument("--model", default="models/sample")
    p.add_argument("--data", default="sample_data", help="labels.csv layout: its train/calib splits fit the baselines")
    p.add_argument("--out", required=True)
    p.add_argument("--copies", type=int, default=3, help="lesioned copies per real scan")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baselines", default="normative,intensity-hyper")
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--device", default="auto")
    p.add_argument("--reuse", action="store_true", help="keep the staged cohort and finished runs in --out "
                   "(only the metrics are recomputed)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- 1: the cohort

def stage_cohort(real: Path, out: Path, model: Path, copies: int, seed: int, log: Callable[[str], None]) -> Path:
    """Healthy copies and lesioned copies of every real scan, NIfTI on the scan's own grid + labels.csv."""
    from medidiff.baselines import load_preprocess_config
    from medidiff.frontend import run_frontend
    from medidiff.io import discover, write_nifti
    from medidiff.lesions.anomalies import insert_random_anomalies
    from medidiff.volume import Volume

    pcfg = load_preprocess_config(model)
    if pcfg.space != "template":
        raise SystemExit(f"{model}: a template-space model is needed (the front end places the lesions in the brain)")
    data = out / "data"
    rows = []
    found = discover(real)
    for s in found.skipped:
        log(f"  skipped: {s.path}: {s.reason}")
    for i, ref in enumerate(found.scans):
        try:
            vol = ref.load()
            fe = run_frontend(vol, pcfg.frontend_config(), pcfg.modality)
        except Exception as exc:  # noqa: BLE001 - one unreadable or QC-failed scan leaves the others
            log(f"  left out: {ref.paths[0]}: {exc}")
            continue
        brain = fe.brain_source
        arr = np.asarray(vol.array, dtype=np.float32)
        tissue = brain & (arr > 0.5 * float(np.median(arr[brain])))  # lesions in tissue, not in a ventricle
        name = f"real{i:02d}"
        write_nifti(Volume(arr, vol.affine), data / "test" / f"{name}_h.nii.gz")
        write_nifti(np.zeros(vol.shape, np.uint8), data / "masks" / f"{name}_h_mask.nii.gz", like=vol, dtype=np.uint8)
        rows.append(_row(f"{name}_h", 0, "", 0.0))
        for c in range(copies):
            rng = np.random.default_rng([seed, i, c])
            img, mask, infos = insert_random_anomalies(arr, vol.spacing, rng, brain_mask=tissue)
            sid = f"{name}_l{c}"
            write_nifti(Volume(img, vol.affine), data / "test" / f"{sid}.nii.gz")
            write_nifti(mask.astype(np.uint8), data / "masks" / f"{sid}_mask.nii.gz", like=vol, dtype=np.uint8)
            mm3 = float(mask.sum()) * float(np.prod(vol.spacing))
            rows.append(_row(sid, 1, ";".join(sorted({d["kind"] for d in infos})), mm3))
        log(f"  {ref.paths[0]} -> {name}: brain {fe.qc['brain_volume_ml']:.0f} ml, {copies} lesioned copies")
    import pandas as pd

    labels = data / "labels.csv"
    text = pd.DataFrame(rows).to_csv(index=False)
    write_text_atomic(labels, text)
    return labels


def _row(sid: str, label: int, kinds: str, mm3: float) -> dict[str, Any]:
    return {"scan_id": sid, "split": "test", "path": f"test/{sid}.nii.gz", "label": label,
            "mask_path": f"masks/{sid}_mask.nii.gz", "anomaly_types": kinds, "lesion_volume_mm3": round(mm3, 1)}


# ----------------------------------------------------------------------------- 2: the methods

def run_methods(a: argparse.Namespace, out: Path, log: Callable[[str], None]) -> dict[str, Path]:
    from medidiff.baselines import load_preprocess_config, make_baseline, run_baseline
    from medidiff.score.batch import score_folder
    from medidiff.score.calibration import Calibration

    model, data = Path(a.model), Path(a.data)
    runs = {"medidiff": out / "runs" / "medidiff"}
    t0 = time.perf_counter()
    if not (a.reuse and _finished(runs["medidiff"], out)):
        score_folder(model, out / "data" / "test", runs["medidiff"], overwrite=True, dicom_outputs=False,
                     device=a.device, progress=False, log=log)
        log(f"  medidiff scored ({time.perf_counter() - t0:.0f} s)")
    cal = Calibration.load(model)
    post = {k: cal.score_config[k] for k in ("score", "min_component_mm3")}
    ov = tuple(f"score.{k}={v}" for k, v in post.items())
    pcfg = load_preprocess_config(model)
    for name in [b for b in a.baselines.split(",") if b]:
        t0 = time.perf_counter()
        runs[name] = out / "runs" / name
        if a.reuse and _finished(runs[name], out):
            continue
        method = make_baseline(name, preprocess=pcfg)
        run_baseline(method, train=data / "train", calib=data / "calib", input=out / "data" / "test", out=runs[name],
                     overrides=ov, overwrite=True, log=log)
        log(f"  {name} fit, calibrated and scored ({time.perf_counter() - t0:.0f} s)")
    return runs


def _finished(run: Path, out: Path) -> bool:
    import pandas as pd

    if not (run / "scores.csv").is_file():
        return False
    return set(pd.read_csv(out / "data" / "labels.csv").scan_id) <= set(pd.read_csv(run / "scores.csv").scan_id)


# ----------------------------------------------------------------------------- 3: metrics

def collect(run: Path, labels: Path, brains: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per scan: label, scan score, and the map's values / truth inside the brain mask."""
    import nibabel as nib
    import pandas as pd

    lab = pd.read_csv(labels)
    scores = pd.read_csv(run / "scores.csv").set_index("scan_id")
    per = {}
    for r in lab.itertuples():
        if r.scan_id not in scores.index or scores.loc[r.scan_id, "status"] != "ok":
            continue
        amap = np.asarray(nib.load(run / "scans" / r.scan_id / "anomaly_map.nii.gz").dataobj, dtype=np.float32)
        truth = np.asarray(nib.load(labels.parent / r.mask_path).dataobj) > 0
        brain = brains[r.scan_id]
        per[r.scan_id] = {"label": int(r.label), "score": float(scores.loc[r.scan_id, "score"]),
                          "values": amap[brain], "truth": truth[brain]}
    return per


def brain_masks(run: Path, labels: Path) -> dict[str, np.ndarray]:
    """The front end's brain on each scan's grid, from medidiff's outputs: one mask for every method."""
    import nibabel as nib
    import pandas as pd

    return {sid: np.asarray(nib.load(run / "scans" / sid / "brain_mask.nii.gz").dataobj) > 0
            for sid in pd.read_csv(labels).scan_id if (run / "scans" / sid / "brain_mask.nii.gz").is_file()}


def pooled_ap(per: dict[str, Any], ids) -> float:
    """Voxel AP over the pooled voxels of ``ids`` (exact: ties grouped as in the step-wise AP)."""
    from medidiff.evaluate import metrics as M

    y = np.concatenate([per[i]["truth"] for i in ids])
    s = np.concatenate([per[i]["values"] for i in ids])
    return float(M.average_precision(y, s))


def _histograms(per: dict[str, Any], bins: int = 4000) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per scan: lesion / non-lesion voxel counts in score bins shared by all scans (quantile edges).
    Pooling scans is then a sum of counts, so a bootstrap resample costs O(bins), not O(voxels)."""
    pooled = np.concatenate([p["values"] for p in per.values()])
    edges = np.unique(np.quantile(pooled, np.linspace(0, 1, bins + 1)[1:-1]))
    out = {}
    for sid, p in per.items():
        idx = np.searchsorted(edges, p["values"], side="right")
        pos = np.bincount(idx[p["truth"]], minlength=len(edges) + 1)
        neg = np.bincount(idx[~p["truth"]], minlength=len(edges) + 1)
        out[sid] = (pos, neg)
    return out


def ap_from_counts(pos: np.ndarray, neg: np.ndarray) -> float:
    """Step-wise AP from per-bin counts, highest scores first (a bin = one threshold)."""
    pos, neg = pos[::-1].astype(np.float64), neg[::-1].astype(np.float64)
    tp, fp = np.cumsum(pos), np.cumsum(neg)
    if tp[-1] == 0:
        return float("nan")
    precision = tp / np.maximum(tp + fp, 1.0)
    return float(np.sum(pos / tp[-1] * precision))


def compare(a: dict[str, Any], b: dict[str, Any], n_boot: int, seed: int = 0) -> dict[str, Any]:
    """a - b on the same scans: pooled voxel AP (scans resampled) and sample AUROC, percentile CIs."""
    from medidiff.evaluate import metrics as M

    ids = sorted(set(a) & set(b))
    y = np.array([a[i]["label"] for i in ids], bool)
    res: dict[str, Any] = {"n_scans": len(ids)}
    if y.any() and not y.all():
        res["sample_auroc"] = M.paired_bootstrap_diff(M.auroc, y, [a[i]["score"] for i in ids],
                                                      [b[i]["score"] for i in ids], n_boot, seed)
    ha, hb = _histograms({i: a[i] for i in ids}), _histograms({i: b[i] for i in ids})
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        pick = [ids[k] for k in rng.integers(0, len(ids), len(ids))]
        if not any(a[i]["label"] for i in pick):
            continue
        diffs.append(ap_from_counts(sum(ha[i][0] for i in pick), sum(ha[i][1] for i in pick))
                     - ap_from_counts(sum(hb[i][0] for i in pick), sum(hb[i][1] for i in pick)))
    d = pooled_ap(a, ids) - pooled_ap(b, ids)
    res["voxel_ap"] = {"diff": d, "ci_low": float(np.percentile(diffs, 2.5)), "ci_high": float(np.percentile(diffs, 97.5)),
                       "n": len(ids), "n_lesioned": int(y.sum()), "bootstrap": "scans resampled; AP from 4000 "
                       "quantile bins per resample"}
    return res


def summarise(per: dict[str, Any]) -> dict[str, Any]:
    from medidiff.evaluate import metrics as M

    ids = sorted(per)
    y = np.array([per[i]["label"] for i in ids], bool)
    s = np.array([per[i]["score"] for i in ids])
    return {"voxel_ap": pooled_ap(per, ids), "sample_auroc": float(M.auroc(y, s)) if y.any() and not y.all() else None,
            "n_scans": len(ids), "n_lesioned": int(y.sum())}


def render(result: dict[str, Any]) -> str:
    L = [f"Real healthy heads: {result['n_real']}; lesioned copies per head: {result['copies']}; "
         f"{result['n_scans']} scans. Machine: {result['machine']}.", "",
         "| method | voxel AP (inside the brain) | sample AUROC | flagged healthy / lesioned |", "|---|---|---|---|"]
    for name, m in result["methods"].items():
        auroc = "n/a" if m["sample_auroc"] is None else f"{m['sample_auroc']:.3f}"
        L.append(f"| {name} | {m['voxel_ap']:.3f} | {auroc} | {m['flagged_healthy']} / {m['flagged_lesioned']} |")
    L += ["", "medidiff minus each baseline on the same scans (paired bootstrap over scans, 95 % CI):", ""]
    for name, c in result["paired"].items():
        v = c["voxel_ap"]
        line = f"- {name}: voxel AP {v['diff']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}]"
        if "sample_auroc" in c:
            s = c["sample_auroc"]
            line += f"; sample AUROC {s['diff']:+.3f} [{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]"
        L.append(line)
    return "\n".join(L) + "\n"


def main(argv=None, log: Callable[[str], None] = print) -> dict[str, Any]:
    import platform

    import pandas as pd

    from medidiff.runtime import set_threads

    a = parse_args(argv)
    set_threads()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    labels = out / "data" / "labels.csv"
    if not (a.reuse and labels.is_file()):
        log("staging the real-anatomy cohort")
        labels = stage_cohort(Path(a.real), out, Path(a.model), a.copies, a.seed, log)
    runs = run_methods(a, out, log)
    brains = brain_masks(runs["medidiff"], labels)
    per = {name: collect(run, labels, brains) for name, run in runs.items()}
    methods = {}
    for name, run in runs.items():
        df = pd.read_csv(run / "scores.csv")
        lab = pd.read_csv(labels).set_index("scan_id")
        df = df[df.status == "ok"]
        flags = df.flag.astype(bool).to_numpy()
        y = lab.loc[df.scan_id, "label"].to_numpy()
        methods[name] = {**summarise(per[name]), "flagged_healthy": f"{int(flags[y == 0].sum())}/{int((y == 0).sum())}",
                         "flagged_lesioned": f"{int(flags[y == 1].sum())}/{int((y == 1).sum())}"}
    paired = {name: compare(per["medidiff"], per[name], a.n_boot) for name in per if name != "medidiff"}
    result = {"command": "python pipelines/benchmark_real_anatomy.py " + " ".join(argv or sys.argv[1:]),
              "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
              "n_real": int(len(pd.read_csv(labels).query("label == 0"))), "copies": a.copies,
              "n_scans": int(len(pd.read_csv(labels))), "methods": methods, "paired": paired,
              "seconds": round(time.perf_counter() - t_all, 1)}
    write_text_atomic(out / "real_anatomy.json", json.dumps(result, indent=2, default=float))
    md = render(result)
    write_text_atomic(out / "real_anatomy.md", md)
    log(md)
    return result


if __name__ == "__main__":
    main()
