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
# --------------------------------------------------------------------------------------------
# display scaling


@dataclass
class ColourScale:
    """The anomaly-map colour scale, one for the whole run so a colour means the same
    value on every page. Values above ``vmax`` are drawn in OVER_COLOR (the colourbar's
    extend arrow), values at or below 0 are transparent."""

    vmax: float
    threshold: float | None
    label: str

    @property
    def ref(self) -> float:
        """Opacity reaches OVERLAY_ALPHA here: the voxel threshold, else half the scale."""
        return self.threshold if self.threshold and self.threshold > 0 else 0.5 * self.vmax

    def colours(self, a: np.ndarray) -> np.ndarray:
        from matplotlib import colormaps

        rgb = colormaps[MAP_CMAP](np.clip(a / self.vmax, 0.0, 1.0))[..., :3]
        rgb[a > self.vmax] = OVER_RGB
        return rgb

    def alpha(self, a: np.ndarray) -> np.ndarray:
        """0 below half the reference value, ramping to OVERLAY_ALPHA at it."""
        ref = self.ref
        return OVERLAY_ALPHA * np.clip((a - 0.5 * ref) / max(0.5 * ref, 1e-6), 0.0, 1.0)

    def lut(self) -> list[str]:
        """The 256-entry colour table as hex, shared with the page's slice scroller."""
        from matplotlib import colormaps
        from matplotlib.colors import to_hex

        cmap = colormaps[MAP_CMAP]
        return [to_hex(cmap(i / 255.0)) for i in range(256)]


OVER_COLOR = "#ffffff"
OVER_RGB = (1.0, 1.0, 1.0)
GT_COLOR = "#ff3df5"
CROSS_COLOR = "#7CFC00"


def nice_ceil(v: float) -> float:
    """Smallest of 1, 2, 2.5, 5 × 10^k that is ≥ v: a colour-scale top a reader can read."""
    if not np.isfinite(v) or v <= 0:
        return 1.0
    e = 10.0 ** np.floor(np.log10(v))
    return float(next(m * e for m in (1, 2, 2.5, 5, 10) if m * e >= v * (1 - 1e-9)))


def run_scale(threshold: float | None, map_label: str, map_p999: Sequence[float] = ()) -> ColourScale:
    """Twice the voxel threshold when calibrated (the threshold sits mid-scale), else the
    largest per-scan 99.9th percentile of the run; rounded up to a readable number."""
    if threshold is not None and threshold > 0:
        top = 2.0 * threshold
    else:
        vals = [v for v in map_p999 if v is not None and np.isfinite(v) and v > 0]
        top = max(vals) if vals else 1.0
    return ColourScale(vmax=nice_ceil(top), threshold=threshold, label=map_label)


@dataclass
class Window:
    """Grayscale window of one scan's intensities (0.5th–99.5th percentile)."""

    lo: float
    hi: float

    def gray(self, img: np.ndarray) -> np.ndarray:
        return np.clip((img.astype(np.float32) - self.lo) / max(self.hi - self.lo, 1e-6), 0.0, 1.0)


def make_window(scan: np.ndarray | None) -> Window:
    if scan is None:
        return Window(0.0, 1.0)
    finite = scan[np.isfinite(scan)]
    lo, hi = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0))
    return Window(float(lo), float(hi) if hi > lo else float(lo) + 1.0)


def composite(scan: np.ndarray | None, amap: np.ndarray, window: Window, scale: ColourScale) -> np.ndarray:
    """RGB image: the scan in grayscale, the anomaly map blended on top."""
    base = window.gray(scan) if scan is not None else np.zeros(amap.shape, np.float32)
    rgb = np.repeat(base[..., None], 3, axis=2)
    a = np.nan_to_num(amap.astype(np.float32), nan=0.0)
    alpha = scale.alpha(a)[..., None]
    return (rgb * (1 - alpha) + scale.colours(a) * alpha).clip(0, 1)


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


def _contour(ax, mask2d: np.ndarray | None, color: str, lw: float = 1.0) -> None:
    if mask2d is not None and mask2d.any() and min(mask2d.shape) > 1:
        ax.contour(mask2d.astype(np.float32), levels=[0.5], colors=color, linewidths=lw)


def _panel(ax, img_rgb_or_gray: np.ndarray, plane: Plane, title: str | None = None, mask2d: np.ndarray | None = None,
           gt2d: np.ndarray | None = None, cross: tuple[float, float] | None = None, cmap: str | None = None,
           vmin=None, vmax=None, letter_size: int = 11):
    im = ax.imshow(img_rgb_or_gray, cmap=cmap, vmin=vmin, vmax=vmax, aspect=plane.aspect,
                   interpolation="nearest")
    _contour(ax, mask2d, CONTOUR_COLOR)
    _contour(ax, gt2d, GT_COLOR, lw=1.3)
    if cross is not None:
        c, r = cross
        ax.axvline(c, color=CROSS_COLOR, lw=0.6, alpha=0.7)
        ax.axhline(r, color=CROSS_COLOR, lw=0.6, alpha=0.7)
    _letters(ax, plane.labels, letter_size)
    if title:
        ax.set_title(title, color="white", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    return im


def render_colourbar(path: Path, scale: ColourScale) -> None:
    """The run's one colourbar: horizontal, extend arrow for clipped values, the voxel
    threshold marked and labelled above the bar (clear of any orientation letter)."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig = _figure(6.0, 0.95)
    cax = fig.add_axes([0.04, 0.42, 0.86, 0.2])
    cmap = colormaps[MAP_CMAP].with_extremes(over=OVER_COLOR)
    cb = fig.colorbar(ScalarMappable(norm=Normalize(0.0, scale.vmax), cmap=cmap), cax=cax,
                      orientation="horizontal", extend="max")
    cb.set_label(scale.label, color="white", fontsize=9, labelpad=2)
    cb.ax.tick_params(colors="white", labelsize=8)
    cb.outline.set_edgecolor("#888888")
    if scale.threshold is not None and 0 < scale.threshold <= scale.vmax:
        cb.ax.axvline(scale.threshold, color=CONTOUR_COLOR, lw=2)
        cb.ax.text(scale.threshold, 1.25, f"voxel threshold {scale.threshold:.3g}", color=CONTOUR_COLOR,
                   fontsize=8, ha="center", va="bottom", transform=cb.ax.get_xaxis_transform())
    _save(fig, path)


def world_of(can: Canonical, ijk: Sequence[float]) -> tuple[float, float, float]:
    x = can.affine @ np.array([*ijk, 1.0])
    return float(x[0]), float(x[1]), float(x[2])


def slice_height(prep: "Prepared", idx: int, point: Sequence[int] | None = None) -> float:
    """Superior coordinate (mm) of axial slice ``idx``: at ``point`` (the peak or cluster the
    slice was chosen for) when given, else at the slice's centre. On an oblique scan the
    height varies across the slice, so it is read where the reader looks."""
    p = prep.planes["axial"]
    shape = prep.amap.data.shape
    ijk = [(n - 1) / 2.0 for n in shape] if point is None else [float(v) for v in point]
    ijk[p.slice_axis] = float(idx)
    return world_of(prep.amap, ijk)[2]


@dataclass
class Prepared:
    """One scan's volumes in canonical orientation, with everything every view shares."""

    amap: Canonical
    scan: np.ndarray | None
    mask: np.ndarray | None
    gt: np.ndarray | None
    recon: np.ndarray | None
    window: Window
    peak: tuple[int, int, int]
    planes: dict[str, Plane]

    def ijk_of(self, world: Sequence[float]) -> tuple[int, int, int]:
        v = np.linalg.solve(self.amap.affine, np.array([*world[:3], 1.0]))[:3]
        return tuple(int(np.clip(round(float(x)), 0, n - 1)) for x, n in zip(v, self.amap.data.shape))  # type: ignore


def prepare(amap: np.ndarray, affine: np.ndarray, scan: np.ndarray | None = None, mask: np.ndarray | None = None,
            gt: np.ndarray | None = None, recon: np.ndarray | None = None) -> Prepared:
    amap_c = canonical(np.asarray(amap, np.float32), affine)
    can = lambda x, dt: canonical(np.asarray(x, dt), affine).data if x is not None else None  # noqa: E731
    scan_c = can(scan, np.float32)
    mask_c, gt_c = can(mask, np.uint8), can(gt, np.uint8)
    return Prepared(amap=amap_c, scan=scan_c, mask=mask_c.astype(bool) if mask_c is not None else None,
                    gt=gt_c.astype(bool) if gt_c is not None else None, recon=can(recon, np.float32),
                    window=make_window(scan_c), peak=peak_voxel(amap_c.data),
                    planes={v: plane_for(v, amap_c) for v in VIEWS})


@dataclass
class ScanViews:
    files: dict[str, str]  # name → file name
    peak_ijk: tuple[int, int, int]  # in canonical array
    peak_world: tuple[float, float, float]  # RAS mm
    peak_value: float
    labels: dict[str, dict[str, str]]  # view → edge letters
    axcodes: str
    oblique: bool
    mosaic_slices: list[tuple[int, str]]  # (axial index, why it was chosen)
    prepared: Prepared | None = None


def mosaic_slices(prep: Prepared, cluster_worlds: Sequence[Sequence[float]], minimum: int = 4,
                  limit: int = 8) -> list[tuple[int, str]]:
    """Axial slices through the peak and through each cluster (largest first), topped up
    with evenly spaced slices across the mapped region when there are few clusters."""
    p = prep.planes["axial"]
    chosen: dict[int, str] = {prep.peak[p.slice_axis]: "peak"}
    for k, w in enumerate(cluster_worlds):
        chosen.setdefault(prep.ijk_of(w)[p.slice_axis], f"cluster {k + 1}")
        if len(chosen) >= limit:
            break
    if len(chosen) < minimum:
        a = prep.amap.data
        other = tuple(i for i in range(3) if i != p.slice_axis)
        present = np.nan_to_num(a) > 0
        if prep.scan is not None:
            present = present | (prep.scan > prep.window.lo + 0.1 * (prep.window.hi - prep.window.lo))
        along = np.nonzero(present.any(axis=other))[0]
        lo, hi = (int(along.min()), int(along.max())) if along.size else (0, a.shape[p.slice_axis] - 1)
        for x in np.linspace(lo, hi, minimum + 2)[1:-1]:
            if len(chosen) >= minimum:
                break
            chosen.setdefault(int(round(x)), "")
    return sorted(chosen.items())


def render_scan(out_dir: Path, amap: np.ndarray, affine: np.ndarray, scale: ColourScale,
                scan: np.ndarray | None = None, mask: np.ndarray | None = None, gt: np.ndarray | None = None,
                recon: np.ndarray | None = None, cluster_worlds: Sequence[Sequence[float]] = ()) -> ScanViews:
    """Write views.png (three planes through the peak), mosaic.png (axial slices through
    the peak and each cluster), compare.png (original / reconstruction / residual / map)
    and thumb.png (index thumbnail) into ``out_dir``; every colour on ``scale``."""
    prep = prepare(amap, affine, scan=scan, mask=mask, gt=gt, recon=recon)
    a, peak, planes = prep.amap.data, prep.peak, prep.planes
    files: dict[str, str] = {}

    def comp(plane: Plane, idx: int) -> np.ndarray:
        return composite(plane.extract(prep.scan, idx) if prep.scan is not None else None, plane.extract(a, idx),
                         prep.window, scale)

    def outlines(plane: Plane, idx: int) -> dict[str, np.ndarray | None]:
        return {k: plane.extract(m, idx) if m is not None else None for k, m in (("mask2d", prep.mask),
                                                                                  ("gt2d", prep.gt))}

    fig = _figure(11.0, 3.7)
    for col, view in enumerate(VIEWS):
        p = planes[view]
        idx = peak[p.slice_axis]
        ax = fig.add_axes([0.005 + col / 3, 0.01, 1 / 3 - 0.01, 0.9])
        _panel(ax, comp(p, idx), p, title=view, cross=p.point(peak, a.shape), **outlines(p, idx))
    _save(fig, out_dir / "views.png")
    files["views"] = "views.png"

    p = planes["axial"]
    slices = mosaic_slices(prep, cluster_worlds)
    # the point each titled slice was chosen for: its height is read there (oblique scans tilt)
    slice_points: dict[int, tuple[int, int, int]] = {}
    for ijk in [peak, *(prep.ijk_of(w) for w in cluster_worlds)]:
        slice_points.setdefault(ijk[p.slice_axis], ijk)
    cols = min(4, len(slices))
    rows = int(np.ceil(len(slices) / cols))
    fig = _figure(2.2 * cols, 2.3 * rows)
    for i, (idx, why) in enumerate(slices):
        ax = fig.add_subplot(rows, cols, i + 1)
        z = slice_height(prep, idx, slice_points.get(idx))
        approx = "≈ " if prep.amap.oblique else "= "
        _panel(ax, comp(p, idx), p, title=f"z {approx}{z:.0f} mm{f' · {why}' if why else ''}", letter_size=8,
               **outlines(p, idx))
    fig.subplots_adjust(left=0.01, right=0.99, top=0.92, bottom=0.01, wspace=0.04, hspace=0.15)
    _save(fig, out_dir / "mosaic.png")
    files["mosaic"] = "mosaic.png"

    _render_compare(out_dir / "compare.png", prep, scale)
    files["compare"] = "compare.png"
    focus = prep.ijk_of(cluster_worlds[0]) if cluster_worlds else peak
    render_thumbnail(out_dir / "thumb.png", comp(p, focus[p.slice_axis]),
                     p.extract(prep.mask, focus[p.slice_axis]) if prep.mask is not None else None, p.aspect)
    files["thumb"] = "thumb.png"
    return ScanViews(files=files, peak_ijk=peak, peak_world=world_of(prep.amap, peak), peak_value=float(a[peak]),
                     labels={v: planes[v].labels for v in VIEWS}, axcodes="".join(prep.amap.axcodes),
                     oblique=prep.amap.oblique, mosaic_slices=slices, prepared=prep)


def _render_compare(path: Path, prep: Prepared, scale: ColourScale) -> None:
    """Original / reconstruction / residual / anomaly map, axial through the peak; the
    threshold contour on every panel so the panels can be compared region by region."""
    p = prep.planes["axial"]
    idx = prep.peak[p.slice_axis]
    panels: list[tuple[str, np.ndarray, dict]] = []
    gray = dict(cmap="gray", vmin=prep.window.lo, vmax=prep.window.hi)
    if prep.scan is not None:
        panels.append(("original", p.extract(prep.scan, idx), gray))
    if prep.recon is not None:
        panels.append(("reconstruction (same window)", p.extract(prep.recon, idx), gray))
        if prep.scan is not None:
            res = np.abs(prep.scan - prep.recon)
            inside = prep.recon != 0
            rmax = float(np.percentile(res[inside], 99.5)) if inside.any() else 1.0
            panels.append((f"|scan − recon| (0–{rmax:.3g})", p.extract(np.where(inside, res, 0), idx),
                           dict(cmap="magma", vmin=0, vmax=max(rmax, 1e-6))))
    from matplotlib import colormaps

    panels.append(("anomaly map (run scale)", p.extract(prep.amap.data, idx),
                   dict(cmap=colormaps[MAP_CMAP].with_extremes(over=OVER_COLOR), vmin=0, vmax=scale.vmax)))
    fig = _figure(2.8 * len(panels), 3.1)
    m2 = p.extract(prep.mask, idx) if prep.mask is not None else None
    for i, (title, img, kw) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        _panel(ax, img, p, title=title, cross=p.point(prep.peak, prep.amap.data.shape), letter_size=9, mask2d=m2,
               **kw)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.02, wspace=0.05)
    _save(fig, path)


def thumbnail_shape(h: int, w: int, aspect: float, size: int) -> tuple[int, int]:
    """(rows, cols) of a thumbnail whose longest side is ``size`` px and whose proportions are
    the slice's physical ones (``aspect`` = pixel height / width in mm)."""
    tall, wide = h * aspect, float(w)
    k = size / max(tall, wide)
    return max(1, int(round(tall * k))), max(1, int(round(wide * k)))


def render_thumbnail(path: Path, rgb: np.ndarray, mask2d: np.ndarray | None, aspect: float, size: int = 96,
                     colour: str = CONTOUR_COLOR) -> None:
    """A small axial composite for the index row, the mask outline in the contour colour;
    resampled (nearest) to the slice's physical proportions, longest side ``size`` px."""
    from matplotlib.colors import to_rgb
    from matplotlib.image import imsave
    from scipy import ndimage

    img = rgb.copy()
    if mask2d is not None and mask2d.any():
        edge = mask2d & ~ndimage.binary_erosion(mask2d)
        img[edge] = to_rgb(colour)
    h, w = img.shape[:2]
    rows, cols = thumbnail_shape(h, w, aspect, size)
    ri = np.minimum((np.arange(rows) + 0.5) * h / rows, h - 1).astype(int)
    ci = np.minimum((np.arange(cols) + 0.5) * w / cols, w - 1).astype(int)
    img = img[ri][:, ci]
    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(path, img)


BRAIN_COLOR = "#ffd400"


def render_failed(out_dir: Path, scan: np.ndarray, affine: np.ndarray, brain: np.ndarray | None) -> dict[str, object]:
    """A failed scan: axial, coronal and sagittal planes through the centre of its brain mask
    (else of the volume) with the mask outlined, plus an index thumbnail. Returns the files
    and the planes' centre (scanner RAS mm)."""
    can = canonical(np.asarray(scan, np.float32), affine)
    b = canonical(np.asarray(brain, np.uint8), affine).data.astype(bool) if brain is not None else None
    window = make_window(can.data)
    if b is not None and b.any():
        centre = tuple(int(round(v)) for v in np.argwhere(b).mean(axis=0))
    else:
        centre = tuple(n // 2 for n in can.data.shape)
    planes = {v: plane_for(v, can) for v in VIEWS}
    fig = _figure(11.0, 3.7)
    for col, view in enumerate(VIEWS):
        p = planes[view]
        idx = centre[p.slice_axis]
        ax = fig.add_axes([0.005 + col / 3, 0.01, 1 / 3 - 0.01, 0.9])
        _panel(ax, window.gray(p.extract(can.data, idx)), p, title=view, cmap="gray", vmin=0, vmax=1)
        if b is not None:
            _contour(ax, p.extract(b, idx), BRAIN_COLOR, lw=1.3)
    _save(fig, out_dir / "failed.png")
    p = planes["axial"]
    idx = centre[p.slice_axis]
    gray = window.gray(p.extract(can.data, idx))
    render_thumbnail(out_dir / "thumb.png", np.repeat(gray[..., None], 3, axis=2),
                     p.extract(b, idx) if b is not None else None, p.aspect, colour=BRAIN_COLOR)
    zooms = np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0)
    return {"image": "failed.png", "thumb": "thumb.png", "centre_world": world_of(can, centre),
            "voxel_mm": " × ".join(f"{z:.2f}" for z in zooms),
            "axcodes": "".join(can.axcodes), "colour": BRAIN_COLOR}


def _light_figure(w: float, h: float):
    fig = _figure(w, h)
    fig.set_facecolor("white")
    return fig


def score_histogram(path: Path, healthy: Sequence[float], scores: Sequence[float] = (),
                    marker: float | None = None, threshold: float | None = None,
                    title: str = "healthy calibration scores", xlabel: str = "scan score") -> None:
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
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel("number of scans", fontsize=9)
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
