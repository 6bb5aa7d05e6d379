"""Quality of synthetic volumes: diversity, distance to real healthy scans, memorization.

All metrics work on model-grid arrays in model units (the same grid and
normalisation the network was trained on); real scans are brought there with
the model's own preprocessing.

* **Diversity**: mean pairwise MS-SSIM among samples (MONAI
  ``MultiScaleSSIMMetric``, data range 1). MONAI's default 5 scales x 11-voxel
  kernel needs > 160 voxels per side, so the number of scales and the kernel are
  chosen to fit the grid (``msssim_settings``; 1 scale = plain SSIM). Lower mean
  MS-SSIM = more diverse; a collapsed model gives values near 1.
* **Distance to real scans** (``--reference``): unbiased RBF-kernel MMD² on 2x
  average-pooled volumes (median-heuristic bandwidth), MONAI's linear-kernel
  ``MMDMetric`` (compares means only), 1-D Wasserstein distance between pooled
  foreground intensity histograms, and foreground-volume statistics.
* **Real-vs-real yardsticks** (``--reference`` with >= 4 scans): the reference is split in
  two halves A and B; MMD², intensity Wasserstein and a feature Fréchet distance (FID formula
  on a fixed random-weight 3D conv net, :func:`feature_network`) are computed for A vs B and
  for as many samples as A holds vs B, so each number stands next to what two sets of real
  scans of the same size give. ``comparison`` in quality.json lists each target with both
  numbers (brain fraction ±10 %, Wasserstein <= 0.05, MMD and feature distance <= 1.5x real,
  MS-SSIM inside the real range, nothing memorised).
* **Memorization** (``--train-data``): for every sample, the training scan with
  the highest normalized cross-correlation after the model's preprocessing.
  Plain whole-volume NCC is dominated by what all brains share (outline,
  background, tissue layout): between *distinct* subjects of the sample data
  it is 0.94-0.98, so any fixed threshold near 0.95 flags good samples. The
  flag therefore uses the *subject-specific* NCC: NCC of the residuals after
  subtracting the mean training image (needs >= 3 training scans, else plain
  NCC). Measured on sample_data/train (24 scans, 4 mm grid): distinct subjects
  0.29-0.68 (nearest neighbour), an exact copy 1.0, a copy plus 5% noise 0.96.
  Samples at or above ``threshold`` (default 0.9) are flagged; plain NCC and the
  leave-one-out nearest-neighbour statistics between training scans are reported
  as yardsticks, and samples closer to a training scan than any training scan is
  to another are listed (``closer_than_any_train_pair``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


# ----------------------------------------------------------------------------- helpers

def foreground(image: np.ndarray) -> np.ndarray:
    """Brain/body mask of a model-grid image (same estimator the anomaly inserter uses)."""
    from ..lesions.anomalies import estimate_brain_mask

    img = np.asarray(image, dtype=np.float32)
    if not np.isfinite(img).all() or float(img.max() - img.min()) <= 0:
        return np.zeros(img.shape, bool)
    return estimate_brain_mask(img)


def _stats(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "mean": None, "std": None, "min": None, "median": None, "max": None}
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "median": float(np.median(v)), "max": float(v.max())}


def msssim_settings(shape: Sequence[int]) -> tuple[int, tuple[float, ...]]:
    """(kernel_size, weights) for the largest MS-SSIM that fits ``shape``.

    MONAI requires min(shape) > (kernel - 1) * 2^(scales - 1). Prefer 7-voxel
    kernels, then 5, then 3, with as many of the standard 5 scales as fit
    (weights renormalised)."""
    m = int(min(shape))
    for k in (7, 5, 3):
        for n in range(5, 0, -1):
            if m > (k - 1) * 2 ** (n - 1):
                w = np.asarray(MSSSIM_WEIGHTS[:n], dtype=np.float64)
                return k, tuple(float(x) for x in w / w.sum())
    return 3, (1.0,)


def pairwise_msssim(images: Sequence[np.ndarray], max_pairs: int = 300, seed: int = 0) -> dict[str, Any]:
    import torch
    from monai.metrics import MultiScaleSSIMMetric, SSIMMetric

    n = len(images)
    if n < 2:
        return {"n_pairs": 0, "note": "needs >= 2 samples"}
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    if len(pairs) > max_pairs:
        rng = np.random.default_rng(seed)
        pairs = [pairs[k] for k in sorted(rng.choice(len(pairs), size=max_pairs, replace=False))]
    k, w = msssim_settings(images[0].shape)
    if len(w) > 1:
        metric = MultiScaleSSIMMetric(spatial_dims=3, data_range=1.0, kernel_size=k, weights=w)
        kind = f"ms-ssim ({len(w)} scales, kernel {k})"
    else:
        metric = SSIMMetric(spatial_dims=3, data_range=1.0, win_size=k)
        kind = f"ssim (kernel {k})"
    vals = []
    for start in range(0, len(pairs), 16):
        chunk = pairs[start:start + 16]
        a = torch.from_numpy(np.stack([np.clip(images[i], 0, None) for i, _ in chunk]))[:, None].float()
        b = torch.from_numpy(np.stack([np.clip(images[j], 0, None) for _, j in chunk]))[:, None].float()
        vals.extend(metric(a, b).reshape(-1).tolist())
    n_nan = int(sum(1 for v in vals if not np.isfinite(v)))
    out = {"metric": kind, "n_pairs": len(pairs), **{f"msssim_{k2}": v for k2, v in _stats(vals).items() if k2 != "n"}}
    if n_nan:
        out["n_undefined"] = n_nan  # MS-SSIM is undefined when a contrast term goes negative
    if out.get("msssim_mean") is not None:
        out["diversity"] = 1.0 - out["msssim_mean"]
    return out


def _pool(images: np.ndarray, factor: int = 2) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.asarray(images, dtype=np.float32))[:, None]
    if factor > 1 and min(t.shape[2:]) >= 2 * factor:
        t = F.avg_pool3d(t, factor)
    return t[:, 0].reshape(t.shape[0], -1).double().numpy()


def rbf_mmd2(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Unbiased MMD² with a Gaussian kernel (bandwidth: median pairwise distance). Returns (mmd2, sigma)."""
    z = np.concatenate([x, y])
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    off = d2[~np.eye(len(z), dtype=bool)]
    sigma2 = float(np.median(off)) if off.size and np.median(off) > 0 else 1.0
    kmat = np.exp(-d2 / (2 * sigma2))
    m, n = len(x), len(y)
    kxx, kyy, kxy = kmat[:m, :m], kmat[m:, m:], kmat[:m, m:]
    mmd = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
           - 2 * kxy.mean())
    return float(mmd), math.sqrt(sigma2)


def _fg_values(images: Sequence[np.ndarray], fgs: Sequence[np.ndarray], max_values: int, seed: int) -> np.ndarray:
    vals = np.concatenate([im[fg] for im, fg in zip(images, fgs)] or [np.zeros(0, np.float32)])
    if vals.size > max_values:
        vals = np.random.default_rng(seed).choice(vals, size=max_values, replace=False)
    return vals


def reference_distance(samples: Sequence[np.ndarray], refs: Sequence[np.ndarray],
                       sample_fgs: Sequence[np.ndarray] | None = None,
                       ref_fgs: Sequence[np.ndarray] | None = None, seed: int = 0) -> dict[str, Any]:
    from scipy.stats import wasserstein_distance

    sample_fgs = list(sample_fgs) if sample_fgs is not None else [foreground(s) for s in samples]
    ref_fgs = list(ref_fgs) if ref_fgs is not None else [foreground(r) for r in refs]
    out: dict[str, Any] = {"n_samples": len(samples), "n_reference": len(refs)}
    sv = _fg_values(samples, sample_fgs, 200_000, seed)
    rv = _fg_values(refs, ref_fgs, 200_000, seed + 1)
    if sv.size and rv.size:
        out["intensity_wasserstein_fg"] = float(wasserstein_distance(sv, rv))
        qs = [1, 5, 25, 50, 75, 95, 99]
        out["intensity_percentiles_fg"] = {"q": qs, "samples": np.percentile(sv, qs).round(4).tolist(),
                                           "reference": np.percentile(rv, qs).round(4).tolist()}
    out["foreground_fraction"] = {"samples": _stats([float(f.mean()) for f in sample_fgs]),
                                  "reference": _stats([float(f.mean()) for f in ref_fgs])}
    if len(samples) >= 2 and len(refs) >= 2:
        x, y = _pool(np.stack(samples)), _pool(np.stack(refs))
        mmd, sigma = rbf_mmd2(x, y)
        out["mmd2_rbf_pooled2"] = mmd
        out["mmd_rbf_bandwidth"] = sigma
        try:
            import torch
            from monai.metrics import MMDMetric

            k = min(len(x), len(y))  # MONAI's MMD needs equally many items on both sides
            out["mmd_linear_monai"] = float(MMDMetric()(torch.from_numpy(y[:k]), torch.from_numpy(x[:k])))
        except Exception as exc:  # pragma: no cover - informative only
            out["mmd_linear_monai"] = None
            out["mmd_linear_monai_error"] = str(exc)[:200]
        # yardstick: the same MMD between two halves of the reference set
        if len(refs) >= 4:
            h = len(refs) // 2
            out["mmd2_rbf_reference_halves"] = rbf_mmd2(y[:h], y[h:])[0]
    else:
        out["mmd_note"] = "MMD needs >= 2 samples and >= 2 reference scans"
    return out


# ----------------------------------------------------------------------------- feature distance

FEATURE_WIDTHS = (8, 16, 32)


def feature_network(seed: int = 0):
    """A fixed random-weight 3D conv net (3 stages of conv 3³ + ReLU, 2x average pooling between).

    Why random weights: there is no pretrained 3D brain network to ship (nothing may be downloaded),
    and the project's own diffusion U-Net changes with every retraining and was trained on the
    very scans it would judge, which rewards memorisation. Random convolutional features are fixed
    forever (weights drawn from numpy's seeded PCG64, so they do not depend on the torch version),
    and they carry texture and structure statistics well enough to rank generators (Naeem et al.
    2020 recommend random embeddings where no domain network exists). The absolute value means
    little; compare it with the same distance between two halves of the real scans."""
    import torch

    rng = np.random.default_rng(seed)
    layers, c_in = [], 1
    for k, c_out in enumerate(FEATURE_WIDTHS):
        conv = torch.nn.Conv3d(c_in, c_out, 3, padding=1)
        w = rng.normal(0.0, math.sqrt(2.0 / (c_in * 27)), size=tuple(conv.weight.shape))
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(w.astype(np.float32)))
            conv.bias.zero_()
        layers.append(torch.nn.Sequential(*([torch.nn.AvgPool3d(2)] if k else []), conv, torch.nn.ReLU()))
        c_in = c_out
    return torch.nn.ModuleList(layers).eval()


def volume_features(images: Sequence[np.ndarray], seed: int = 0) -> np.ndarray:
    """(N, 2 * sum(FEATURE_WIDTHS)) features: per-channel spatial mean and std after every stage."""
    import torch

    net = feature_network(seed)
    feats = []
    with torch.no_grad():
        for im in images:
            h = torch.from_numpy(np.asarray(im, dtype=np.float32))[None, None]
            row = []
            for stage in net:
                h = stage(h)
                row += [h.mean(dim=(2, 3, 4))[0], h.std(dim=(2, 3, 4))[0]]
            feats.append(torch.cat(row).double().numpy())
    return np.stack(feats)


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the feature rows of ``x`` and ``y`` (the FID formula)."""
    from scipy import linalg

    mx, my = x.mean(axis=0), y.mean(axis=0)
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    import warnings

    with warnings.catch_warnings():  # fewer scans than features: singular covariances are expected here
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = np.real(linalg.sqrtm(cx @ cy))
    return float(max(0.0, np.sum((mx - my) ** 2) + np.trace(cx) + np.trace(cy) - 2 * np.trace(covmean)))


def _halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2: 2 * (n // 2)])


def real_vs_real(samples: Sequence[np.ndarray], refs: Sequence[np.ndarray], sample_fgs: Sequence[np.ndarray],
                 ref_fgs: Sequence[np.ndarray], seed: int = 0) -> dict[str, Any]:
    """Each distance twice at the same set sizes: real half A vs real half B (the yardstick) and
    samples (as many as A holds) vs real half B. Small-sample bias then hits both numbers alike."""
    from scipy.stats import wasserstein_distance

    if len(refs) < 4 or len(samples) < 2:
        return {"note": "needs >= 4 reference scans and >= 2 samples"}
    a, b = _halves(len(refs), seed)
    k = min(len(a), len(samples))
    a = a[:k]
    ra, rb = [refs[i] for i in a], [refs[i] for i in b]
    sm = list(samples[:k])
    out: dict[str, Any] = {"n_per_side": int(k), "n_reference_b": int(len(b)), "split_seed": int(seed)}
    pa, pb, ps = _pool(np.stack(ra)), _pool(np.stack(rb)), _pool(np.stack(sm))
    out["mmd2_rbf_pooled2"] = {"samples_vs_real": rbf_mmd2(ps, pb)[0], "real_vs_real": rbf_mmd2(pa, pb)[0]}
    fa, fb, fs = volume_features(ra), volume_features(rb), volume_features(sm)
    out["feature_frechet"] = {"samples_vs_real": frechet_distance(fs, fb), "real_vs_real": frechet_distance(fa, fb),
                              "features": f"fixed random 3D conv net, {fa.shape[1]} dims (mean, std per channel)"}
    va = _fg_values(ra, [ref_fgs[i] for i in a], 200_000, seed)
    vb = _fg_values(rb, [ref_fgs[i] for i in b], 200_000, seed + 1)
    vs = _fg_values(sm, list(sample_fgs[:k]), 200_000, seed + 2)
    if va.size and vb.size and vs.size:
        out["intensity_wasserstein_fg"] = {"samples_vs_real": float(wasserstein_distance(vs, vb)),
                                           "real_vs_real": float(wasserstein_distance(va, vb))}
    return out


def comparison_table(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each number next to its real-scan reference: measure, samples, real, target, met."""
    ref = report.get("reference") or {}
    rvr = ref.get("real_vs_real") or {}
    rows: list[dict[str, Any]] = []
    fg = ref.get("foreground_fraction") or {}
    s_fg, r_fg = (fg.get("samples") or {}).get("mean"), (fg.get("reference") or {}).get("mean")
    if s_fg is not None and r_fg:
        rows.append({"measure": "brain fraction of the grid (mean)", "samples": s_fg, "real": r_fg,
                     "target": "within ±10 % of real", "met": abs(s_fg - r_fg) <= 0.1 * r_fg})
    w = rvr.get("intensity_wasserstein_fg")
    if w:
        rows.append({"measure": "intensity Wasserstein inside the brain", "samples": w["samples_vs_real"],
                     "real": w["real_vs_real"], "target": "<= 0.05", "met": w["samples_vs_real"] <= 0.05})
    for key, name in (("mmd2_rbf_pooled2", "MMD² (RBF, 2x pooled)"), ("feature_frechet", "feature Fréchet distance")):
        v = rvr.get(key)
        if v:
            rows.append({"measure": name, "samples": v["samples_vs_real"], "real": v["real_vs_real"],
                         "target": "<= 1.5 x real-vs-real",
                         "met": v["samples_vs_real"] <= 1.5 * max(v["real_vs_real"], 1e-12)})
    div, rdiv = report.get("diversity") or {}, ref.get("diversity_reference") or {}
    if div.get("msssim_mean") is not None and rdiv.get("msssim_min") is not None:
        lo, hi = rdiv["msssim_min"], rdiv["msssim_max"]
        rows.append({"measure": "MS-SSIM among scans (mean)", "samples": div["msssim_mean"],
                     "real": rdiv["msssim_mean"], "real_range": [lo, hi], "target": "inside the real range",
                     "met": lo <= div["msssim_mean"] <= hi})
    mem = report.get("memorization") or {}
    if "flagged" in mem and mem.get("n_train"):
        rows.append({"measure": "samples flagged as memorised", "samples": len(mem["flagged"]), "real": 0,
                     "target": "0", "met": not mem["flagged"]})
    return rows


def ncc_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalized cross-correlation between every row-volume of ``a`` and of ``b`` (N x M)."""
    def norm(x):
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        x = x - x.mean(axis=1, keepdims=True)
        nrm = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.maximum(nrm, 1e-12)
    return norm(a) @ norm(b).T


def _loo_max(m: np.ndarray) -> np.ndarray:
    m = m.copy()
    np.fill_diagonal(m, -np.inf)
    return m.max(axis=1)


def memorization(samples: Sequence[np.ndarray], sample_ids: Sequence[str], train: Sequence[np.ndarray],
                 train_ids: Sequence[str], threshold: float = 0.9) -> dict[str, Any]:
    if not len(train):
        return {"note": "no training scans could be loaded", "flagged": [], "per_sample": []}
    S = np.stack(samples).astype(np.float64)
    T = np.stack(train).astype(np.float64)
    raw = ncc_matrix(S, T)
    if len(T) >= 3:
        mean = T.mean(axis=0)
        ncc, metric = ncc_matrix(S - mean, T - mean), "subject-specific NCC (residual from the mean training image)"
    else:
        ncc, metric = raw, "NCC (whole volume; < 3 training scans for the subject-specific version)"
    best = ncc.argmax(axis=1)
    train_nn = _loo_max(ncc_matrix(T - T.mean(axis=0), T - T.mean(axis=0)) if len(T) >= 3 else
                        ncc_matrix(T, T)) if len(T) >= 2 else None
    per = []
    for i, sid in enumerate(sample_ids):
        j = int(best[i])
        per.append({"sample": sid, "nearest_train": train_ids[j], "ncc": float(ncc[i, j]),
                    "ncc_whole_volume": float(raw[i].max()), "flagged": bool(ncc[i, j] >= threshold)})
    out: dict[str, Any] = {"metric": metric, "threshold": float(threshold), "n_train": len(train),
                           "flagged": [p["sample"] for p in per if p["flagged"]],
                           "nearest_ncc": _stats([p["ncc"] for p in per]),
                           "nearest_ncc_whole_volume": _stats([p["ncc_whole_volume"] for p in per])}
    if train_nn is not None:
        out["train_nn_ncc"] = _stats(train_nn.tolist())
        out["train_nn_ncc_whole_volume"] = _stats(_loo_max(ncc_matrix(T, T)).tolist())
        if len(T) >= 10:  # residuals of few scans are anti-correlated (about -1/(N-1)): yardstick meaningless
            out["closer_than_any_train_pair"] = [p["sample"] for p in per if p["ncc"] > float(train_nn.max())]
    out["per_sample"] = per
    return out


def load_preprocessed(data: str | Path, preprocess_config, limit: int | None = None,
                      log: Callable[[str], None] | None = None) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Scans in a folder (or CSV manifest, healthy rows only) on the model grid (model units)."""
    from ..preprocess import preprocess
    from ..dataset import list_scans

    images, fgs, ids = [], [], []
    sources = list_scans(data)
    if limit is not None:
        sources = sources[:limit]
    for src in sources:
        try:
            pp = preprocess(src.load(), preprocess_config)
        except Exception as exc:  # one unreadable file never stops the report
            if log:
                log(f"warning: skipping {src.path}: {str(exc)[:160]}")
            continue
        images.append(pp.image)
        fgs.append(pp.foreground)
        ids.append(src.scan_id)
    return images, fgs, ids


# ----------------------------------------------------------------------------- figure

def mid_slice_grid(images: Sequence[np.ndarray], path: str | Path, titles: Sequence[str] | None = None,
                   masks: Sequence[np.ndarray | None] | None = None, max_rows: int = 16) -> Path:
    """PNG: one row per sample, columns = mid axial / coronal / sagittal slices of the RAS model
    grid (superior / anterior up, radiological left-right as stored: +x to the right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io.atomic import atomic_path

    images = list(images)[:max_rows]
    n = max(1, len(images))
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    vmax = max([float(np.percentile(im, 99.5)) for im in images] + [1e-6])
    for r in range(n):
        for c in range(3):
            axes[r, c].axis("off")
        if r >= len(images):
            continue
        im = images[r]
        mk = masks[r] if masks is not None and r < len(masks) else None
        x, y, z = (s // 2 for s in im.shape)
        views = [(im[:, :, z], None if mk is None else mk[:, :, z], "axial"),
                 (im[:, y, :], None if mk is None else mk[:, y, :], "coronal"),
                 (im[x, :, :], None if mk is None else mk[x, :, :], "sagittal")]
        for c, (sl, ms, name) in enumerate(views):
            ax = axes[r, c]
            ax.imshow(sl.T, cmap="gray", origin="lower", vmin=0, vmax=vmax, interpolation="nearest")
            if ms is not None and np.any(ms):
                ax.contour(ms.T.astype(float), levels=[0.5], colors="red", linewidths=0.8, origin="lower")
            label = name if titles is None else f"{titles[r]} · {name}"
            ax.set_title(label, fontsize=7)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- report

def quality_report(out: str | Path, records: Sequence[dict[str, Any]], preprocess_config, opts,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Compute every metric that the given inputs allow; write ``quality.json`` and ``quality.png``."""
    import json
    import time

    from ..io.atomic import write_text_atomic
    from ..io.nifti import read_nifti

    out = Path(out)
    t0 = time.perf_counter()
    ids = [r["scan_id"] for r in records]
    # metrics of the generator use the generated (clean) volumes, not the ones with inserted anomalies
    clean = [read_nifti(out / (r.get("clean_file") or r["file"])).array for r in records]
    fgs = [foreground(im) for im in clean]
    report: dict[str, Any] = {
        "n_samples": len(records),
        "units": "model",
        "samples": {"intensity_fg_mean": _stats([float(im[f].mean()) if f.any() else None for im, f in zip(clean, fgs)]),
                    "foreground_fraction": _stats([float(f.mean()) for f in fgs]),
                    "min": float(min(im.min() for im in clean)), "max": float(max(im.max() for im in clean))},
        "diversity": pairwise_msssim(clean),
    }
    if getattr(opts, "reference", None):
        refs, ref_fgs, ref_ids = load_preprocessed(opts.reference, preprocess_config,
                                                   limit=getattr(opts, "reference_limit", None), log=log)
        if refs:
            report["reference"] = {"path": str(opts.reference), **reference_distance(clean, refs, fgs, ref_fgs)}
            if len(refs) >= 2:
                report["reference"]["diversity_reference"] = pairwise_msssim(refs)
            report["reference"]["real_vs_real"] = real_vs_real(clean, refs, fgs, ref_fgs)
        else:
            report["reference"] = {"path": str(opts.reference), "note": "no readable reference scans"}
    if getattr(opts, "train_data", None):
        train, _, train_ids = load_preprocessed(opts.train_data, preprocess_config, log=log)
        mem = memorization(clean, ids, train, train_ids, float(opts.memorization_threshold))
        mem["path"] = str(opts.train_data)
        report["memorization"] = mem
        if mem.get("flagged"):
            log(f"warning: {len(mem['flagged'])} sample(s) at NCC >= {opts.memorization_threshold:g} with a "
                f"training scan (possible memorization): {', '.join(mem['flagged'][:10])}")
    report["comparison"] = comparison_table(report)
    finals, masks, titles = [], [], []
    for r in records[:16]:
        finals.append(read_nifti(out / r["file"]).array)
        masks.append(read_nifti(out / r["mask"]).array > 0.5 if r.get("mask") else None)
        titles.append(r["scan_id"] + (" (anomalous)" if r.get("label") == 1 else ""))
    mid_slice_grid(finals, out / "quality.png", titles, masks)
    report["figure"] = "quality.png"
    report["seconds"] = round(time.perf_counter() - t0, 3)
    write_text_atomic(out / "quality.json", json.dumps(report, indent=2) + "\n")
    return report


# ----------------------------------------------------------------------------- held-out real yardsticks

def _residual_ncc(a: np.ndarray, b: np.ndarray, mean: np.ndarray) -> np.ndarray:
    return ncc_matrix(np.asarray(a, np.float64) - mean, np.asarray(b, np.float64) - mean)


def memorization_vs_real(samples: Sequence[np.ndarray], sample_ids: Sequence[str], train: Sequence[np.ndarray],
                         train_ids: Sequence[str], heldout: Sequence[np.ndarray],
                         heldout_ids: Sequence[str]) -> dict[str, Any]:
    """Memorisation judged against real subjects: every sample's nearest-training-subject similarity
    next to the same similarity of *held-out real* subjects (who cannot have been memorised).

    Similarity: subject-specific NCC, the NCC of the residuals after subtracting the mean training
    image (what all brains share cancels; see :func:`memorization`). Yardsticks: each held-out
    real head's nearest training subject (``heldout_nn``, the real-vs-real nearest-neighbour
    distribution the issue asks for) and each training subject's nearest other training subject
    (``train_nn``, leave one out). A sample is flagged when it is closer to a training subject
    than *any* held-out real subject is to one (``> max(heldout_nn)``); ``percentile`` is the
    share of held-out real subjects it is closer than."""
    if len(train) < 3 or not len(heldout) or not len(samples):
        return {"note": "needs >= 3 training scans, >= 1 held-out real scan and >= 1 sample"}
    T = np.stack(train).astype(np.float64)
    mean = T.mean(axis=0)
    s_nn = _residual_ncc(np.stack(samples), T, mean)
    h_nn = _residual_ncc(np.stack(heldout), T, mean)
    t_nn = _loo_max(_residual_ncc(T, T, mean))
    h_best = h_nn.max(axis=1)
    limit = float(h_best.max())
    per = []
    for i, sid in enumerate(sample_ids):
        j = int(s_nn[i].argmax())
        v = float(s_nn[i, j])
        per.append({"sample": sid, "nearest_train": train_ids[j], "ncc": v,
                    "percentile": float((h_best < v).mean() * 100.0), "flagged": bool(v > limit)})
    return {"metric": "subject-specific NCC (residual from the mean training image)", "n_train": len(train),
            "n_heldout": len(heldout), "limit_max_heldout_nn": limit,
            "samples_nn": _stats([p["ncc"] for p in per]),
            "heldout_nn": _stats(h_best.tolist()), "train_nn": _stats(t_nn.tolist()),
            "heldout_nn_per_subject": [{"subject": heldout_ids[k], "nearest_train": train_ids[int(h_nn[k].argmax())],
                                        "ncc": float(h_best[k])} for k in range(len(heldout))],
            "flagged": [p["sample"] for p in per if p["flagged"]], "per_sample": per}


# ----------------------------------------------------------------------------- does the condition show?

CSF_THRESHOLD = 0.45  # model units of wm_median intensity (white matter 0.8): CSF-dark voxels of a T1 scan


def atrophy_measures(image: np.ndarray, brain: np.ndarray, threshold: float = CSF_THRESHOLD) -> dict[str, float]:
    """Age-sensitive volumes of a template-space T1 head: ``brain_fraction`` (of the grid),
    ``csf_fraction`` (share of the brain mask darker than ``threshold``: sulcal CSF and ventricles)
    and ``central_csf_fraction`` (the same inside the central box of the grid, a third per axis,
    where the lateral ventricles lie after affine registration to MNI space)."""
    img = np.asarray(image, np.float32)
    brain = np.asarray(brain, bool)
    dark = (img < threshold) & brain
    box = tuple(slice(s // 3, s - s // 3) for s in img.shape)
    cb = brain[box]
    return {"brain_fraction": float(brain.mean()),
            "csf_fraction": float(dark.sum() / max(brain.sum(), 1)),
            "central_csf_fraction": float(dark[box].sum() / max(cb.sum(), 1))}


def _slope_ci(ages: np.ndarray, values: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    ages, values = np.asarray(ages, np.float64), np.asarray(values, np.float64)
    if len(ages) < 3 or np.ptp(ages) <= 0:
        return {"n": int(len(ages)), "slope_per_decade": None}
    slope = float(np.polyfit(ages, values, 1)[0] * 10)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        k = rng.integers(0, len(ages), len(ages))
        if np.ptp(ages[k]) > 0:
            boots.append(np.polyfit(ages[k], values[k], 1)[0] * 10)
    r = float(np.corrcoef(ages, values)[0, 1]) if np.std(values) > 0 else None
    return {"n": int(len(ages)), "slope_per_decade": slope, "r": r,
            "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))] if boots else None}


def age_trend(sample_images: Sequence[np.ndarray], sample_ages: Sequence[float], real_images: Sequence[np.ndarray],
              real_fgs: Sequence[np.ndarray], real_ages: Sequence[float], n_boot: int = 2000,
              seed: int = 0) -> dict[str, Any]:
    """Slope per decade of each :func:`atrophy_measures` value against age, in samples (generated at
    ``sample_ages``) and in real heads, with bootstrap 95 % CIs (resampling scans). The condition
    shows when the samples' slope has the real slope's sign and its CI excludes 0."""
    s_meas = [atrophy_measures(im, foreground(im)) for im in sample_images]
    r_meas = [atrophy_measures(im, fg) for im, fg in zip(real_images, real_fgs)]
    out: dict[str, Any] = {"csf_threshold": CSF_THRESHOLD, "n_samples": len(s_meas), "n_real": len(r_meas)}
    for key in ("brain_fraction", "csf_fraction", "central_csf_fraction"):
        s = _slope_ci(np.asarray(sample_ages), np.asarray([m[key] for m in s_meas]), n_boot, seed)
        r = _slope_ci(np.asarray(real_ages), np.asarray([m[key] for m in r_meas]), n_boot, seed + 1)
        shows = None
        if s.get("slope_per_decade") is not None and r.get("slope_per_decade") is not None and s.get("ci95"):
            lo, hi = s["ci95"]
            shows = bool(np.sign(s["slope_per_decade"]) == np.sign(r["slope_per_decade"]) and (lo > 0 or hi < 0))
        out[key] = {"samples": s, "real": r, "condition_shows": shows}
    return out
