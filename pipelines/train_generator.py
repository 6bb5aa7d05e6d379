"""Train the latent-diffusion generator (AutoencoderKL, then a DiffusionModelUNet on its latent).

    # a long budget in pieces: each call trains at most --max-minutes, --resume continues exactly
    python pipelines/train_generator.py --out runs/generator --max-minutes 120
    python pipelines/train_generator.py --out runs/generator --max-minutes 120 --resume
    # time both stages at the configured settings (a few steps each), no run folder kept
    python pipelines/train_generator.py --measure 5
    # then: medidiff synthesize --model runs/generator --n 16 --out synth --reference ... --train-data ...
    # the real cohort's train role (configs/real_cohort_split.csv), conditioned on age and sex,
    # warm-started from a generator folder (configs/generator_real.yaml). The shipped models/generator
    # was started from the previous, template-trained generator; --init-from models/generator now
    # continues from the real-cohort one
    python pipelines/train_generator.py --config configs/generator_real.yaml --cohort COHORT_DIR \
        --init-from GENERATOR --out runs/generator_real --max-minutes 45 --threads 1 [--resume]

Training scans: the healthy ``train`` split of ``sample_data/labels.csv`` (``--data``/``--splits``),
preprocessed once by the front end into template space and cached in the run folder. The
generator folder (``model.json`` + ``model.safetensors``) is rewritten at every checkpoint of the
latent stage, so a partly trained generator can already be sampled. ``RUN/training.json`` holds
steps, wall and CPU seconds per stage (summed over resumed runs) and the loss curves.
Pin ``--threads 1`` when anything else runs on the machine.

``--cohort DIR`` trains on the rows of the split file (``--split-csv``) whose role is in
``--roles`` (default ``train``) instead, found in DIR (and ``--real-scans`` for ``real`` rows);
the manifest is written to RUN/manifest.csv and each scan's age and sex (the split's ``age`` and
``sex`` columns) become its condition when the config has ``latent.conditioning``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(cfg, data: Path, splits, steps: int) -> dict:
    """Seconds per step of each stage (after one warm-up step) on the first scans of the data."""
    import torch

    from medidiff.generator.store import build_autoencoder, build_latent_unet
    from medidiff.generator.train import Stage, autoencoder_loss, latent_loss
    from medidiff.dataset import list_scans, prepare

    sources = list_scans(data, splits)[: max(2, cfg.train_autoencoder.batch_size)]
    t0 = time.monotonic()
    prepared = prepare(sources, cfg.preprocess)
    prep = (time.monotonic() - t0) / max(1, len(sources))
    tmp = Path(tempfile.mkdtemp(prefix="medidiff-gen-measure-"))
    out = {"preprocess_seconds_per_scan": round(prep, 2), "grid": list(cfg.preprocess.grid),
           "latent_shape": list(cfg.latent_shape)}
    try:
        dev = torch.device("cpu")
        ae = Stage("autoencoder", build_autoencoder(cfg.autoencoder), cfg.train_autoencoder, tmp / "a", {},
                   autoencoder_loss(prepared, cfg.train_autoencoder), dev)
        n_lat = max(2, cfg.train_latent.batch_size)
        latents = torch.randn(n_lat, *cfg.latent_shape)
        lat = Stage("latent", build_latent_unet(cfg.latent, cfg.autoencoder.latent_channels), cfg.train_latent,
                    tmp / "l", {}, latent_loss(latents, cfg), dev)
        for name, stage in (("autoencoder", ae), ("latent", lat)):
            stage.train_step()
            t0 = time.monotonic()
            for _ in range(steps):
                stage.train_step()
            sec = (time.monotonic() - t0) / steps
            out[name] = {"seconds_per_step": round(sec, 3), "batch_size": stage.scfg.batch_size,
                         "parameters": sum(p.numel() for p in stage.net.parameters()), "precision": stage.precision}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    return out


def cohort_manifest(cohort: Path, real_scans: Path | None, split_csv: Path, roles: list[str],
                    out: Path) -> tuple[Path, dict[str, dict]]:
    """RUN/manifest.csv of the split's ``roles`` (split column ``train``) and each scan's
    ``{"age", "sex"}`` keyed by the scan id training sees."""
    from medidiff.dataset import list_scans
    sys.path.insert(0, str(ROOT / "pipelines"))
    from real_split import read_split, scan_paths, write_manifest

    rows = scan_paths(read_split(split_csv), roles, cohort, real_scans)
    if not rows:
        raise SystemExit(f"{split_csv}: no scans with role(s) {roles} under {cohort}")
    write_manifest(out, cohort, real_scans, {r: "train" for r in roles}, split_csv=split_csv)
    conditions = {}
    for r in rows:
        for src in list_scans(r["abspath"]):
            conditions[src.scan_id] = {"age": r.get("age") or None, "sex": r.get("sex") or None}
    return out, conditions


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "generator_ldm.yaml"))
    ap.add_argument("--data", default=str(ROOT / "sample_data" / "labels.csv"))
    ap.add_argument("--splits", default="train", help="comma list of CSV splits to train on ('' = all healthy rows)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "generator"))
    ap.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget of this call")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--measure", type=int, default=0, metavar="STEPS", help="only time STEPS steps of each stage")
    ap.add_argument("--cohort", type=Path, default=None, help="real cohort folder: train on the split file's --roles")
    ap.add_argument("--real-scans", type=Path, default=None, help="folder of the split file's 'real' rows")
    ap.add_argument("--split-csv", type=Path, default=ROOT / "configs" / "real_cohort_split.csv")
    ap.add_argument("--roles", default="train", help="comma list of split roles to train on (with --cohort)")
    ap.add_argument("--init-from", type=Path, default=None, help="generator folder both networks start from")
    ap.add_argument("--scan-cache", type=Path, default=None, help="shared preprocessed-scan cache folder (the "
                    "benchmark_synthesis_* scripts' --cache): each scan's front end runs once for all of them")
    args = ap.parse_args(argv)

    from medidiff.generator.config import load_generator_config
    from medidiff.generator.train import train_generator
    from medidiff.runtime import set_threads

    threads = set_threads(1, args.threads)
    cfg = load_generator_config(args.config, args.set)
    splits = [s for s in args.splits.split(",") if s.strip()] or None
    conditions = None
    if args.cohort is not None:
        roles = [r.strip() for r in args.roles.split(",") if r.strip()]
        args.data, conditions = cohort_manifest(args.cohort, args.real_scans, args.split_csv, roles,
                                                Path(args.out) / "manifest.csv")
        splits = ["train"]
    if args.measure:
        print(json.dumps({**measure(cfg, Path(args.data), splits, args.measure), "threads": threads}), flush=True)
        return 0
    report = train_generator(cfg, args.data, args.out, splits=splits, resume=args.resume,
                             max_minutes=args.max_minutes, device=args.device,
                             log_fn=lambda m: print(m, file=sys.stderr, flush=True), conditions=conditions,
                             init_from=args.init_from, scan_cache=args.scan_cache)
    brief = {k: ({kk: vv for kk, vv in v.items() if kk != "history"} if isinstance(v, dict) else v)
             for k, v in report.items()}
    print(json.dumps({**brief, "threads": threads}, default=str), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
