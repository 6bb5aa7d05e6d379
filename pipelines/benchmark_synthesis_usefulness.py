"""Train on synthetic, test on real: is a generator's output good enough to build datasets with?

An anomaly baseline (default: the voxel-wise normative model; ``--baseline autoencoder`` for the
3D autoencoder) is fitted twice, once on the real healthy ``train`` scans and once on as many
synthetic healthy samples from the generator. Both arms are calibrated on the same real
``calib`` scans, score the same real ``val`` scans through the same post-processor
(``medidiff/score/postprocess.py``) and are evaluated against the same labels, so the only
difference is where the healthy training volumes came from.

    python pipelines/benchmark_synthesis_usefulness.py --generator runs/generator --out runs/useful
    python pipelines/benchmark_synthesis_usefulness.py --synthetic synth_run --out runs/useful   # existing samples

Prints a table (sample AUROC, voxel AP, their synthetic/real ratio; the issue's target is a
ratio >= 0.90 of the real-trained AUROC) and writes OUT/usefulness.json.

**Real split** (``--cohort``): the real cohort's subject split (``configs/real_cohort_split.csv``).
The normative baseline is fitted on model-grid volumes:

* (a) ``real``: the real ``train`` role (12 heads) against ``synthetic``: as many generated heads
  (conditioned generators: at the train subjects' ages and sexes);
* (b) ``real+N``: the real train heads plus N generated ones, for each N of ``--mix-n``;

and every arm scores the same lesioned heads of the evaluation split (``--eval-split``, default
``val``) staged by ``pipelines/stage_real_cohort.py`` (``--staged LABELS_CSV``, or staged here into
OUT/staged). Sample score: the baseline's default scan score (top-k mean of |z| in the eroded brain)
on the model grid, so sample AUROC needs no calibration; every difference to the real arm is
paired by scan and bootstrapped by **subject** (all copies of a subject drawn together), as is the
synthetic/real AUROC ratio. Real heads go through the generator's own front end once (``--cache``);
generated heads are model-grid volumes already.

    python pipelines/benchmark_synthesis_usefulness.py --cohort COHORT --generator runs/generator_real \
        --out runs/useful_real --cache runs/synthesis_cache --mix-n 12,24,48
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TARGET_RATIO = 0.90


def _stage_splits():
    spec = importlib.util.spec_from_file_location("benchmark", ROOT / "pipelines" / "benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.stage_splits


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", type=Path, default=None, help="real-split mode: the real cohort folder")
    ap.add_argument("--real-scans", type=Path, default=None)
    ap.add_argument("--split-csv", type=Path, default=ROOT / "configs" / "real_cohort_split.csv")
    ap.add_argument("--staged", type=Path, default=None, help="real-split mode: labels.csv of a stage_real_cohort.py "
                    "run holding the evaluation split (default: stage it into OUT/staged)")
    ap.add_argument("--stage-model", type=Path, default=ROOT / "models" / "brain_t1_2mm",
                    help="template-space model whose front end places the staged lesions")
    ap.add_argument("--eval-split", default="val")
    ap.add_argument("--mix-n", default="12,24,48", help="real-split mode: synthetic heads added to the real ones")
    ap.add_argument("--cache", type=Path, default=None, help="real-split mode: preprocessed-scan cache")
    ap.add_argument("--guidance", type=float, default=None)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--generator", help="generator (or pixel model) folder to sample the synthetic set from")
    src.add_argument("--synthetic", help="an existing `medidiff synthesize` output folder (healthy samples)")
    ap.add_argument("--data", default=str(ROOT / "sample_data"), help="folder with labels.csv and the split folders")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-synthetic", type=int, default=None, help="synthetic training volumes (default: as many as real)")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the generator's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline", default="normative", choices=["normative", "autoencoder"])
    ap.add_argument("--ae-steps", type=int, default=3000, help="autoencoder baseline: training steps")
    ap.add_argument("--ae-minutes", type=float, default=10.0, help="autoencoder baseline: time budget per arm")
    ap.add_argument("--limit", type=int, default=None, help="at most this many scans per split and label")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="scoring override, e.g. score.score=topk_mean")
    return ap.parse_args(argv)


def synthesize(generator: str, out: Path, n: int, steps: int | None, seed: int, log: Callable[[str], None]) -> Path:
    from medidiff.synthesis.run import SynthOptions, synthesize_run
    from medidiff.model.sampler_config import SamplerConfig

    summary = synthesize_run(generator, out, SynthOptions(n=n, base_seed=seed, quality=False,
                                                          sampler=SamplerConfig(steps=steps)),
                             device="cpu", progress=False, log=log)
    log(summary.line())
    return out


def run_arm(name: str, train: Path, splits: dict[str, Path], labels: Path, out: Path, pcfg, a, log) -> dict[str, Any]:
    from medidiff.baselines import make_baseline, run_baseline
    from medidiff.evaluate import EvalOptions, evaluate_run

    kwargs = {"max_steps": a.ae_steps, "minutes": a.ae_minutes} if a.baseline == "autoencoder" else {}
    method = make_baseline(a.baseline, preprocess=pcfg, **kwargs)
    t0 = time.perf_counter()
    run_baseline(method, calib=splits["calib"], input=splits["val"], out=out, train=train,
                 overrides=tuple(a.overrides), log=log)
    rep = evaluate_run(out, labels, opts=EvalOptions(n_boot=a.n_boot, plots=False), log=log)
    sample, voxel = rep.get("sample") or {}, rep.get("voxel") or {}
    # Volumes the front end refuses (e.g. an implausible brain volume) are left out of the fit:
    # report how many were offered and how many the baseline was actually fitted on.
    used = getattr(method, "n_train", None) or (getattr(method, "history", None) or {}).get("n_train")
    return {"arm": name, "train": str(train), "n_offered": len(list(_images(train))), "n_train": used,
            "sample_auroc": sample.get("auroc"), "sample_auroc_ci95": sample.get("auroc_ci95"),
            "voxel_ap": voxel.get("ap"), "seconds": round(time.perf_counter() - t0, 1)}


def _images(folder: Path):
    return sorted(p for p in folder.iterdir() if p.name.endswith((".nii", ".nii.gz")))


def table(real: dict[str, Any], synth: dict[str, Any]) -> str:
    def f(v):
        return "—" if v is None else f"{v:.3f}"

    def ratio(key):
        return f(synth[key] / real[key]) if real.get(key) and synth.get(key) is not None else "—"

    lines = ["| trained on | n used / offered | sample AUROC | voxel AP |", "|---|---|---|---|"]
    for r in (real, synth):
        lines.append(f"| {r['arm']} | {r['n_train']} / {r['n_offered']} | {f(r['sample_auroc'])} | {f(r['voxel_ap'])} |")
    lines.append(f"| synthetic / real | | {ratio('sample_auroc')} | {ratio('voxel_ap')} |")
    return "\n".join(lines)


def main(argv=None, log: Callable[[str], None] = print) -> dict[str, Any]:
    a = parse(argv)
    if a.cohort is not None:
        return main_real(a, log)
    from medidiff.preprocess_config import PreprocessConfig
    from medidiff.runtime import set_threads

    set_threads()
    out, data = Path(a.out), Path(a.data)
    splits = _stage_splits()(data, out, a.limit)
    missing = [s for s in ("train", "calib", "val") if s not in splits]
    if missing:
        raise SystemExit(f"{data}/labels.csv has no scans in split(s) {missing}")
    n_real = len(_images(splits["train"]))
    if a.generator:
        model_dir = Path(a.generator)
        synth_dir = synthesize(a.generator, out / "synthetic", a.n_synthetic or n_real, a.steps, a.seed, log)
    else:
        synth_dir = Path(a.synthetic)
        model_dir = None
    manifest = json.loads((synth_dir / "manifest.json").read_text())
    if any(r.get("label") == 1 for r in manifest.get("samples", [])):
        raise SystemExit(f"{synth_dir} holds samples with inserted anomalies; the healthy training set must be clean")
    if model_dir is not None:
        pcfg = PreprocessConfig.from_dict(json.loads((model_dir / "model.json").read_text())["preprocess"])
    else:
        from medidiff.baselines import load_preprocess_config

        pcfg = load_preprocess_config(None)
    labels = data / "labels.csv"
    real = run_arm("real", splits["train"], splits, labels, out / "real", pcfg, a, log)
    synth = run_arm("synthetic", synth_dir / "images", splits, labels, out / "synthetic_trained", pcfg, a, log)
    ratio = (synth["sample_auroc"] / real["sample_auroc"]) if real["sample_auroc"] and synth["sample_auroc"] else None
    result = {"baseline": a.baseline, "real": real, "synthetic": synth, "auroc_ratio": ratio,
              "target_ratio": TARGET_RATIO, "met": None if ratio is None else ratio >= TARGET_RATIO,
              "synthetic_source": str(a.generator or a.synthetic), "machine": platform.processor() or platform.machine()}
    (out / "usefulness.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    log(table(real, synth))
    log(f"target: synthetic-trained sample AUROC >= {TARGET_RATIO:.0%} of real-trained: "
        f"{'met' if result['met'] else 'missed' if result['met'] is not None else 'undefined'}")
    return result


# ----------------------------------------------------------------------------- real split

def fit_normative(pcfg, images: Sequence[np.ndarray], fgs: Sequence[np.ndarray], ids: Sequence[str]):
    """medidiff's normative baseline fitted on model-grid volumes (the statistics of
    ``NormativeBaseline.fit``: voxel mean/std over each volume's foreground, std floored at half
    its median over voxels covered by enough volumes)."""
    from medidiff.baselines.normative import NormativeBaseline

    m = NormativeBaseline(pcfg)
    x = np.stack(images).astype(np.float64)
    f = np.stack(fgs).astype(np.float64)
    cnt = f.sum(axis=0)
    n = np.maximum(cnt, 1)
    mean = (x * f).sum(axis=0) / n
    std = np.sqrt(np.maximum((x * x * f).sum(axis=0) / n - mean * mean, 0.0))
    valid = cnt >= max(2, m.min_coverage * len(ids))
    floor = 0.5 * float(np.median(std[valid])) if valid.any() else 1e-3
    m.mean, m.std, m.count = mean.astype(np.float32), np.maximum(std, max(floor, 1e-6)).astype(np.float32), \
        cnt.astype(np.float32)
    m.n_train, m.train_ids = len(ids), list(ids)
    return m


def score_scans(method, images: Sequence[np.ndarray], fgs: Sequence[np.ndarray]) -> np.ndarray:
    """The baseline's default scan score of each model-grid volume."""
    from types import SimpleNamespace

    from medidiff.baselines.common import baseline_score_config
    from medidiff.score.maps import scan_score

    cfg = baseline_score_config()
    vox = float(np.prod(method.pcfg.spacing))
    out = []
    for im, fg in zip(images, fgs):
        z, region = method.zmap(SimpleNamespace(image=im, foreground=fg))
        out.append(scan_score(z, region, cfg, vox))
    return np.asarray(out, np.float64)


def ratio_ci(y, s_num, s_den, groups, n_boot: int, seed: int = 0) -> list[float]:
    """Percentile 95 % CI of AUROC(s_num) / AUROC(s_den), subjects resampled (all their scans together)."""
    from medidiff.evaluate.metrics import auroc

    y = np.asarray(y, bool)
    keys = np.asarray([str(g) for g in groups])
    uniq = sorted(set(keys))
    members = [np.flatnonzero(keys == u) for u in uniq]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = np.concatenate([members[k] for k in rng.integers(0, len(uniq), len(uniq))])
        if y[idx].all() or not y[idx].any():
            continue
        den = auroc(y[idx], s_den[idx])
        if den > 0:
            vals.append(auroc(y[idx], s_num[idx]) / den)
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))] if vals else [None, None]


def _eval_set(labels_csv: Path, split: str, pcfg, cache, log) -> dict[str, Any]:
    from medidiff.train.scan_cache import preprocess_cached

    with open(labels_csv, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("split") == split]
    if not rows:
        raise SystemExit(f"{labels_csv}: no scans in split {split!r}")
    out: dict[str, Any] = {"ids": [], "subjects": [], "labels": [], "images": [], "fgs": [], "skipped": {}}
    for r in rows:
        try:
            im, fg = preprocess_cached(labels_csv.parent / r["path"], pcfg, cache, log)
        except Exception as exc:  # e.g. the front end's registration QC: left out of every arm alike
            out["skipped"][r["scan_id"]] = str(exc)[:200]
            log(f"warning: {r['scan_id']} left out of the evaluation: {str(exc)[:160]}")
            continue
        out["ids"].append(r["scan_id"])
        out["subjects"].append(r.get("subject") or r["scan_id"])
        out["labels"].append(int(r["label"]))
        out["images"].append(im)
        out["fgs"].append(fg)
    if len(set(out["labels"])) < 2:
        raise SystemExit(f"{labels_csv}: split {split!r} needs healthy and lesioned scans")
    return out


def main_real(a, log: Callable[[str], None]) -> dict[str, Any]:
    from medidiff.evaluate.metrics import auroc, group_bootstrap_ci, paired_group_bootstrap_diff
    from medidiff.generator.store import load_generator
    from medidiff.io.nifti import read_nifti
    from medidiff.runtime import set_threads
    from medidiff.synthesis.quality import foreground
    from medidiff.synthesis.run import SynthOptions, synthesize_run
    from medidiff.model.sampler_config import SamplerConfig

    sys.path.insert(0, str(ROOT / "pipelines"))
    from benchmark_synthesis_realism import load_role

    set_threads()
    if not a.generator:
        raise SystemExit("real-split mode needs --generator (a latent-diffusion generator folder)")
    out = Path(a.out)
    cache = a.cache or (out / "cache")
    gen = load_generator(a.generator)
    pcfg = gen.config.preprocess
    train = load_role(a.split_csv, ["train"], a.cohort, a.real_scans, pcfg, cache, log)
    labels_csv = a.staged
    if labels_csv is None:
        sys.path.insert(0, str(ROOT / "pipelines"))
        from stage_real_cohort import stage

        labels_csv = stage(a.cohort, a.real_scans, a.split_csv, out / "staged", a.stage_model, roles=(a.eval_split,),
                           seed=a.seed, reuse=(out / "staged" / "data" / "staging.json").is_file(), log=log)
    ev = _eval_set(Path(labels_csv), a.eval_split, pcfg, cache, log)
    if set(ev["subjects"]) & set(train["ids"]):
        raise SystemExit("the evaluation split shares subjects with the train role")
    mix = [int(x) for x in str(a.mix_n).split(",") if x.strip()]
    n_syn = max([len(train["ids"]), a.n_synthetic or 0] + mix)
    names = tuple(gen.config.latent.conditioning)
    conds = [{k: v for k, v in c.items() if k in names} or None for c in train["conditions"]] if names else None
    syn_dir = out / "synthetic"
    summary = synthesize_run(a.generator, syn_dir, SynthOptions(
        n=n_syn, base_seed=a.seed, quality=False, conditions=conds, guidance=a.guidance if names else None,
        sampler=SamplerConfig(steps=a.steps, batch_size=4)), device="cpu", progress=False, log=log)
    log(summary.line())
    recs = json.loads((syn_dir / "manifest.json").read_text())["samples"]
    syn_imgs = [read_nifti(syn_dir / r["file"]).array for r in recs][:n_syn]
    syn_fgs = [foreground(im) for im in syn_imgs]
    syn_ids = [r["scan_id"] for r in recs][:n_syn]
    n_real = len(train["ids"])
    arms = {"real": (train["images"], train["fgs"], train["ids"]),
            "synthetic": (syn_imgs[:a.n_synthetic or n_real], syn_fgs[:a.n_synthetic or n_real],
                          syn_ids[:a.n_synthetic or n_real])}
    for n in mix:
        arms[f"real+{n}"] = (train["images"] + syn_imgs[:n], train["fgs"] + syn_fgs[:n], train["ids"] + syn_ids[:n])
    y = np.asarray(ev["labels"], bool)
    groups = ev["subjects"]
    scores, rows = {}, []
    for name, (imgs, fgs, ids) in arms.items():
        method = fit_normative(pcfg, imgs, fgs, ids)
        scores[name] = score_scans(method, ev["images"], ev["fgs"])
        lo, hi = group_bootstrap_ci(lambda i, s=scores[name]: auroc(y[i], s[i]), groups, a.n_boot, a.seed)
        rows.append({"arm": name, "n_train": len(ids), "n_real": sum(1 for i in ids if i in train["ids"]),
                     "n_synthetic": sum(1 for i in ids if i not in train["ids"]),
                     "sample_auroc": auroc(y, scores[name]), "sample_auroc_ci95": [lo, hi]})
    for r in rows:
        if r["arm"] != "real":
            r["vs_real"] = paired_group_bootstrap_diff(auroc, y, scores[r["arm"]], scores["real"], groups,
                                                       a.n_boot, a.seed)
    real_auc = rows[0]["sample_auroc"]
    syn_auc = rows[1]["sample_auroc"]
    ratio = syn_auc / real_auc if real_auc else None
    result = {"mode": "real_split", "baseline": "normative (model grid)", "generator": str(a.generator),
              "generator_hash": gen.model_hash, "conditioning": list(names), "eval_split": a.eval_split,
              "labels": str(labels_csv), "n_eval_scans": int(len(y)), "n_eval_lesioned": int(y.sum()),
              "n_eval_subjects": len(set(groups)), "eval_skipped": ev["skipped"], "arms": rows,
              "a": {"auroc_ratio": ratio, "ratio_ci95": ratio_ci(y, scores["synthetic"], scores["real"], groups,
                                                                 a.n_boot, a.seed),
                    "target_ratio": TARGET_RATIO, "met": None if ratio is None else ratio >= TARGET_RATIO},
              "b": {r["arm"]: {"diff": r["vs_real"]["diff"], "ci95": [r["vs_real"]["ci_low"], r["vs_real"]["ci_high"]],
                               "met": r["vs_real"]["diff"] >= 0} for r in rows if r["arm"].startswith("real+")},
              "scores": {k: v.tolist() for k, v in scores.items()}, "eval_scan_ids": ev["ids"],
              "eval_subjects": groups, "machine": platform.processor() or platform.machine()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "usefulness.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    md = real_table(result)
    (out / "usefulness.md").write_text(md + "\n")
    log(md)
    return result


def real_table(res: dict[str, Any]) -> str:
    def f(v):
        return "—" if v is None else f"{v:.3f}"

    lines = ["| trained on | real + synthetic heads | sample AUROC [95 % CI, subjects] | minus real-only [95 % CI] |",
             "|---|---|---|---|"]
    for r in res["arms"]:
        ci = r["sample_auroc_ci95"]
        d = r.get("vs_real")
        diff = "—" if d is None else f"{d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
        lines.append(f"| {r['arm']} | {r['n_real']} + {r['n_synthetic']} | {f(r['sample_auroc'])} "
                     f"[{f(ci[0])}, {f(ci[1])}] | {diff} |")
    ra = res["a"]
    lines.append(f"| (a) synthetic / real AUROC | | {f(ra['auroc_ratio'])} [{f(ra['ratio_ci95'][0])}, "
                 f"{f(ra['ratio_ci95'][1])}] | target >= {ra['target_ratio']:.2f}: "
                 f"{'met' if ra['met'] else 'missed'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
