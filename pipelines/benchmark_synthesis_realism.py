"""Realism of generators against held-out real heads (prints a Markdown table, writes realism.json).

For each ``--model`` (a generator folder; several are compared side by side) ``--n`` samples are
drawn and compared with the real heads of ``--reference-roles`` of the subject split (default
``calib,test``: never trained on), all on the generator's grid through its own front end:

* brain fraction of the grid, intensity Wasserstein inside the brain, MMD² (RBF, 2x pooled) and the
  feature Fréchet distance (fixed random 3D conv net), each next to its **real-vs-real** value:
  real half A against real half B, samples (as many as A) against the same half B
  (``medidiff.synthesis.quality.real_vs_real``);
* MS-SSIM among samples against the range among the real heads;
* **memorisation** against the training subjects (``--train-roles``, default ``train``): every
  sample's nearest-training-subject similarity next to the same similarity of each held-out real
  head (``quality.memorization_vs_real``); a sample closer to a training subject than any held-out
  real head is flagged;
* for conditioned generators, sample i is drawn at the age and sex of reference head i (cycled),
  and **the age trend** of the brain and CSF fractions in the samples is set against the real
  heads' trend (``quality.age_trend``).

    python pipelines/benchmark_synthesis_realism.py --cohort COHORT --model models/generator \\
        --model runs/generator_real --out runs/realism --cache runs/synthesis_cache
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "pipelines"))


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="generator folder (repeatable)")
    ap.add_argument("--label", action="append", default=[], help="a name per --model for the table")
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--real-scans", type=Path, default=None)
    ap.add_argument("--split-csv", type=Path, default=ROOT / "configs" / "real_cohort_split.csv")
    ap.add_argument("--reference-roles", default="calib,test")
    ap.add_argument("--train-roles", default="train")
    ap.add_argument("--n", type=int, default=None, help="samples per model (default: as many as reference heads)")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=None, help="preprocessed-scan cache (default OUT/cache)")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=None)
    return ap.parse_args(argv)


def _roles(text: str) -> list[str]:
    return [r.strip() for r in text.split(",") if r.strip()]


def load_role(split_csv: Path, roles: list[str], cohort: Path, real_scans: Path | None, pcfg, cache,
              log: Callable[[str], None]) -> dict[str, list]:
    from real_split import read_split, scan_paths

    from medidiff.generator.conditioning import canonical
    from medidiff.train.scan_cache import preprocess_cached

    rows = scan_paths(read_split(split_csv), roles, cohort, real_scans)
    out: dict[str, list] = {"ids": [], "images": [], "fgs": [], "conditions": []}
    for r in rows:
        try:
            im, fg = preprocess_cached(r["abspath"], pcfg, cache, log)
        except Exception as exc:  # one unreadable head never stops the benchmark
            log(f"warning: skipping {r['subject']}: {str(exc)[:160]}")
            continue
        out["ids"].append(r["subject"])
        out["images"].append(im)
        out["fgs"].append(fg)
        out["conditions"].append(canonical({"age": r.get("age"), "sex": r.get("sex")}))
    return out


def draw_samples(model: Path, out: Path, n: int, seed: int, steps, guidance, conditions, log) -> tuple[list, list, dict]:
    from medidiff.generator.store import load_generator
    from medidiff.io.nifti import read_nifti
    from medidiff.synthesis.run import SynthOptions, synthesize_run
    from medidiff.model.sampler_config import SamplerConfig

    g = load_generator(model)
    names = tuple(g.config.latent.conditioning)
    conds = [{k: v for k, v in c.items() if k in names} or None for c in conditions] if names else None
    opts = SynthOptions(n=n, base_seed=seed, quality=False, sampler=SamplerConfig(steps=steps, batch_size=4),
                        conditions=conds, guidance=guidance if names else None)
    t0 = time.perf_counter()
    summary = synthesize_run(model, out, opts, device="cpu", progress=False, log=log)
    recs = json.loads((out / "manifest.json").read_text())["samples"]
    images = [read_nifti(out / r["file"]).array for r in recs]
    info = {"model": str(model), "model_hash": g.model_hash, "conditioning": list(names),
            "steps_trained": g.metadata.get("steps"), "n_samples": len(images),
            "seconds": round(time.perf_counter() - t0, 1), "seconds_per_sample": summary.seconds_per_sample,
            "training_data": (g.metadata.get("training_data") or {}).get("scan_ids")}
    return images, [r.get("condition") for r in recs], info


def evaluate_model(images, conds, refs, train, n_boot: int, log) -> dict[str, Any]:
    from medidiff.synthesis import quality as q

    ids = [f"synth_{i:05d}" for i in range(len(images))]
    fgs = [q.foreground(im) for im in images]
    report: dict[str, Any] = {"n_samples": len(images), "diversity": q.pairwise_msssim(images)}
    ref = q.reference_distance(images, refs["images"], fgs, refs["fgs"])
    ref["diversity_reference"] = q.pairwise_msssim(refs["images"])
    ref["real_vs_real"] = q.real_vs_real(images, refs["images"], fgs, refs["fgs"])
    report["reference"] = ref
    report["memorization"] = q.memorization_vs_real(images, ids, train["images"], train["ids"], refs["images"],
                                                    refs["ids"])
    ages = [(c or {}).get("age") for c in conds]
    if all(a is not None for a in ages) and len(ages) >= 3:
        r_idx = [k for k, c in enumerate(refs["conditions"]) if "age" in c]
        report["age_trend"] = q.age_trend(images, ages, [refs["images"][k] for k in r_idx],
                                          [refs["fgs"][k] for k in r_idx],
                                          [refs["conditions"][k]["age"] for k in r_idx], n_boot=n_boot)
    report["comparison"] = q.comparison_table(report)
    return report


def table(results: list[dict[str, Any]]) -> str:
    def f(v, nd=4):
        if v is None:
            return "—"
        return f"{v:.{nd}g}" if isinstance(v, float) else str(v)

    measures = []
    for res in results:
        for row in res["comparison"]:
            if row["measure"] not in measures:
                measures.append(row["measure"])
    head = "| measure | " + " | ".join(r["label"] for r in results) + " | real vs real | target |"
    lines = [head, "|" + "---|" * (len(results) + 3)]
    for m in measures:
        cells, real, target = [], None, ""
        for res in results:
            row = next((r for r in res["comparison"] if r["measure"] == m), None)
            if row is None:
                cells.append("—")
                continue
            cells.append(f"{f(row['samples'])} ({'met' if row['met'] else 'missed'})")
            rr = row.get("real_range")
            real = f"{f(row['real'])}" + (f" ({f(rr[0], 3)}–{f(rr[1], 3)})" if rr else "")
            target = row["target"]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {real} | {target} |")
    mem = ["| nearest-training-subject similarity (median, max) | " + " | ".join(
        f"{f(r['memorization']['samples_nn']['median'], 3)}, {f(r['memorization']['samples_nn']['max'], 3)}"
        for r in results) + " | held-out real: " + (lambda h: f"{f(h['median'], 3)}, {f(h['max'], 3)}")(
        results[0]["memorization"]["heldout_nn"]) + " | max sample ≤ max held-out real |"]
    return "\n".join(lines + mem)


def trend_table(results: list[dict[str, Any]]) -> str:
    rows = ["| model | measure | samples: slope / decade [95 % CI] | real: slope / decade [95 % CI] | condition shows |",
            "|---|---|---|---|---|"]
    for res in results:
        tr = res.get("age_trend")
        if not tr:
            continue
        for key in ("brain_fraction", "csf_fraction", "central_csf_fraction"):
            s, r = tr[key]["samples"], tr[key]["real"]

            def fmt(d):
                if d.get("slope_per_decade") is None:
                    return "—"
                ci = d.get("ci95") or [float("nan")] * 2
                return f"{d['slope_per_decade']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}] (n={d['n']})"
            rows.append(f"| {res['label']} | {key} | {fmt(s)} | {fmt(r)} | {tr[key]['condition_shows']} |")
    return "\n".join(rows) if len(rows) > 2 else ""


def main(argv=None, log: Callable[[str], None] = print) -> dict[str, Any]:
    a = parse(argv)
    from medidiff.generator.store import load_generator
    from medidiff.runtime import set_threads

    set_threads(1, a.threads)
    labels = a.label + [Path(m).name for m in a.model[len(a.label):]]
    cache = a.cache or (a.out / "cache")
    results = []
    data_by_pcfg: dict[str, tuple[dict, dict]] = {}
    for model, label in zip(a.model, labels):
        pcfg = load_generator(model).config.preprocess
        key = json.dumps(pcfg.to_dict(), sort_keys=True, default=str)
        if key not in data_by_pcfg:
            refs = load_role(a.split_csv, _roles(a.reference_roles), a.cohort, a.real_scans, pcfg, cache, log)
            train = load_role(a.split_csv, _roles(a.train_roles), a.cohort, a.real_scans, pcfg, cache, log)
            if set(refs["ids"]) & set(train["ids"]):
                raise SystemExit("reference and training roles share subjects")
            data_by_pcfg[key] = (refs, train)
        refs, train = data_by_pcfg[key]
        n = a.n or len(refs["ids"])
        images, conds, info = draw_samples(Path(model), a.out / label / "samples", n, a.seed, a.steps, a.guidance,
                                           refs["conditions"], log)
        rep = evaluate_model(images, conds, refs, train, a.n_boot, log)
        results.append({"label": label, **info, "reference_subjects": refs["ids"], "train_subjects": train["ids"],
                        **rep})
        log(f"{label}: {info['n_samples']} samples evaluated")
    a.out.mkdir(parents=True, exist_ok=True)
    out = {"reference_roles": _roles(a.reference_roles), "train_roles": _roles(a.train_roles), "results": results}
    (a.out / "realism.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    md = table(results)
    tt = trend_table(results)
    (a.out / "realism.md").write_text(md + "\n\n" + tt + "\n")
    log(md)
    if tt:
        log(tt)
    return out


if __name__ == "__main__":
    main()
