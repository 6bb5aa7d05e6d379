"""Why a scan got its result, in words: one sentence per scan, true for its score type.

Everything here is computed from the numbers the decision used (the scan score against
the calibrated scan threshold, the voxel threshold) and from the cluster table the page
prints, so the sentence, the table and the flag cannot disagree. What makes a scan
unlike the data the model knows is listed from measured values only: QC numbers
outside the calibration scans' range, slices thicker than the training scans', the
brain touching the edge of the scanned volume, brain outside the model's grid.

The calibration's own state is read defensively from ``run.json["calibration"]``:
``valid`` (absent = valid, as for runs made before it existed), ``invalid_reason``,
``warnings`` and ``qc_ranges`` (see :mod:`medidiff.score.qc_ranges`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

# a flagged pattern is widespread rather than focal when this share of the brain lies above
# the voxel threshold, or a smaller share scattered so that no cluster holds half of it
WIDESPREAD_FRACTION = 0.10
SCATTERED_FRACTION = 0.03
SCATTERED_LARGEST_SHARE = 0.5
EDGE_AREA_MM2 = 100.0  # brain on a face of the scanned volume over at least 1 cm²: cut off there
THICK_FACTOR = 1.25  # slices this much thicker than the thickest training scan
SIDE_WORDS = {"S": "top (superior)", "I": "bottom (inferior)", "A": "front (anterior)", "P": "back (posterior)",
              "L": "left", "R": "right"}
QC_LABELS = {
    "brain_volume_ml": ("brain volume", "{:.0f} ml", 1.0),
    "registration_similarity": ("registration similarity to the template", "{:.2f}", 1.0),
    "deformable_similarity": ("similarity after the deformable step", "{:.2f}", 1.0),
    "brain_inside_grid": ("brain inside the model grid", "{:.1f} %", 100.0),
    "warp_p95_mm": ("deformation (95th percentile)", "{:.1f} mm", 1.0),
    "voxel_size_max_mm": ("slice thickness", "{:.1f} mm", 1.0),
}


def qc_text(key: str, value: float) -> str:
    label, spec, k = QC_LABELS.get(key, (key.replace("_", " "), "{:.3g}", 1.0))
    return f"{label} {spec.format(value * k)}"


def qc_range_text(key: str, rng: dict[str, Any]) -> str:
    _, spec, k = QC_LABELS.get(key, ("", "{:.3g}", 1.0))
    return f"{spec.format(float(rng['min']) * k)} – {spec.format(float(rng['max']) * k)}"


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


@dataclass
class CalibrationState:
    """What the report needs to know about the run's calibration (absent keys: valid, as before)."""

    calibrated: bool
    valid: bool = True
    reason: str = ""
    warnings: list[str] = field(default_factory=list)
    qc_ranges: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_scans: int | None = None

    @property
    def banner(self) -> str:
        if not self.calibrated or self.valid:
            return ""
        why = f": {self.reason}" if self.reason else ""
        return (f"This run's calibration does not apply to it{why}. The thresholds were measured under other "
                "conditions, so flags, percentiles and the calibrated false-positive rate do not hold for these "
                "results.")


def _ranges(d: Any) -> dict[str, dict[str, Any]]:
    out = {}
    if isinstance(d, dict):
        for k, r in d.items():
            if isinstance(r, dict) and _num(r.get("min")) is not None and _num(r.get("max")) is not None:
                out[str(k)] = {"min": _num(r["min"]), "max": _num(r["max"]), "n": r.get("n")}
    return out


def calibration_state(run: dict[str, Any], model_calibration: dict[str, Any] | None = None) -> CalibrationState:
    """From run.json (and the model folder's calibration.json for QC ranges an older run lacks)."""
    cal = run.get("calibration") if isinstance(run.get("calibration"), dict) else {}
    calibrated = bool(run.get("calibrated")) or bool(cal)
    valid = cal.get("valid", True)
    valid = True if valid is None else bool(valid)
    reason = str(cal.get("invalid_reason") or "")
    warnings = [str(w) for w in (cal.get("warnings") or []) if str(w).strip()]
    ranges = _ranges(cal.get("qc_ranges"))
    if not ranges and model_calibration:
        same = model_calibration.get("model_hash") in (None, run.get("model_hash"))
        if same:
            ranges = _ranges(model_calibration.get("qc_ranges"))
    n = cal.get("n_scans")
    return CalibrationState(calibrated=calibrated, valid=valid, reason=reason, warnings=warnings,
                            qc_ranges=ranges, n_scans=int(n) if isinstance(n, (int, float)) else None)


def qc_outside(qc: dict[str, Any], ranges: dict[str, dict[str, Any]]) -> list[str]:
    """One warning per QC number outside the calibration scans' range."""
    out = []
    for key, rng in ranges.items():
        v = _num(qc.get(key))
        if v is None:
            continue
        lo, hi = float(rng["min"]), float(rng["max"])
        if v < lo or v > hi:
            n = rng.get("n")
            who = f"the {n} calibration scans" if n else "the calibration scans"
            out.append(f"{qc_text(key, v)} is {'below' if v < lo else 'above'} the range of {who} "
                       f"({qc_range_text(key, rng)})")
    return out


def voxel_sizes(affine: Any) -> tuple[float, float, float] | None:
    if affine is None:
        return None
    try:
        a = np.asarray(affine, dtype=np.float64)[:3, :3]
    except (TypeError, ValueError, IndexError):
        return None
    if a.shape != (3, 3):
        return None
    z = np.linalg.norm(a, axis=0)
    return float(z[0]), float(z[1]), float(z[2])


def thick_slices(affine: Any, training_max_mm: float | None) -> str | None:
    z = voxel_sizes(affine)
    if z is None or training_max_mm is None or training_max_mm <= 0:
        return None
    thick = max(z)
    if thick > THICK_FACTOR * training_max_mm:
        return (f"{thick:.1f} mm slices (voxels {z[0]:.1f} × {z[1]:.1f} × {z[2]:.1f} mm); the model's training "
                f"scans had voxels of at most {training_max_mm:g} mm")
    return None


def brain_at_edge(brain: np.ndarray, affine: np.ndarray) -> str | None:
    """Where the brain mask touches a face of the scanned volume over at least EDGE_AREA_MM2."""
    import nibabel as nib

    b = np.asarray(brain) > 0
    if b.ndim != 3 or not b.any():
        return None
    z = voxel_sizes(affine) or (1.0, 1.0, 1.0)
    codes = nib.aff2axcodes(np.asarray(affine, dtype=np.float64))
    opposite = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
    sides = []
    for ax in range(3):
        face_mm2 = float(np.prod([z[i] for i in range(3) if i != ax]))
        for end, letter in ((0, opposite[codes[ax]]), (-1, codes[ax])):
            n = int(np.take(b, end, axis=ax).sum())
            if n * face_mm2 >= EDGE_AREA_MM2:
                sides.append((n * face_mm2, letter))
    if not sides:
        return None
    words = [SIDE_WORDS[s] for _, s in sorted(sides, reverse=True)]
    area = sum(a for a, _ in sides) / 100.0
    return (f"the brain reaches the {' and '.join(words)} edge of the scanned volume ({area:.0f} cm² of brain on "
            "the boundary): part of it is probably cut off")


def outside_grid(qc: dict[str, Any]) -> str | None:
    v = _num(qc.get("brain_inside_grid"))
    if v is not None and v < 0.99:
        return f"{100 * (1 - v):.1f} % of the brain lies outside the model's grid and is not scored"
    return None


# --------------------------------------------------------------------------------------------
# the sentence


def score_kind(score_config: dict[str, Any], voxel_threshold: float | None) -> str:
    kind = str((score_config or {}).get("score", "supra_volume"))
    if kind in ("supra_volume", "largest_cluster") and voxel_threshold is None:
        return "topk_mean"  # uncalibrated runs score the top-k mean (see PostProcessor)
    return kind


def cm3(mm3: float | None) -> str:
    """mm³ as cm³ with enough digits to tell small volumes apart, never in e-notation."""
    if mm3 is None:
        return "—"
    v = mm3 / 1000.0
    if v == 0:
        return "0"
    return f"{v:.1f}" if abs(v) >= 1 else (f"{v:.2f}" if abs(v) >= 0.01 else f"{v:.3f}")


def percent(share: float) -> str:
    """A share as a percentage: one decimal from 1 %, two significant digits below."""
    v = 100.0 * share
    return f"{v:.1f}" if v >= 1 or v == 0 else f"{v:.2g}"


def coords(p: Sequence[float] | None) -> str:
    return "—" if p is None else "(" + ", ".join(f"{v:.0f}" for v in p) + ")"


def what_score(kind: str, score_config: dict[str, Any]) -> str:
    cfg = score_config or {}
    if kind == "topk_mean":
        return f"mean of the top {100 * float(cfg.get('topk_fraction', 0.005)):g} % of map values"
    if kind == "percentile":
        return f"{float(cfg.get('percentile', 99.9)):g}th percentile of the map"
    return kind.replace("_", " ")


def pattern(clusters: Any, brain_mm3: float | None) -> str | None:
    """'focal' or 'widespread' for a scan with voxels above the threshold; None without any."""
    if clusters is None:
        return None
    total = clusters.total_mm3
    if total <= 0:
        return None
    largest = clusters.largest.size_mm3 if clusters.largest else 0.0
    share = largest / total
    if brain_mm3:
        frac = total / brain_mm3
        if frac >= WIDESPREAD_FRACTION or (frac >= SCATTERED_FRACTION and share < SCATTERED_LARGEST_SHARE):
            return "widespread"
        return "focal"
    return "widespread" if clusters.n_clusters >= 10 and share < SCATTERED_LARGEST_SHARE else "focal"


@dataclass
class Facts:
    """The numbers one scan's sentence is built from."""

    status: str
    kind: str
    score_config: dict[str, Any]
    score: float | None
    flag: bool | None
    scan_threshold: float | None
    voxel_threshold: float | None
    cal: CalibrationState
    clusters: Any = None  # clusters.ClusterStats on the scan's grid
    brain_mm3: float | None = None
    unlike: list[str] = field(default_factory=list)
    failure: str = ""


def _where(c: Any) -> str:
    if c.centroid_template is not None:
        return (f"at template (MNI) {coords(c.centroid_template)} mm, scanner {coords(c.centroid_world)} mm: "
                f"{c.region} (coarse name)")
    return f"at scanner {coords(c.centroid_world)} mm: {c.region} (coarse, approximate name)"


def sentence(f: Facts) -> str:
    """One paragraph: the decision and its numbers, the pattern, what is unusual about the scan."""
    if f.status != "ok":
        return f"Not scored: {f.failure or 'the scan failed'}."
    volume = f.kind in ("supra_volume", "largest_cluster")
    vthr = f"{f.voxel_threshold:.3g} z" if f.voxel_threshold is not None else ""
    if f.kind == "largest_cluster":
        measured = (f"its largest cluster of voxels above the voxel threshold ({vthr}) measures {cm3(f.score)} cm³ "
                    "on the model's grid")
    elif f.kind == "supra_volume":
        measured = f"{cm3(f.score)} cm³ of brain lies above the voxel threshold ({vthr}) on the model's grid"
    else:
        measured = f"its score is {f.score:.3g} ({what_score(f.kind, f.score_config)})" if f.score is not None else ""
    thr = f.scan_threshold
    thr_text = (f"{cm3(thr)} cm³" if volume else f"{thr:.3g}") if thr is not None else ""
    if not f.cal.calibrated or thr is None:
        head = f"Not calibrated, so no flag: {measured}."
    elif not f.cal.valid:
        head = (f"No valid flag (the calibration does not apply to this run): {measured}, against a scan "
                f"threshold of {thr_text} that was measured under other conditions.")
    elif f.flag:
        head = f"Flagged: {measured}, above the scan threshold of {thr_text}."
    else:
        head = f"Not flagged: {measured}, {'below' if f.score is not None and f.score <= thr else 'against'} the scan threshold of {thr_text}."
    parts = [head]
    c = f.clusters
    if c is not None:
        pat = pattern(c, f.brain_mm3)
        frac = f" ({percent(c.total_mm3 / f.brain_mm3)} % of the brain)" if f.brain_mm3 else ""
        if c.largest is None:
            if c.mask_mm3 > 0:
                parts.append(f"On this scan's grid {cm3(c.mask_mm3)} cm³ is marked, but resampling smoothed every "
                             "value below the voxel threshold, so no cluster is listed.")
            elif f.score:
                parts.append("On this scan's grid no voxel lies above the voxel threshold (resampling smoothed "
                             "them below it).")
            else:
                parts.append("No voxel lies above the voxel threshold.")
        elif pat == "widespread":
            parts.append(f"Widespread, not focal: {cm3(c.total_mm3)} cm³ of this scan's grid lies above the voxel "
                         f"threshold{frac}, in {c.n_clusters} cluster{'s' if c.n_clusters != 1 else ''}; the "
                         f"largest, cluster 1 below, is {cm3(c.largest.size_mm3)} cm³ on this scan's grid. A pattern "
                         "this wide points to a scan unlike the data the model knows rather than to one lesion.")
        else:
            more = (f", {c.n_clusters - 1} smaller cluster{'s' if c.n_clusters != 2 else ''} besides"
                    if c.n_clusters > 1 else "")
            parts.append(f"Focal: cluster 1 below, {cm3(c.largest.size_mm3)} cm³ on this scan's grid, "
                         f"{_where(c.largest)}{more}; {cm3(c.total_mm3)} cm³ above the threshold in all{frac}.")
    if f.unlike:
        parts.append("Unlike the data the model knows: " + "; ".join(f.unlike) + ".")
    return " ".join(parts)


# --------------------------------------------------------------------------------------------
# failed scans: the value that failed and its limit


@dataclass
class Check:
    what: str
    value: str
    limit: str


_FAILURES = (
    (re.compile(r"brain volume (?P<v>[\d.]+) ml outside the plausible adult range (?P<lo>[\d.]+)-(?P<hi>[\d.]+) ml"),
     lambda m: Check("brain volume", f"{m['v']} ml", f"{m['lo']}–{m['hi']} ml")),
    (re.compile(r"registration failed: similarity (?P<v>[-\d.naif]+) below (?P<lo>[\d.]+)"),
     lambda m: Check("registration similarity to the template", m["v"], f"at least {m['lo']}")),
    (re.compile(r"only (?P<v>[\d.]+)% of the brain lies inside the model grid \(need (?P<lo>[\d.]+)%\)"),
     lambda m: Check("brain inside the model grid", f"{m['v']} %", f"at least {m['lo']} %")),
    (re.compile(r"no brain found"), lambda m: Check("brain volume", "0 ml (no brain found)", "a brain")),
    (re.compile(r"constant image \(every voxel is (?P<v>[^)]+)\)"),
     lambda m: Check("image contrast", f"every voxel is {m['v']}", "a non-constant image")),
    (re.compile(r"no foreground found to score"),
     lambda m: Check("foreground after preprocessing", "none", "some foreground")),
)


def failure_checks(error: str) -> list[Check]:
    out = []
    for rx, make in _FAILURES:
        m = rx.search(error or "")
        if m:
            out.append(make(m))
    return out


def short_error(error: str, source: str = "", scan_id: str = "") -> str:
    """The failure reason without the path (or scan id) it starts with."""
    text = (error or "").strip()
    for prefix in (source, scan_id):
        if prefix and text.startswith(prefix + ": "):
            return text[len(prefix) + 2:]
    head, sep, rest = text.partition(": ")
    if sep and ("/" in head or head.endswith((".nii", ".nii.gz", ".dcm"))):
        return rest
    return text
