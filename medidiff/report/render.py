"""PNG views for the HTML report (matplotlib, Agg, no pyplot global state).

Every view is drawn from volumes reoriented to the closest canonical RAS
orientation (``nibabel.as_closest_canonical``), so a scan stored LPS and the
same scan stored RAS give the same pixels, and the orientation letters on each
view come from the canonical affine's axis codes. Display convention is
radiological: the patient's right is on the viewer's left in axial and coronal
views; sagittal views show anterior on the left; superior/anterior at the top.
For an oblique scan the letters name the nearest anatomical axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
# view → (letter at the right edge, letter at the bottom edge)
VIEWS = {"axial": ("L", "P"), "coronal": ("L", "I"), "sagittal": ("P", "I")}
MAP_CMAP = "inferno"
CONTOUR_COLOR = "#00e5ff"
OVERLAY_ALPHA = 0.7


@dataclass
class Canonical:
    """One volume in closest-canonical orientation."""

    data: np.ndarray
    affine: np.ndarray
    axcodes: tuple[str, str, str]
    zooms: tuple[float, float, float]
    oblique: bool


def canonical(array: np.ndarray, affine: np.ndarray) -> Canonical:
    import nibabel as nib

    arr = np.asarray(array)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    can = nib.as_closest_canonical(img)
    data = np.asarray(can.dataobj)
    aff = can.affine
    rot = aff[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0)
    oblique = bool(np.abs(np.abs(rot) - np.round(np.abs(rot))).max() > 1e-3)
    return Canonical(data=data, affine=aff, axcodes=tuple(nib.aff2axcodes(aff)),  # type: ignore[arg-type]
                     zooms=tuple(float(z) for z in np.linalg.norm(aff[:3, :3], axis=0)),  # type: ignore[arg-type]
                     oblique=oblique)


@dataclass
class Plane:
    """How one view maps the canonical array onto the screen."""

    view: str
    slice_axis: int
    h_axis: int  # array axis shown left → right
    v_axis: int  # array axis shown top → bottom
    h_flip: bool
    v_flip: bool
    labels: dict[str, str]  # left/right/top/bottom letters
    aspect: float  # pixel height / width in mm

    def extract(self, data: np.ndarray, index: int) -> np.ndarray:
        sl = np.take(data, int(index), axis=self.slice_axis)
        rest = [a for a in range(3) if a != self.slice_axis]
        img = sl.T if rest.index(self.v_axis) == 1 else sl  # rows = v_axis, cols = h_axis
        if self.h_flip:
            img = img[:, ::-1]
        if self.v_flip:
            img = img[::-1, :]
        return img

    def point(self, ijk: Sequence[int], shape: Sequence[int]) -> tuple[float, float]:
        """(col, row) on screen of voxel ``ijk``."""
        c, r = ijk[self.h_axis], ijk[self.v_axis]
        if self.h_flip:
            c = shape[self.h_axis] - 1 - c
        if self.v_flip:
            r = shape[self.v_axis] - 1 - r
        return float(c), float(r)


def _axis_towards(axcodes: Sequence[str], letter: str) -> tuple[int, bool]:
    """Array axis along ``letter``'s direction and whether its index grows towards it."""
    for ax, code in enumerate(axcodes):
        if code == letter:
            return ax, True
        if code == OPPOSITE[letter]:
            return ax, False
    raise ValueError(f"no axis along {letter} in {axcodes}")


def plane_for(view: str, can: Canonical) -> Plane:
    right, bottom = VIEWS[view]
    h_axis, h_inc = _axis_towards(can.axcodes, right)
    v_axis, v_inc = _axis_towards(can.axcodes, bottom)
    (slice_axis,) = {0, 1, 2} - {h_axis, v_axis}
    # letters read back from the affine's codes: what lies at each screen edge
    right_letter = can.axcodes[h_axis] if h_inc else OPPOSITE[can.axcodes[h_axis]]
    bottom_letter = can.axcodes[v_axis] if v_inc else OPPOSITE[can.axcodes[v_axis]]
    labels = {"right": right_letter, "left": OPPOSITE[right_letter],
              "bottom": bottom_letter, "top": OPPOSITE[bottom_letter]}
    return Plane(view=view, slice_axis=slice_axis, h_axis=h_axis, v_axis=v_axis, h_flip=not h_inc,
                 v_flip=not v_inc, labels=labels, aspect=can.zooms[v_axis] / can.zooms[h_axis])


# --------------------------------------------------------------------------------------------
# display scaling


@dataclass
class Display:
    """Intensity window and anomaly-map colour scale shared by all views of a scan."""

    lo: float
    hi: float
    map_max: float
    threshold: float | None
    map_label: str

    def gray(self, img: np.ndarray) -> np.ndarray:
        return np.clip((img.astype(np.float32) - self.lo) / max(self.hi - self.lo, 1e-6), 0.0, 1.0)

    def composite(self, scan: np.ndarray | None, amap: np.ndarray) -> np.ndarray:
        """RGB image: the scan in grayscale, the anomaly map blended on top. Opacity
        ramps from 0 at half the threshold to OVERLAY_ALPHA at the threshold."""
        from matplotlib import colormaps

        base = self.gray(scan) if scan is not None else np.zeros(amap.shape, np.float32)
        rgb = np.repeat(base[..., None], 3, axis=2)
        a = np.nan_to_num(amap.astype(np.float32), nan=0.0)
        ref = self.threshold if self.threshold and self.threshold > 0 else 0.5 * self.map_max
        alpha = OVERLAY_ALPHA * np.clip((a - 0.5 * ref) / max(0.5 * ref, 1e-6), 0.0, 1.0)
        colors = colormaps[MAP_CMAP](np.clip(a / max(self.map_max, 1e-6), 0.0, 1.0))[..., :3]
        return (rgb * (1 - alpha[..., None]) + colors * alpha[..., None]).clip(0, 1)


def make_display(scan: np.ndarray | None, amap: np.ndarray, threshold: float | None, map_label: str) -> Display:
    if scan is not None:
        finite = scan[np.isfinite(scan)]
        lo, hi = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0))
    else:
        lo, hi = 0.0, 1.0
    a = amap[np.isfinite(amap)]
    top = float(np.percentile(a, 99.9)) if a.size else 1.0
    map_max = max(top, 1.5 * threshold if threshold else 0.0, 1e-6)
    return Display(lo=float(lo), hi=float(hi) if hi > lo else float(lo) + 1.0, map_max=map_max,
                   threshold=threshold, map_label=map_label)


def peak_voxel(amap: np.ndarray) -> tuple[int, int, int]:
    a = np.nan_to_num(amap, nan=-np.inf)
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(a)), a.shape))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# figures


def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100, facecolor="#111111")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path, dpi: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor=fig.get_facecolor())


def _letters(ax, labels: dict[str, str], size: int = 11) -> None:
    import matplotlib.patheffects as pe

    style = dict(color="white", fontsize=size, fontweight="bold", transform=ax.transAxes,
                 path_effects=[pe.withStroke(linewidth=2.5, foreground="black")])
    ax.text(0.02, 0.5, labels["left"], ha="left", va="center", **style)
    ax.text(0.98, 0.5, labels["right"], ha="right", va="center", **style)
    ax.text(0.5, 0.98, labels["top"], ha="center", va="top", **style)
    ax.text(0.5, 0.02, labels["bottom"], ha="center", va="bottom", **style)


def _panel(ax, img_rgb_or_gray: np.ndarray, plane: Plane, title: str | None = None, mask2d: np.ndarray | None = None,
           cross: tuple[float, float] | None = None, cmap: str | None = None, vmin=None, vmax=None,
           letter_size: int = 11):
    im = ax.imshow(img_rgb_or_gray, cmap=cmap, vmin=vmin, vmax=vmax, aspect=plane.aspect,
                   interpolation="nearest")
    if mask2d is not None and mask2d.any() and min(mask2d.shape) > 1:
        ax.contour(mask2d.astype(np.float32), levels=[0.5], colors=CONTOUR_COLOR, linewidths=1.0)
    if cross is not None:
        c, r = cross
        ax.axvline(c, color="#7CFC00", lw=0.6, alpha=0.7)
        ax.axhline(r, color="#7CFC00", lw=0.6, alpha=0.7)
    _letters(ax, plane.labels, letter_size)
    if title:
        ax.set_title(title, color="white", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    return im


def _colorbar(fig, cax, disp: Display) -> None:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    sm = ScalarMappable(norm=Normalize(0.0, disp.map_max), cmap=colormaps[MAP_CMAP])
    cb = fig.colorbar(sm, cax=cax)
    cb.set_label(disp.map_label, color="white", fontsize=9)
    cb.ax.tick_params(colors="white", labelsize=8)
    if disp.threshold is not None and 0 < disp.threshold <= disp.map_max:
        cb.ax.axhline(disp.threshold, color=CONTOUR_COLOR, lw=2)
        cb.ax.text(-0.3, disp.threshold, "thr", color=CONTOUR_COLOR, fontsize=8, ha="right", va="center",
                   transform=cb.ax.get_yaxis_transform())


def world_of(can: Canonical, ijk: Sequence[int]) -> tuple[float, float, float]:
    x = can.affine @ np.array([*ijk, 1.0])
    return float(x[0]), float(x[1]), float(x[2])


@dataclass
class ScanViews:
    files: dict[str, str]  # name → file name
    peak_ijk: tuple[int, int, int]  # in canonical array
    peak_world: tuple[float, float, float]  # RAS mm
    peak_value: float
    labels: dict[str, dict[str, str]]  # view → edge letters
    axcodes: str
    oblique: bool
    mosaic_slices: list[int]


def render_scan(out_dir: Path, amap: np.ndarray, affine: np.ndarray, scan: np.ndarray | None = None,
                mask: np.ndarray | None = None, recon: np.ndarray | None = None, threshold: float | None = None,
                map_label: str = "anomaly map", n_mosaic: int = 8) -> ScanViews:
    """Write views.png (three planes through the peak), mosaic.png (axial slices) and
    compare.png (original / reconstruction / residual) into ``out_dir``."""
    amap_c = canonical(np.asarray(amap, np.float32), affine)
    scan_c = canonical(np.asarray(scan, np.float32), affine).data if scan is not None else None
    mask_c = canonical(np.asarray(mask, np.uint8), affine).data.astype(bool) if mask is not None else None
    recon_c = canonical(np.asarray(recon, np.float32), affine).data if recon is not None else None
    a = amap_c.data
    disp = make_display(scan_c, a, threshold, map_label)
    peak = peak_voxel(a)
    files: dict[str, str] = {}
    planes = {v: plane_for(v, amap_c) for v in VIEWS}

    def comp(plane: Plane, idx: int) -> np.ndarray:
        return disp.composite(plane.extract(scan_c, idx) if scan_c is not None else None, plane.extract(a, idx))

    # three orthogonal views through the strongest anomaly
    fig = _figure(11.0, 3.9)
    gs = fig.add_gridspec(1, 4, width_ratios=[1, 1, 1, 0.05], left=0.01, right=0.93, top=0.9, bottom=0.03,
                          wspace=0.06)
    for col, view in enumerate(VIEWS):
        p = planes[view]
        idx = peak[p.slice_axis]
        ax = fig.add_subplot(gs[0, col])
        _panel(ax, comp(p, idx), p, title=view, mask2d=p.extract(mask_c, idx) if mask_c is not None else None,
               cross=p.point(peak, a.shape))
    _colorbar(fig, fig.add_subplot(gs[0, 3]), disp)
    _save(fig, out_dir / "views.png")
    files["views"] = "views.png"

    # mosaic of axial slices spanning the scan's foreground (or the mapped region)
    p = planes["axial"]
    other = tuple(i for i in range(3) if i != p.slice_axis)
    present = np.nan_to_num(a) > 0
    if scan_c is not None:
        present = present | (scan_c > disp.lo + 0.1 * (disp.hi - disp.lo))
    along = np.nonzero(present.any(axis=other))[0]
    lo, hi = (int(along.min()), int(along.max())) if along.size else (0, a.shape[p.slice_axis] - 1)
    n = max(1, min(n_mosaic, hi - lo + 1))
    slices = sorted({int(round(x)) for x in np.linspace(lo, hi, n + 2)[1:-1]} or {peak[p.slice_axis]})
    cols = min(4, len(slices))
    rows = int(np.ceil(len(slices) / cols))
    fig = _figure(2.2 * cols, 2.3 * rows)
    for i, idx in enumerate(slices):
        ax = fig.add_subplot(rows, cols, i + 1)
        ijk = [0, 0, 0]
        ijk[p.slice_axis] = idx
        z = world_of(amap_c, ijk)[2]
        _panel(ax, comp(p, idx), p, title=f"z = {z:.0f} mm", letter_size=8,
               mask2d=p.extract(mask_c, idx) if mask_c is not None else None)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.92, bottom=0.01, wspace=0.04, hspace=0.15)
    _save(fig, out_dir / "mosaic.png")
    files["mosaic"] = "mosaic.png"

    # original / reconstruction / residual, axial through the peak
    idx = peak[p.slice_axis]
    panels: list[tuple[str, np.ndarray, dict]] = []
    gray = dict(cmap="gray", vmin=disp.lo, vmax=disp.hi)
    if scan_c is not None:
        panels.append(("original", p.extract(scan_c, idx), gray))
    if recon_c is not None:
        panels.append(("reconstruction", p.extract(recon_c, idx), gray))
        if scan_c is not None:
            res = np.abs(scan_c - recon_c)
            inside = recon_c != 0
            rmax = float(np.percentile(res[inside], 99.5)) if inside.any() else 1.0
            panels.append(("residual |scan − recon|", p.extract(np.where(inside, res, 0), idx),
                           dict(cmap="magma", vmin=0, vmax=max(rmax, 1e-6))))
    panels.append(("anomaly map", p.extract(a, idx), dict(cmap=MAP_CMAP, vmin=0, vmax=disp.map_max)))
    fig = _figure(2.8 * len(panels), 3.1)
    for i, (title, img, kw) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        _panel(ax, img, p, title=title, cross=p.point(peak, a.shape), letter_size=9, **kw)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.02, wspace=0.05)
    _save(fig, out_dir / "compare.png")
    files["compare"] = "compare.png"

    return ScanViews(files=files, peak_ijk=peak, peak_world=world_of(amap_c, peak), peak_value=float(a[peak]),
                     labels={v: planes[v].labels for v in VIEWS}, axcodes="".join(amap_c.axcodes),
                     oblique=amap_c.oblique, mosaic_slices=slices)


def _light_figure(w: float, h: float):
    fig = _figure(w, h)
    fig.set_facecolor("white")
    return fig


def score_histogram(path: Path, healthy: Sequence[float], scores: Sequence[float] = (),
                    marker: float | None = None, threshold: float | None = None,
                    title: str = "healthy calibration scores") -> None:
    """Healthy score distribution, optionally this run's scores and one scan's marker."""
    fig = _light_figure(4.6, 2.4)
    ax = fig.add_subplot(1, 1, 1)
    h = np.asarray([v for v in healthy if v is not None and np.isfinite(v)], dtype=float)
    s = np.asarray([v for v in scores if v is not None and np.isfinite(v)], dtype=float)
    pool = np.concatenate([h, s, [marker] if marker is not None and np.isfinite(marker) else []])
    if pool.size:
        lo, hi = float(pool.min()), float(pool.max())
        if threshold is not None and np.isfinite(threshold):
            lo, hi = min(lo, threshold), max(hi, threshold)
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        bins = np.linspace(lo - pad, hi + pad, 25)
        if h.size:
            ax.hist(h, bins=bins, color="#4c9be8", alpha=0.8, label=f"healthy (n={h.size})")
        if s.size:
            ax.hist(s, bins=bins, color="#f0a030", alpha=0.55, label=f"this run (n={s.size})")
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="#444444", ls="--", lw=1.2, label="scan threshold")
    if marker is not None and np.isfinite(marker):
        ax.axvline(marker, color="#d62728", lw=2.2, label="this scan")
    ax.set_xlabel("scan score", fontsize=9)
    ax.set_ylabel("scans", fontsize=9)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=8)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, frameon=False)
    fig.subplots_adjust(left=0.13, right=0.97, top=0.88, bottom=0.2)
    _save(fig, path)


def curves(out_dir: Path, y_true: Sequence[int], y_score: Sequence[float]) -> dict[str, float]:
    """ROC and precision–recall curves from labels; returns AUROC / AP."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    y, s = np.asarray(y_true, int), np.asarray(y_score, float)
    fpr, tpr, _ = roc_curve(y, s)
    prec, rec, _ = precision_recall_curve(y, s)
    auroc, ap = float(roc_auc_score(y, s)), float(average_precision_score(y, s))
    for name, (x, yy, xl, yl, title, diag) in {
        "roc.png": (fpr, tpr, "false positive rate", "true positive rate", f"ROC (AUROC {auroc:.3f})", True),
        "pr.png": (rec, prec, "recall", "precision", f"precision–recall (AP {ap:.3f})", False),
    }.items():
        fig = _light_figure(3.6, 3.2)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(x, yy, color="#1f77b4", lw=2, drawstyle="steps-post" if not diag else "default")
        if diag:
            ax.plot([0, 1], [0, 1], color="#999999", ls=":", lw=1)
        else:
            ax.axhline(y.mean(), color="#999999", ls=":", lw=1)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(xl, fontsize=9)
        ax.set_ylabel(yl, fontsize=9)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
        fig.subplots_adjust(left=0.16, right=0.96, top=0.9, bottom=0.15)
        _save(fig, out_dir / name)
    return {"auroc": auroc, "average_precision": ap, "n_positive": int(y.sum()), "n_negative": int((1 - y).sum())}
