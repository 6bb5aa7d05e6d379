"""Seconds per synthetic sample with `medidiff synthesize` defaults (not a test: prints JSON).

Times the sampler alone (no file writing, no quality report) at the model's own
grid after one warm-up call, for each requested batch size, ``--repeats`` times (median).
Works for pixel-space models and latent-diffusion generators alike; speed does not depend
on the weights, so a generator config (YAML) can be timed untrained:

    python pipelines/benchmark_synthesis.py --model models/brain_t1_4mm
    python pipelines/benchmark_synthesis.py --model models/brain_t1_4mm --sampler ddpm --batch-sizes 1,4
    python pipelines/benchmark_synthesis.py --model runs/generator            # latent diffusion
    python pipelines/benchmark_synthesis.py --model configs/generator_ldm.yaml --steps 25

Prints one JSON line per batch size: median seconds per sample, per step (per sample),
peak RSS, grid, steps, sampler, model kind, precision, threads.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def untrained_generator(config: Path, out: Path) -> Path:
    from medidiff.generator.config import load_generator_config
    from medidiff.generator.store import build_autoencoder, build_latent_unet, save_generator

    cfg = load_generator_config(config)
    ae, unet = build_autoencoder(cfg.autoencoder), build_latent_unet(cfg.latent, cfg.autoencoder.latent_channels)
    save_generator(out, cfg, ae.state_dict(), unet.state_dict(), 1.0, {"training": {"note": "untrained: timing only"}})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "brain_t1_4mm"))
    ap.add_argument("--sampler", default="auto", choices=["auto", "ddim", "ddpm", "rflow"])
    ap.add_argument("--steps", type=int, default=None, help="default: the model's default (ddim 50, ddpm 250, "
                    "generators: latent.default_steps)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per batch size (the median is reported)")
    ap.add_argument("--batch-sizes", default="1,4", help="comma list of batch sizes to time")
    ap.add_argument("--n", type=int, default=None, help="samples per batch size (default: the batch size)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    import torch

    import statistics
    import tempfile

    from medidiff.runtime import resolve_device, resolve_precision, set_threads
    from medidiff.synthesis.run import open_generator
    from medidiff.model.sampler_config import SamplerConfig

    threads = set_threads()
    model = Path(args.model)
    if model.is_file():  # a generator config: time it with its initial weights
        model = untrained_generator(model, Path(tempfile.mkdtemp(prefix="medidiff-gen-bench-")))
    dev = resolve_device(args.device)
    for bs in [int(b) for b in args.batch_sizes.split(",") if b.strip()]:
        scfg = SamplerConfig(sampler=args.sampler, steps=args.steps, batch_size=bs, precision=args.precision)
        loaded, sampler, _, kind = open_generator(model, dev, scfg)
        precision = resolve_precision(sampler.cfg.precision, loaded.device)
        sampler.sample(list(range(bs)))  # warm-up at this batch size (allocator, autocast kernels)
        n = args.n or bs
        seeds = list(range(n))
        times = []
        for _ in range(max(1, args.repeats)):
            t0 = time.perf_counter()
            for start in range(0, n, bs):
                sampler.sample(seeds[start:start + bs])
            times.append((time.perf_counter() - t0) / n)
        sec = statistics.median(times)
        steps = int(sampler.cfg.steps)
        pcfg = loaded.preprocess_config
        print(json.dumps({
            "seconds_per_sample_median": round(sec, 3), "seconds_per_sample_all": [round(t, 3) for t in times],
            "seconds_per_step_per_sample": round(sec / steps, 4),
            "n": n, "batch_size": bs, "steps": steps, "sampler": sampler.cfg.sampler, "model_kind": kind,
            "grid": list(pcfg.grid), "spacing_mm": list(pcfg.spacing),
            "precision": precision, "device": str(loaded.device), "threads": threads,
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 3),
        }), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
