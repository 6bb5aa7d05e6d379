"""Front end on real whole-head scans: time per step, peak memory, QC numbers, a QC figure.

Not a test: prints a table (medians over repeats) and, with ``--figure``, saves one row per
scan (brain mask outline on the source slice; the registered brain on the template grid with
the template outline) so a person can check the masks and the registration.

    python pipelines/benchmark_frontend.py --input DIR_OF_HEAD_SCANS --figure docs/frontend_qc.png
    python pipelines/benchmark_frontend.py --input DIR --model models/brain_t1_4mm   # + end-to-end scoring
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def qc_row(axes, name, vol, pre, template_t1) -> None:
    src = vol.array
    k = int(np.argmin(vol.spacing)) if max(vol.spacing) / min(vol.spacing) > 2 else 0
    k = int(np.argmax(vol.spacing)) if max(vol.spacing) / min(vol.spacing) > 2 else k
    sl = [slice(None)] * 3
    sl[k] = int(np.argmax(pre.brain_source.sum(axis=tuple(a for a in range(3) if a != k))))
    axes[0].imshow(src[tuple(sl)].T, origin="lower", cmap="gray")
    axes[0].contour(pre.brain_source[tuple(sl)].T, [0.5], colors="yellow", linewidths=0.8)
    axes[0].set_title(f"{name[:22]}: brain mask", fontsize=8)
    img = pre.image
    c = [s // 2 for s in img.shape]
    views = [(img[c[0]].T, template_t1[c[0]].T, "sagittal"), (img[:, c[1]].T, template_t1[:, c[1]].T, "coronal"),
             (img[:, :, c[2]].T, template_t1[:, :, c[2]].T, "axial")]
    for ax, (a, t, label) in zip(axes[1:], views):
        ax.imshow(a, origin="lower", cmap="gray", vmin=0, vmax=1.2)
        ax.contour(t > 0.1, [0.5], colors="red", linewidths=0.6)
        ax.set_title(f"template space, {label}", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, nargs="+", help="folder(s) or files of whole-head scans")
    ap.add_argument("--model", default=None, help="also time end-to-end scoring with this model folder")
    ap.add_argument("--config", default=str(ROOT / "configs" / "brain_t1_4mm.yaml"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--figure", default=None)
    args = ap.parse_args()

    from medidiff.io.discover import discover
    from medidiff.model.config import load_config
    from medidiff.preprocess import _template_on_grid, preprocess
    from medidiff.runtime import set_threads

    threads = set_threads()
    pcfg = load_config(args.config).preprocess
    scans = [s for p in args.input for s in discover(p).scans]
    scorer = None
    if args.model:
        from medidiff.score.calibration import Calibration
        from medidiff.score.config import load_score_config
        from medidiff.score.pipeline import Scorer
        from medidiff.model.store import load_model

        loaded = load_model(args.model)
        cal = Calibration.load(args.model, loaded.model_hash)
        scorer = Scorer(loaded, load_score_config(None, [], base=cal.score_config if cal else None), cal)
        pcfg = loaded.preprocess_config
    rows, figs = [], []
    for ref in scans:
        vol = ref.load()
        steps: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            pre = preprocess(vol, pcfg)
            total = time.perf_counter() - t0
            for k, v in pre.qc["frontend_seconds"].items():
                steps.setdefault(k, []).append(v)
            steps.setdefault("front end + resampling", []).append(total)
            if scorer is not None:
                t0 = time.perf_counter()
                res = scorer.score_volume(vol)
                steps.setdefault("end to end (score_volume)", []).append(time.perf_counter() - t0)
        row = {"scan": ref.scan_id, "shape": "x".join(map(str, vol.shape)),
               "spacing": "x".join(f"{s:.1f}" for s in vol.spacing), **{k: statistics.median(v) for k, v in steps.items()},
               "brain ml": pre.qc["brain_volume_ml"], "similarity": pre.qc["registration_similarity"],
               "inside": pre.qc["brain_inside_grid"]}
        if scorer is not None:
            row.update(score=res.score, flag=res.flag)
        rows.append(row)
        figs.append((ref.scan_id, vol, pre))
        print(row, flush=True)
    keys = list(rows[0])
    print(f"\nmachine: {platform.processor() or platform.machine()}, torch threads {threads}; "
          f"medians over {args.repeats} repeats; peak RSS {peak_rss_gb():.2f} GB\n")
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r.get(k):.2f}" if isinstance(r.get(k), float) else str(r.get(k)) for k in keys) + " |")
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        _, _, t1 = _template_on_grid(pcfg)
        fig, axes = plt.subplots(len(figs), 4, figsize=(11, 2.8 * len(figs)), squeeze=False)
        for ax_row, (name, vol, pre) in zip(axes, figs):
            qc_row(ax_row, name, vol, pre, t1)
        fig.tight_layout()
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.figure, dpi=80)
        print(f"figure: {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
