"""Seconds per synthetic sample with `medidiff synthesize` defaults (not a test: prints JSON).

Times the sampler alone (no file writing, no quality report) at the model's own
grid after one warm-up network call, for each requested batch size:

    python pipelines/benchmark_synthesis.py --model models/sample
    python pipelines/benchmark_synthesis.py --model models/sample --sampler ddpm --batch-sizes 1,4
    python pipelines/benchmark_synthesis.py --model models/sample --steps 20 --n 2

Prints one JSON line per batch size: seconds per sample, per network step
(per sample), peak RSS, grid, steps, sampler, precision, threads.
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "sample"))
    ap.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    ap.add_argument("--steps", type=int, default=None, help="default: the sampler's default (ddim 50, ddpm 250)")
    ap.add_argument("--batch-sizes", default="1,4", help="comma list of batch sizes to time")
    ap.add_argument("--n", type=int, default=None, help="samples per batch size (default: the batch size)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    import torch

    from medidiff.runtime import resolve_device, set_threads
    from medidiff.sampling.sampler import Sampler, SamplerConfig
    from medidiff.train.checkpoint import load_model

    threads = set_threads()
    loaded = load_model(args.model, resolve_device(args.device))
    try:
        from medidiff.runtime import resolve_precision

        precision = resolve_precision(args.precision, loaded.device)
    except ImportError:
        precision = args.precision
    for bs in [int(b) for b in args.batch_sizes.split(",") if b.strip()]:
        sampler = Sampler(loaded, SamplerConfig(sampler=args.sampler, steps=args.steps, batch_size=bs,
                                                precision=args.precision))
        # warm-up: one network call at this batch size (allocator, autocast kernels)
        one = Sampler(loaded, SamplerConfig(sampler=args.sampler, steps=1, batch_size=bs, precision=args.precision))
        one.sample(list(range(bs)))
        n = args.n or bs
        seeds = list(range(n))
        t0 = time.perf_counter()
        for start in range(0, n, bs):
            sampler.sample(seeds[start:start + bs])
        dt = time.perf_counter() - t0
        steps = int(sampler.cfg.steps)
        print(json.dumps({
            "seconds_per_sample": round(dt / n, 3),
            "seconds_per_step_per_sample": round(dt / n / steps, 4),
            "n": n, "batch_size": bs, "steps": steps, "sampler": args.sampler,
            "grid": list(loaded.preprocess_config.grid), "spacing_mm": list(loaded.preprocess_config.spacing),
            "precision": precision, "device": str(loaded.device), "threads": threads,
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 3),
        }), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
