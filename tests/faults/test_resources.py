"""Resource limits: scoring a volume far larger than the model grid stays in bounded memory.

Why it is bounded (medidiff/preprocess.py, medidiff/score/pipeline.py): the
source volume is resampled ONCE onto the model grid; noise draws, DDIM steps,
residuals and maps all live on the model grid (here 16³); only the final map
(and mask) is resampled back to the source grid. So the extra memory of a big
scan is a fixed handful of full-resolution copies (float32 source, foreground
mask, Otsu histogram input, anti-alias filter output, the map and its write
buffer) and does not grow with the number of noise draws.
"""

from __future__ import annotations

import json
import subprocess
import sys

from faults.kit import child_env

SHAPE = (192, 192, 160)  # ~5.9 M voxels vs 4096 on the tiny model's grid
GB = 1024**3

CHILD = r"""
import json, resource, sys
from pathlib import Path
import numpy as np, nibabel as nib
from medidiff.batch.run import score_folder

model, tmp, shape = sys.argv[1], Path(sys.argv[2]), tuple(int(v) for v in sys.argv[3].split(","))

def scan(shape, name):
    g = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij", sparse=True)
    x = np.where(g[0] ** 2 + g[1] ** 2 + g[2] ** 2 < 0.6, 800, 0).astype(np.int16)
    d = tmp / name
    d.mkdir(parents=True)
    nib.save(nib.Nifti1Image(x, np.diag([1.0, 1.0, 1.0, 1.0])), str(d / "v.nii"))
    del x, g
    return d

def peak_mb():  # ru_maxrss is in KiB on Linux and never decreases
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

small, big = scan((24, 24, 20), "small"), scan(shape, "big")
res = {}
for name, src, draws in (("small", small, 1), ("big1", big, 1), ("big8", big, 8)):
    s = score_folder(model, src, tmp / f"out_{name}", overrides=(f"score.n_draws={draws}",), progress=False,
                     log=lambda m: None)
    assert s.n_scored == 1, s.failures
    res[name] = peak_mb()
print(json.dumps(res))
"""


def test_big_volume_memory_is_bounded(tiny_model_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tiny_model_dir), str(tmp_path), ",".join(map(str, SHAPE))],
                          capture_output=True, text=True, env=child_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    peaks = json.loads(proc.stdout.strip().splitlines()[-1])
    src_bytes = 4 * SHAPE[0] * SHAPE[1] * SHAPE[2]  # one float32 copy of the source
    extra = peaks["big1"] - peaks["small"]
    assert extra < 1.5 * GB, peaks
    assert extra < 16 * src_bytes, (peaks, "more full-resolution copies than the pipeline needs")
    # 8 noise draws instead of 1: no per-draw full-resolution copy (that would add 7 × src_bytes)
    assert peaks["big8"] - peaks["big1"] < 2 * src_bytes, peaks
