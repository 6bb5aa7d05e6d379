"""Train a bundled detection model: the 4 mm ``models/brain_t1_4mm/`` by default, the 2 mm patch
model with ``--config configs/brain_t1_2mm_patch.yaml``; on ``sample_data`` or, with ``--cohort``, the
real cohort's ``train`` role.

    python pipelines/train_model.py                    # 40-minute budget
    python pipelines/train_model.py --minutes 45 --set train.batch_size=2
    python pipelines/train_model.py --measure 20       # only measure s/step + peak RSS

Training scans: the ``train`` split of ``sample_data/labels.csv`` (healthy);
validation loss: the healthy ``calib`` split. With ``--fit-steps`` (default) a
short measurement first times a few steps at the bundled settings and sets
``train.max_steps`` so the cosine LR schedule ends with the time budget.
Steps/s, peak RSS and the chosen step count are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "pipelines"))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(cfg, data: Path, steps: int, device: str, threads: int | None = None) -> dict:
    """Time ``steps`` training steps (after 2 warm-up steps) at the configured settings."""
    from medidiff.dataset import list_scans, prepare
    from medidiff.runtime import set_threads
    from medidiff.train.loop import Trainer

    set_threads(1, threads)
    t0 = time.monotonic()
    sources = list_scans(data, ["train"])[: max(2, cfg.train.batch_size)]
    prepared = prepare(sources, cfg.preprocess)
    t_prep = (time.monotonic() - t0) / max(1, len(sources))
    tmp = Path(tempfile.mkdtemp(prefix="medidiff-measure-"))
    try:
        tr = Trainer(cfg, prepared, None, tmp, device=device, progress=False)
        for s in range(2):
            tr.train_step(s)
        t0 = time.monotonic()
        for s in range(2, 2 + steps):
            tr.train_step(s)
        sec = (time.monotonic() - t0) / steps
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"seconds_per_step": round(sec, 3), "steps_per_second": round(1 / sec, 3),
            "peak_rss_mib": round(peak_rss_mib(), 1), "preprocess_seconds_per_scan": round(t_prep, 2),
            "parameters": tr.n_params, "precision": tr.precision, "grid": list(cfg.preprocess.grid),
            "channels": list(cfg.model.channels), "batch_size": cfg.train.batch_size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "brain_t1_4mm.yaml")
    ap.add_argument("--data", type=Path, default=ROOT / "sample_data" / "labels.csv")
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "brain_t1_4mm")
    ap.add_argument("--minutes", type=float, default=40.0, help="time budget for training (default 40)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    ap.add_argument("--measure", type=int, default=0, metavar="N", help="only time N steps and exit")
    ap.add_argument("--no-fit-steps", dest="fit_steps", action="store_false",
                    help="keep train.max_steps from the config instead of fitting it to the budget")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init-from", type=Path, default=None, help="warm start from this model folder's EMA weights")
    ap.add_argument("--ship", action=argparse.BooleanOptionalAction, default=True,
                    help="after training keep only EMA weights in model.safetensors (default on)")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    ap.add_argument("--cohort", type=Path, default=None,
                    help="train on the real cohort's train role (configs/real_cohort_split.csv) found in this "
                         "folder; its val role gives the validation loss")
    ap.add_argument("--with-warps", action="store_true",
                    help="with --cohort: add sample_data's template-warp train scans to the real ones")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from medidiff.model.config import load_config
    from medidiff.train.run import run_training

    cfg = load_config(args.config, args.overrides)
    val_split = "calib"
    if args.cohort is not None:
        args.data, val_split = real_manifest(args.cohort, args.out / "manifest.csv", args.with_warps, args.data), "val"
    if args.measure:
        print(json.dumps(measure(cfg, args.data, args.measure, args.device, args.threads), indent=2))
        return 0
    report: dict = {}
    if args.fit_steps and not args.resume:
        m = measure(cfg, args.data, 8, args.device, args.threads)
        # preprocessing of all train+calib scans (~0.3 s each) and validation come out of the budget
        usable = args.minutes * 60 * 0.93 - 40 * m["preprocess_seconds_per_scan"]
        steps = max(100, int(usable / m["seconds_per_step"] / 50) * 50)
        cfg = load_config(args.config, [*args.overrides, f"train.max_steps={steps}"])
        report["measurement"] = m
        report["fitted_max_steps"] = steps
        print(json.dumps(report, indent=2), flush=True)
    if args.resume and (args.out / "train_state.json").is_file():
        # keep the step count (and so the LR schedule) the interrupted run was fitted to
        old = json.loads((args.out / "train_state.json").read_text())["config"]["train"]["max_steps"]
        cfg = load_config(args.config, [*args.overrides, f"train.max_steps={old}"])
    res = run_training(cfg, args.data, args.out, resume=args.resume, max_minutes=args.minutes, device=args.device,
                       train_split="train", val_split=val_split, progress=args.progress,
                       threads=args.threads, init_from=args.init_from)
    report.update({"steps": res.steps, "train_loss": res.train_loss, "val_loss": res.val_loss,
                   "stopped": res.stopped, "seconds": round(res.seconds, 1),
                   "steps_per_second": res.steps_per_second, "peak_rss_mib": round(peak_rss_mib(), 1),
                   "out": str(res.run_dir)})
    if args.ship:
        report["shipped_model_hash"] = ship(args.out)
    print(json.dumps(report, indent=2))
    return 0


def real_manifest(cohort: Path, out: Path, with_warps: bool, warps_csv: Path) -> Path:
    """The real cohort's train/val roles as a manifest, optionally with sample_data's warps."""
    import csv

    from real_split import write_manifest

    extra = []
    if with_warps:
        with open(warps_csv, newline="") as fh:
            extra = [dict(scan_id=r["scan_id"], path=str((warps_csv.parent / r["path"]).resolve()), split="train",
                          label=r["label"]) for r in csv.DictReader(fh) if r["split"] == "train"]
    return write_manifest(out, cohort, None, {"train": "train", "val": "val"}, extra)


def ship(run_dir: Path) -> str:
    """Keep only the EMA weights in model.safetensors (what scoring loads) so the
    committed model stays small; the resume state stays in train_state.* (not committed)."""
    from safetensors.torch import load_file

    from medidiff.model.config import Config
    from medidiff.model.store import read_metadata, save_model

    meta = read_metadata(run_dir)
    tensors = load_file(str(run_dir / "model.safetensors"))
    ema = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
    keep = {k: v for k, v in meta.items() if k not in ("format", "format_version", "medidiff_version", "torch_version",
                                                       "config", "preprocess", "frontend", "diffusion", "model_hash", "weights")}
    return save_model(run_dir, ema, Config.from_dict(meta["config"]), keep)


if __name__ == "__main__":
    sys.exit(main())
