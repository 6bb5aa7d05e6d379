"""Speed and memory of `medidiff score` on this machine (not a test: prints a table).

Each configuration runs in a fresh subprocess so peak RSS (ru_maxrss) is that
configuration's own. Reports median seconds per scan over the scans scored,
network evaluations per scan and peak memory.

    python pipelines/benchmark_scoring.py --model models/sample --input sample_data/test --n 5
    python pipelines/benchmark_scoring.py --grid128   # memory check of a 128³ grid (random weights)
    python pipelines/benchmark_scoring.py --model models/brain_t1_2mm --variant "1 draw:score.n_draws=1"
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time, statistics
from pathlib import Path
from medidiff.io.discover import discover
from medidiff.runtime import set_threads
from medidiff.score.calibration import Calibration
from medidiff.score.config import load_score_config
from medidiff.score.pipeline import Scorer
from medidiff.train.checkpoint import load_model
args = json.loads(sys.argv[1])
set_threads()
loaded = load_model(args["model"])
cal = Calibration.load(args["model"], loaded.model_hash)
cfg = load_score_config(None, args["overrides"], base=cal.score_config if cal else None)
scorer = Scorer(loaded, cfg, cal)
scans = discover(args["input"]).scans[: args["n"]]
vols = [s.load() for s in scans]
scorer.score_volume(vols[0])  # warm-up (allocator, autocast kernels)
times, evals = [], []
for v in vols:
    t0 = time.perf_counter()
    r = scorer.score_volume(v)
    times.append(time.perf_counter() - t0)
    evals.append(r.n_evals)
print(json.dumps({"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
                  "n": len(times), "evals": statistics.median(evals),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
                  "grid": list(loaded.preprocess_config.grid)}))
"""


def run(model: str, input_dir: str, n: int, overrides: list[str]) -> dict:
    args = json.dumps({"model": model, "input": input_dir, "n": n, "overrides": overrides})
    out = subprocess.run([sys.executable, "-c", CHILD, args], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_grid128_model(tmp: Path) -> Path:
    """A model folder with the bundled architecture on a 128³ grid (random weights):
    memory does not depend on the weights' values."""
    import torch

    from medidiff.model.config import load_config
    from medidiff.model.network import build_network
    from medidiff.train.checkpoint import save_model

    cfg = load_config(ROOT / "configs" / "sample_model.yaml", ["preprocess.grid=[128,128,128]",
                                                               "preprocess.spacing=[1.5,1.5,1.5]"])
    net = build_network(cfg.model)
    torch.manual_seed(0)
    save_model(tmp, net.state_dict(), cfg, metadata={"training": {"note": "random weights, memory benchmark"}})
    return tmp


def machine() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    import os

    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"


def parse_variant(text: str) -> tuple[str, list[str]]:
    """'1 draw:score.n_draws=1;score.t_fractions=[0.2]' -> ('1 draw', [overrides])."""
    name, sep, settings = text.partition(":")
    overrides = [x.strip() for x in settings.split(";") if x.strip()]
    if not sep or not name.strip() or not overrides or not all("=" in o for o in overrides):
        raise SystemExit(f"--variant {text!r}: expected NAME:KEY=VAL[;KEY=VAL], e.g. '1 draw:score.n_draws=1'")
    return name.strip(), overrides


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "sample"))
    ap.add_argument("--input", default=str(ROOT / "sample_data" / "test"))
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--grid128", action="store_true", help="also measure a 128³ grid")
    ap.add_argument("--sweep", action="store_true", help="also time K (steps) and draws variants")
    ap.add_argument("--variant", dest="variants", action="append", default=[], metavar="NAME:KEY=VAL[;KEY=VAL]",
                    help="also time the model's calibrated settings with these overrides (repeatable)")
    a = ap.parse_args(argv)
    configs = [("default", [])]
    if a.sweep:
        configs += [("K=5", ["score.steps=5"]), ("K=10", ["score.steps=10"]),
                    ("2 t* levels", ["score.t_fractions=[0.1,0.2]"]), ("8 draws", ["score.n_draws=8"])]
    configs += [parse_variant(v) for v in a.variants]
    rows = []
    for name, ov in configs:
        r = run(a.model, a.input, a.n, ov)
        rows.append((name, r))
    if a.grid128:
        with tempfile.TemporaryDirectory() as td:
            m = make_grid128_model(Path(td))
            rows.append(("128³ grid, default", run(str(m), a.input, 2, ["score.normalization=none"])))
    print(f"machine: {machine()}")
    print("| settings | grid | s/scan (median) | min–max | net evals/scan | peak RSS (GB) | scans |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {'×'.join(map(str, r['grid']))} | {r['median_s']:.2f} | {r['min_s']:.2f}–{r['max_s']:.2f} "
              f"| {r['evals']:.0f} | {r['peak_rss_gb']:.2f} | {r['n']} |")


if __name__ == "__main__":
    main()
