"""Speed and memory of `medidiff score` on this machine, and where the time goes (not a test: prints tables).

Each configuration (settings × backend) runs in a fresh subprocess, one after the other in one
run, so peak RSS (ru_maxrss) is that configuration's own and the rows can be compared side by
side. Every timed scan is scored from its file: loaded, through the front end (brain extraction,
N4, registration; never memoised), reconstructed, post-processed back onto its own grid and
written (NIfTI maps, plus DICOM objects for DICOM input) into a temporary folder. One warm-up
scan first (allocator, kernels, and for an exported backend the one-off export and compile).
Reported: medians over scans × repeats of the end-to-end seconds and of each stage, network
windows × t* × draws, the network's FLOPs per scan, and peak memory.

    python pipelines/benchmark_scoring.py --model models/brain_t1_2mm --input HEAD.nii.gz --repeats 5 \
        --backends torch,openvino --floor
    python pipelines/benchmark_scoring.py --model models/brain_t1_4mm --input sample_data/test --n 5
    python pipelines/benchmark_scoring.py --grid128   # memory check of a 128³ grid (random weights)
    python pipelines/benchmark_scoring.py --model models/brain_t1_2mm --variant "1 draw:score.n_draws=1"
    python pipelines/benchmark_scoring.py --model models/brain_t1_2mm --backends openvino --val-ap sample_data \
        --variant "no overlap:score.window_overlap=0" --variant "whole grid:bench.windows=whole"

``--floor`` also measures what this CPU reaches on a dense 3D convolution (PyTorch fp32/bf16 and,
when installed, OpenVINO) and states the network's lower bound per scan: FLOPs / best rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, statistics, sys, tempfile, time
from pathlib import Path
import torch
from medidiff.io.discover import discover
from medidiff.runtime import set_threads
from medidiff.score.cache import first_pass_cache, preprocessed
from medidiff.score.calibration import Calibration
from medidiff.score.config import load_score_config
from medidiff.score.pipeline import Scorer
from medidiff.score.result import write_scan_outputs
from medidiff.model.store import load_model

args = json.loads(sys.argv[1])
threads = set_threads()
loaded = load_model(args["model"])
cal = Calibration.load(args["model"], loaded.model_hash)
from medidiff.score.method import load_method
method = load_method(args["model"])  # the model's validated settings; else its calibration's; else defaults
base = method.score_config if method is not None else cal.score_config if cal else None
cfg = load_score_config(None, args["overrides"], base=base)
t0 = time.perf_counter()
scorer = Scorer(loaded, cfg, cal)
if args.get("whole_grid"):  # a patch model's U-Net on the whole grid at once: one window
    from medidiff.model.backends import with_backend
    from medidiff.model.patches import SlidingWindowDenoiser
    sw = loaded.network
    scorer.reconstructor.net = with_backend(SlidingWindowDenoiser(sw.unet, sw.grid, sw.grid, 0.0), cfg.backend,
                                            scorer.reconstructor.precision, loaded.device, sw.grid)
setup_s = time.perf_counter() - t0


class Timed(torch.nn.Module):
    # the U-Net call (PyTorch or exported), timed: windows x t* x draws network evaluations
    def __init__(self, inner):
        super().__init__()
        self.inner, self.seconds, self.calls, self.items = inner, 0.0, 0, 0

    def forward(self, x, timesteps, **kw):
        t0 = time.perf_counter()
        y = self.inner(x, timesteps=timesteps, **kw)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        self.items += int(x.shape[0])
        return y


rec = scorer.reconstructor
if hasattr(loaded.network, "unet"):  # patch model: the U-Net inside the sliding windows
    torch_unet, window = loaded.network.unet, (int(loaded.network.unet.in_channels), *rec.net.patch)
    rec.net = rec.net.with_unet(Timed(rec.net.unet))
    timed = rec.net.unet
else:
    torch_unet, window = loaded.network, (int(loaded.network.in_channels), *loaded.preprocess_config.grid)
    rec.net = timed = Timed(rec.net)
from torch.utils.flop_counter import FlopCounterMode
with FlopCounterMode(display=False) as fc, torch.no_grad():
    torch_unet(torch.zeros(1, *window), timesteps=torch.tensor([100]))
flops_per_window = fc.get_total_flops()

recon_s = [0.0]
_reconstruct = rec.reconstruct
def reconstruct(*a, **k):
    t0 = time.perf_counter()
    try:
        return _reconstruct(*a, **k)
    finally:
        recon_s[0] += time.perf_counter() - t0
rec.reconstruct = reconstruct

scans = []
for p in args["inputs"]:
    scans += discover(p).scans
scans = scans[: args["n"]]
if not scans:
    raise SystemExit(f"no scans found under {args['inputs']}")


def one(scan, out):
    row = {}
    t = time.perf_counter(); vol = scan.load(); row["load"] = time.perf_counter() - t
    timed.seconds, timed.calls, timed.items, recon_s[0] = 0.0, 0, 0, 0.0
    with first_pass_cache():  # fresh per scan: the front end runs once, the scorer reuses it
        t = time.perf_counter(); pre, _ = preprocessed(vol, scorer.pcfg); row["front_end"] = time.perf_counter() - t
        t = time.perf_counter(); res = scorer.score_volume(vol); score_s = time.perf_counter() - t
    for k, v in ((pre.qc or {}).get("frontend_seconds") or {}).items():
        row["fe_" + k] = float(v)
    row["network"] = timed.seconds
    row["reconstruct_other"] = recon_s[0] - timed.seconds  # noise, DDIM arithmetic, window blending
    row["post"] = score_s - recon_s[0]  # residual/SSIM maps, normalisation, threshold, back to the scan grid
    t = time.perf_counter()
    write_scan_outputs(Path(out) / scan.scan_id, vol, res, loaded.model_hash, dicom_outputs=True, log=lambda m: None)
    row["write"] = time.perf_counter() - t
    row["total"] = row["load"] + row["front_end"] + score_s + row["write"]
    row.update(evals=res.n_evals, window_calls=timed.calls, windows=timed.items, score=float(res.score),
               shape=list(vol.shape), scan=scan.scan_id)
    return row


rows = []
with tempfile.TemporaryDirectory() as out:
    t = time.perf_counter(); one(scans[0], out + "/warm"); warm_s = time.perf_counter() - t
    for r in range(args["repeats"]):
        for s in scans:
            rows.append(one(s, f"{out}/{r}"))
print(json.dumps({"rows": rows, "setup_s": setup_s, "warmup_s": warm_s, "threads": threads,
                  "flops_per_window": flops_per_window, "window": list(window),
                  "settings_hash": scorer.settings_hash(), "runtime": scorer.runtime_settings(),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
                  "grid": list(loaded.preprocess_config.grid)}))
"""

FLOOR = r"""
import json, sys, time
import numpy as np, torch
from medidiff.runtime import cpu_bf16_supported, set_threads
threads = set_threads()
N, C, S = 4, 64, 48
flops = 2 * N * C * C * 27 * S ** 3
def best(f, n=5):
    f(); ts = []
    for _ in range(n):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    return min(ts)
x = torch.randn(N, C, S, S, S); conv = torch.nn.Conv3d(C, C, 3, padding=1).eval()
rates = {}
with torch.no_grad():
    rates["torch fp32"] = flops / best(lambda: conv(x))
    if cpu_bf16_supported():
        def bf():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return conv(x)
        rates["torch bf16"] = flops / best(bf)
try:
    import openvino as ov
    import openvino.opset13 as ops
    p = ops.parameter([N, C, S, S, S], np.float32)
    w = ops.constant(conv.weight.detach().numpy())
    m = ov.Model([ops.convolution(p, w, [1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1])], [p])
    xn = x.numpy()
    for prec in ("f32", "bf16") if cpu_bf16_supported() else ("f32",):
        c = ov.Core().compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": prec, "INFERENCE_NUM_THREADS": threads,
                                               "PERFORMANCE_HINT": "LATENCY"})
        rates["openvino " + prec] = flops / best(lambda: c({0: xn}))
except ImportError:
    pass
print(json.dumps({"rates": rates, "threads": threads, "conv": f"{N}x{C}->{C}, 3x3x3, {S}^3"}))
"""


BATCHES = r"""
import json, sys, time
import torch
from medidiff.model.backends import with_backend
from medidiff.runtime import autocast_ctx, resolve_precision, set_threads
from medidiff.model.store import load_model
args = json.loads(sys.argv[1])
threads = set_threads()
loaded = load_model(args["model"])
net = loaded.network
if not hasattr(net, "unet"):
    raise SystemExit("--batches is for patch models (windows)")
window = (int(net.unet.in_channels), *net.patch)
out = {}
for be in args["backends"]:
    for prec in ("fp32", resolve_precision("auto", torch.device("cpu"))):
        if (be, prec) in [tuple(k.split("/")) for k in out]:
            continue
        unet = net.unet if be == "torch" else with_backend(net, be, prec, torch.device("cpu"), net.grid).unet
        for b in args["sizes"]:
            x, t = torch.randn(b, *window), torch.full((b,), 250)
            def f():
                with torch.no_grad(), autocast_ctx(prec if be == "torch" else "fp32", torch.device("cpu")):
                    return unet(x, timesteps=t)
            f()
            walls, cpus = [], []
            for _ in range(args["repeats"]):
                w0, c0 = time.perf_counter(), time.process_time()
                f()
                walls.append((time.perf_counter() - w0) / b)
                cpus.append((time.process_time() - c0) / b)
            out.setdefault(f"{be}/{prec}", {})[b] = {"wall": min(walls), "cpu": min(cpus)}
print(json.dumps({"per_window": out, "threads": threads, "window": list(window)}))
"""


def batches_table(r: dict) -> str:
    sizes = sorted({int(b) for v in r["per_window"].values() for b in v})
    L = [f"Network seconds per {'×'.join(map(str, r['window'][1:]))} window by windows per call ({r['threads']} threads; "
         "wall, and process CPU seconds in brackets — CPU time is the steadier figure on a shared machine):", "",
         "| backend / precision | " + " | ".join(f"{b} per call" for b in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for k, v in r["per_window"].items():
        L.append(f"| {k} | " + " | ".join(f"{v[str(b)]['wall']:.3f} ({v[str(b)]['cpu']:.3f})" if str(b) in v else "–"
                                          for b in sizes) + " |")
    return "\n".join(L)


def _child(code: str, payload: dict | None = None) -> dict:
    cmd = [sys.executable, "-c", code] + ([json.dumps(payload)] if payload is not None else [])
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


WHOLE_GRID = "bench.windows=whole"  # a --variant setting of this script: the patch U-Net on the whole grid


def split_overrides(overrides: list[str]) -> tuple[list[str], bool]:
    """(score overrides, whole grid?): ``bench.windows=whole`` is this script's, not a score setting."""
    return [o for o in overrides if o.replace(" ", "") != WHOLE_GRID], \
        any(o.replace(" ", "") == WHOLE_GRID for o in overrides)


def run(model: str, inputs: list[str], n: int, overrides: list[str], repeats: int = 1) -> dict:
    overrides, whole = split_overrides(overrides)
    r = _child(CHILD, {"model": model, "inputs": inputs, "n": n, "overrides": overrides, "repeats": repeats,
                       "whole_grid": whole})
    return summarize(r)


def val_ap(model: str, data: str, rows: list[tuple[str, str, list[str]]], calib_n: int, val_n: int,
           n_boot: int = 1000) -> str:
    """Voxel AP on val for each (settings, backend) row, every row calibrated on the same first ``calib_n``
    healthy calib scans with its own settings (so a variant's own healthy spread is used), scored on the
    same ``val_n`` val scans (lesioned first, then healthy, in labels.csv order). AP pools the source-grid
    voxels inside each scan's nonzero region; 95% CIs bootstrap subjects (labels.csv ``subject``, else
    scans). Differences are paired: the first row's backend against the first row, a variant against the
    first row of its backend. The front end runs once per scan for all rows (medidiff.frontend's memo)."""
    import csv

    import numpy as np

    from medidiff.evaluate import metrics as M
    from medidiff.frontend.run import frontend_memo
    from medidiff.io.nifti import read_nifti
    from medidiff.model.backends import with_backend
    from medidiff.model.patches import SlidingWindowDenoiser
    from medidiff.runtime import set_threads
    from medidiff.score.calibration import Calibration, calibrate_maps
    from medidiff.score.config import load_score_config
    from medidiff.score.method import load_method
    from medidiff.score.pipeline import Scorer
    from medidiff.io.discover import discover
    from medidiff.io.errors import ScanError
    from medidiff.model.store import load_model

    set_threads()
    root = Path(data)
    labels = list(csv.DictReader(open(root / "labels.csv")))
    calib = [r for r in labels if r["split"] == "calib" and r["label"] == "0"][:calib_n]
    val = [r for r in labels if r["split"] == "val"]
    val = ([r for r in val if r["label"] == "1"][: val_n - val_n // 3] + [r for r in val if r["label"] == "0"])[:val_n]
    loaded = load_model(model)
    shipped = Calibration.load(model, loaded.model_hash)
    method = load_method(model)
    results, times, refused = [], [], {}
    with frontend_memo():
        vols = {r["scan_id"]: discover(root / r["path"]).scans[0].load() for r in calib + val}
        for name, be, overrides in rows:
            overrides, whole = split_overrides(overrides + ([] if be == "torch" else [f"score.backend={be}"]))
            cfg = load_score_config(None, overrides, base=method.score_config if method is not None
                                    else shipped.score_config if shipped else None)
            scorer = Scorer(loaded, cfg, None)
            if whole:
                sw = loaded.network
                scorer.reconstructor.net = with_backend(SlidingWindowDenoiser(sw.unet, sw.grid, sw.grid, 0.0),
                                                        cfg.backend, scorer.reconstructor.precision, loaded.device,
                                                        sw.grid)
            maps = [scorer.first_pass(vols[r["scan_id"]]) for r in calib]
            cal = calibrate_maps(maps, [r["scan_id"] for r in calib], scorer.post, model_hash=loaded.model_hash,
                                 runtime=scorer.runtime_settings())
            scorer.calibration = scorer.post.calibration = cal
            vals, truths, secs = [], [], []
            for r in val:
                vol = vols[r["scan_id"]]
                try:
                    res = scorer.score_volume(vol)
                except ScanError as exc:  # e.g. refused by registration QC: left out of every row
                    refused.setdefault(r["scan_id"], str(exc).splitlines()[0])
                    vals.append(None)
                    truths.append(None)
                    continue
                secs.append(res.seconds)
                region = np.asarray(vol.array) != 0
                gt = read_nifti(root / r["mask_path"]).array > 0.5 if r["mask_path"] else np.zeros_like(region)
                vals.append(res.anomaly_map[region])
                truths.append(gt[region])
            scored = [v for v in vals if v is not None]
            edges = M.quantile_edges(scored)
            counts = [None if v is None else M.binned_counts(v, t, edges) for v, t in zip(vals, truths)]
            results.append((name, be, counts))
            times.append(float(np.median(secs)))
            print(f"  val AP {name} / {be}: {M.ap_from_counts(*map(sum, zip(*[c for c in counts if c]))):.3f}",
                  file=sys.stderr, flush=True)

    def ap(counts, idx):
        return M.ap_from_counts(sum(counts[i][0] for i in idx), sum(counts[i][1] for i in idx))

    keep = [i for i in range(len(val)) if all(c[i] is not None for _, _, c in results)]
    results = [(n, b, [c[i] for i in keep]) for n, b, c in results]
    val = [val[i] for i in keep]
    groups = [r.get("subject") or r["scan_id"] for r in val]
    L = [f"Left out of every row: {k}: {why}" for k, why in refused.items()] + [f"Val voxel AP ({len(val)} val scans of {len(set(groups))} subjects, {sum(r['label'] == '1' for r in val)} "
         f"lesioned; each row calibrated on the same {len(calib)} healthy calib scans; 95% CIs bootstrap subjects):",
         "", "| settings | backend | val voxel AP [95% CI] | difference [95% paired CI] | "
         "s/scan (network + post, front end memoised) |", "|---|---|---|---|---|"]
    first_of = {}
    for name, be, counts in results:
        first_of.setdefault(be, counts)
    for (name, be, counts), sec in zip(results, times):
        base = results[0][2] if counts is first_of[be] else first_of[be]
        everything = np.arange(len(val))
        lo, hi = M.group_bootstrap_ci(lambda i, c=counts: ap(c, i), groups, n_boot)
        d = M.group_bootstrap_diff(lambda i, c=counts: ap(c, i), lambda i: ap(base, i), groups, n_boot)
        against = f" vs {results[0][0]} / {results[0][1]}" if base is results[0][2] else f" vs {rows[0][0]} / {be}"
        diff = ("–" if counts is base else
                f"{d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]{against}")
        L.append(f"| {name} | {be} | {ap(counts, everything):.3f} [{lo:.3f}, {hi:.3f}] | {diff} | {sec:.1f} |")
    return "\n".join(L)


def med(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if key in r]
    return statistics.median(vals) if vals else float("nan")


def summarize(r: dict) -> dict:
    rows = r["rows"]
    stages = sorted({k for row in rows for k in row if isinstance(row[k], float) and k != "score"})
    s = {k: med(rows, k) for k in stages}
    totals = [row["total"] for row in rows]
    windows = med(rows, "windows")
    return dict(r, median_s=s["total"], min_s=min(totals), max_s=max(totals), n=len(rows), stages=s,
                evals=med(rows, "evals"), windows_per_scan=windows, flops_per_scan=windows * r["flops_per_window"])


def make_grid128_model(tmp: Path) -> Path:
    """A model folder with the bundled architecture on a 128³ grid (random weights):
    memory does not depend on the weights' values."""
    import torch

    from medidiff.model.config import load_config
    from medidiff.model.network import build_network
    from medidiff.model.store import save_model

    cfg = load_config(ROOT / "configs" / "brain_t1_4mm.yaml", ["preprocess.grid=[128,128,128]",
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
    try:
        load = ", load average %.1f" % os.getloadavg()[0]
    except OSError:
        load = ""
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}{load}"


def parse_variant(text: str) -> tuple[str, list[str]]:
    """'1 draw:score.n_draws=1;score.t_fractions=[0.2]' -> ('1 draw', [overrides])."""
    name, sep, settings = text.partition(":")
    overrides = [x.strip() for x in settings.split(";") if x.strip()]
    if not sep or not name.strip() or not overrides or not all("=" in o for o in overrides):
        raise SystemExit(f"--variant {text!r}: expected NAME:KEY=VAL[;KEY=VAL], e.g. '1 draw:score.n_draws=1'")
    return name.strip(), overrides


def calls_text(r: dict, overrides: list[str]) -> str:
    """'12 windows × 4 (t* × draws × K)' from the measured window count and network evaluations."""
    ev = r["evals"] or 1
    return f"{r['windows_per_scan'] / ev:.0f} × {ev:.0f}"


def tables(rows: list[tuple[str, str, dict]], floor: dict | None) -> str:
    L = ["| settings | backend | grid | s/scan end to end (median) | min–max | vs torch | windows × (t* × draws × K) "
         "| network GFLOP/scan | peak RSS (GB) | timed scans |", "|---|---|---|---|---|---|---|---|---|---|"]
    ref = {name: r for name, be, r in rows if be == "torch"}
    for name, be, r in rows:
        ratio = f"{r['median_s'] / ref[name]['median_s']:.2f}×" if name in ref and be != "torch" else "1" \
            if be == "torch" else "–"
        L.append(f"| {name} | {be} | {'×'.join(map(str, r['grid']))} | **{r['median_s']:.2f}** | "
                 f"{r['min_s']:.2f}–{r['max_s']:.2f} | {ratio} | {calls_text(r, [])} | {r['flops_per_scan'] / 1e9:.0f} | "
                 f"{r['peak_rss_gb']:.2f} | {r['n']} |")
    order = ["load", "fe_brain", "fe_bias", "fe_registration", "front_end", "network", "reconstruct_other", "post",
             "write", "total"]
    names = {"load": "load scan", "fe_brain": "· brain extraction", "fe_bias": "· N4 bias field",
             "fe_registration": "· registration", "front_end": "front end (all, incl. resampling to the model grid)",
             "network": "network (U-Net calls)", "reconstruct_other": "noise, DDIM, window blending",
             "post": "post-processing (maps, normalisation, back to scan grid)", "write": "writing outputs",
             "total": "**end to end**"}
    L += ["", "Where the time goes (median seconds per scan):", "",
          "| stage | " + " | ".join(f"{n} / {b}" for n, b, _ in rows) + " |", "|---|" + "---|" * len(rows)]
    for k in order:
        if any(k in r["stages"] for _, _, r in rows):
            L.append(f"| {names[k]} | " + " | ".join(f"{r['stages'].get(k, float('nan')):.2f}" for _, _, r in rows) + " |")
    L.append("| one-off setup (export/compile; not in the times above) | "
             + " | ".join(f"{r['setup_s']:.1f}" for _, _, r in rows) + " |")
    L.append("| network rate achieved (GFLOP/s) | " + " | ".join(
        f"{r['flops_per_scan'] / max(r['stages']['network'], 1e-9) / 1e9:.0f}" for _, _, r in rows) + " |")
    if floor:
        best_name, best = max(floor["rates"].items(), key=lambda kv: kv[1])
        L += ["", f"Dense 3D convolution on this CPU ({floor['conv']}, {floor['threads']} threads): "
              + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in floor["rates"].items()) + ".", "",
              "| settings / backend | network GFLOP per scan | floor at the best conv rate (s) | network now (s) | "
              "network / floor |", "|---|---|---|---|---|"]
        for name, be, r in rows:
            fl = r["flops_per_scan"] / best
            L.append(f"| {name} / {be} | {r['flops_per_scan'] / 1e9:.0f} | {fl:.2f} ({best_name}) | "
                     f"{r['stages']['network']:.2f} | {r['stages']['network'] / fl:.1f}× |")
    return "\n".join(L)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "brain_t1_4mm"))
    ap.add_argument("--input", dest="inputs", action="append", default=[], metavar="PATH",
                    help="scan file, DICOM series folder or folder of scans (repeatable; default sample_data/test)")
    ap.add_argument("--n", type=int, default=5, help="at most this many scans")
    ap.add_argument("--repeats", type=int, default=1, help="time every scan this many times (medians over all)")
    ap.add_argument("--backends", default="torch",
                    help="comma-separated score.backend values, each timed in the same run (e.g. torch,openvino)")
    ap.add_argument("--floor", action="store_true", help="also measure a dense 3D convolution: the network's floor")
    ap.add_argument("--batches", default="", metavar="SIZES",
                    help="also time the patch U-Net alone per window at these windows-per-call, e.g. 1,4,12,24 "
                         "(12 = a scan's windows of one draw, 24 = two draws together), for every --backends entry")
    ap.add_argument("--grid128", action="store_true", help="also measure a 128³ grid")
    ap.add_argument("--sweep", action="store_true", help="also time K (steps) and draws variants")
    ap.add_argument("--variant", dest="variants", action="append", default=[], metavar="NAME:KEY=VAL[;KEY=VAL]",
                    help="also time the model's calibrated settings with these overrides (repeatable)")
    ap.add_argument("--json", help="also write every measurement (per scan and stage) to this JSON file")
    ap.add_argument("--val-ap", metavar="DATA", help="instead of timing: val voxel AP of every row (settings × "
                    "backend) on DATA (labels.csv layout, e.g. sample_data), each row calibrated on DATA's calib")
    ap.add_argument("--calib-n", type=int, default=12, help="--val-ap: healthy calib scans per calibration")
    ap.add_argument("--val-n", type=int, default=12, help="--val-ap: val scans (two thirds lesioned)")
    a = ap.parse_args(argv)
    inputs = a.inputs or [str(ROOT / "sample_data" / "test")]
    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    configs = [("default", [])]
    if a.sweep:
        configs += [("K=5", ["score.steps=5"]), ("K=10", ["score.steps=10"]),
                    ("2 t* levels", ["score.t_fractions=[0.1,0.2]"]), ("8 draws", ["score.n_draws=8"])]
    configs += [parse_variant(v) for v in a.variants]
    if a.val_ap:
        print(f"machine: {machine()}; model {a.model}")
        # the default settings on every backend; each variant on the last backend (the one being chosen)
        rows = [(configs[0][0], b, configs[0][1]) for b in backends] + [(n, backends[-1], ov) for n, ov in configs[1:]]
        print(val_ap(a.model, a.val_ap, rows, a.calib_n, a.val_n))
        return
    rows = []
    for name, ov in configs:
        for be in backends:
            extra = [] if be == "torch" else [f"score.backend={be}"]
            rows.append((name, be, run(a.model, inputs, a.n, ov + extra, a.repeats)))
            print(f"  {name} / {be}: {rows[-1][2]['median_s']:.2f} s/scan", file=sys.stderr, flush=True)
    if a.grid128:
        with tempfile.TemporaryDirectory() as td:
            m = make_grid128_model(Path(td))
            rows.append(("128³ grid, default", "torch", run(str(m), inputs, 2, ["score.normalization=none"])))
    floor = _child(FLOOR) if a.floor else None
    sizes = [int(b) for b in a.batches.split(",") if b.strip()]
    batches = _child(BATCHES, {"model": a.model, "backends": backends, "sizes": sizes, "repeats": 3}) if sizes else None
    print(f"machine: {machine()}; torch threads {rows[0][2]['threads']}; model {a.model}; "
          f"{rows[0][2]['n']} timed scans per row ({a.repeats} repeat(s)), after one warm-up scan")
    print(tables(rows, floor))
    if batches:
        print()
        print(batches_table(batches))
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": machine(), "floor": floor, "batches": batches,
                                            "rows": [{"settings": n, "backend": b, **r} for n, b, r in rows]},
                                           indent=1, default=str))


if __name__ == "__main__":
    main()
