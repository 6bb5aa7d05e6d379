"""Throughput of `medidiff score` locally vs on Dask workers (`--cluster local:N`); prints a table.

Every run is the real CLI in a fresh process. Each configuration is run twice per repeat:
with ``--limit 0`` (start-up only: interpreter, model load, cluster start) and with
``--limit N``; per-scan wall time = (wall(N) - wall(0)) / N, so the steady-state
throughput excludes the one-off start-up. Per-scan overhead on the cluster = workers x
per-scan wall - median scoring seconds (result.json), i.e. the worker time per scan that
is not scoring (scheduling, transfer, model load amortised, contention). Medians over repeats.

    python pipelines/benchmark_cluster.py --n 8 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "pipelines"))
from benchmark_scoring import machine  # noqa: E402

CONFIGS = [  # (name, extra CLI args, env, workers)
    ("local, 1 thread", [], {"MEDIDIFF_THREADS": "1"}, 1),
    ("local, 2 threads", [], {"MEDIDIFF_THREADS": "2"}, 1),
    ("--cluster local:2 (1 thread each)", ["--cluster", "local:2"], {"MEDIDIFF_THREADS": "1"}, 2),
]


def run_cli(model: str, input_dir: str, limit: int, extra: list[str], env: dict[str, str]) -> tuple[float, Path]:
    out = Path(tempfile.mkdtemp(prefix="bench_cluster_"))
    cmd = [sys.executable, "-m", "medidiff.cli", "score", "--model", model, "--input", input_dir, "--out", str(out),
           "--limit", str(limit), "--no-report", "--no-progress", *extra]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **env)
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return wall, out


def scan_seconds(out: Path) -> list[float]:
    return [json.loads(p.read_text())["seconds"] for p in (out / "scans").glob("*/result.json")]


def io_bytes(out: Path) -> tuple[float, float]:
    """Median MB read (input file) and written (outputs) per scan."""
    read, written = [], []
    for p in (out / "scans").glob("*/result.json"):
        res = json.loads(p.read_text())
        read.append(Path(res["source_path"]).stat().st_size)
        written.append(sum(f.stat().st_size for f in p.parent.iterdir()))
    return statistics.median(read) / 1e6, statistics.median(written) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "brain_t1_4mm"))
    ap.add_argument("--input", default=str(ROOT / "sample_data" / "test"))
    ap.add_argument("--n", type=int, default=8, help="scans per timed run")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    import shutil

    rows = []
    for name, extra, env, workers in CONFIGS:
        startup, per_scan, scoring, walls = [], [], [], []
        for _ in range(a.repeats):
            w0, o0 = run_cli(a.model, a.input, 0, extra, env)
            wn, on = run_cli(a.model, a.input, a.n, extra, env)
            startup.append(w0)
            walls.append(wn)
            per_scan.append((wn - w0) / a.n)
            scoring.append(statistics.median(scan_seconds(on)))
            mb_in, mb_out = io_bytes(on)
            shutil.rmtree(o0, ignore_errors=True)
            shutil.rmtree(on, ignore_errors=True)
        ps, sc = statistics.median(per_scan), statistics.median(scoring)
        rows.append({"name": name, "startup": statistics.median(startup), "wall": statistics.median(walls),
                     "per_scan": ps, "spm": 60 / ps, "scoring": sc, "overhead": workers * ps - sc,
                     "mb_in": mb_in, "mb_out": mb_out})
        print(f"done: {name}", file=sys.stderr)
    base = rows[0]["spm"]
    print(f"machine: {machine()}; {a.n} scans of {a.input}, median of {a.repeats} repeats")
    print("| configuration | start-up s | wall s (n scans) | wall s / scan | scans / min | speed-up vs 1 thread "
          "| scoring s / scan (in worker) | overhead s / scan |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['startup']:.1f} | {r['wall']:.1f} | {r['per_scan']:.2f} | {r['spm']:.1f} "
              f"| {r['spm'] / base:.2f}× | {r['scoring']:.2f} | {r['overhead']:+.2f} |")
    print(f"I/O per scan: {rows[0]['mb_in']:.2f} MB read, {rows[0]['mb_out']:.2f} MB written")


if __name__ == "__main__":
    main()
