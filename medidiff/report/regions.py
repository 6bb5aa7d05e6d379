"""Coarse anatomical names for a world coordinate (RAS millimetres).

``region_name`` is the one place a location becomes words. It uses coarse
boxes in MNI coordinates (RAS+, origin near the anterior commissure): a
hemisphere and a lobe-sized region, never a gyrus or a nucleus. The report
names a cluster from its template (MNI) coordinates when the model's front end
registered the scan, and prints those coordinates beside the scanner's; for an
unregistered scan the scanner's RAS origin is only roughly at the brain's
centre, so those names are approximate.

No anatomical atlas is bundled: nilearn's wheel ships the MNI152 templates and
tissue maps but no labelled parcellation, and the atlases other PyPI packages
carry (AAL, Harvard-Oxford, ...) come with non-commercial or unclear terms.
``atlas=`` takes a lookup for a point should one with a permissive licence be
added.
"""

from __future__ import annotations

from typing import Callable, Sequence

MIDLINE_MM = 4.0

# (name, test on (|x|, y, z)); first match wins. Bounds are deliberately coarse.
_BOXES: tuple[tuple[str, Callable[[float, float, float], bool]], ...] = (
    ("cerebellum", lambda ax, y, z: y < -40 and z < -18),
    ("brainstem", lambda ax, y, z: ax < 14 and -45 <= y <= -10 and z < -8),
    # hippocampus, amygdala, parahippocampal gyrus: below the deep grey, medial to the temporal box
    ("medial temporal lobe", lambda ax, y, z: 14 <= ax < 40 and -45 <= y <= 2 and -42 <= z < -8),
    ("occipital lobe", lambda ax, y, z: y < -70),
    ("deep grey / white matter", lambda ax, y, z: ax < 30 and -35 <= y <= 20 and -12 <= z <= 22),
    ("temporal lobe", lambda ax, y, z: ax >= 30 and -70 <= y <= 20 and z < 8),
    ("parietal lobe", lambda ax, y, z: -70 <= y < -25 and z >= 8),
    ("frontal lobe", lambda ax, y, z: y >= -25),
)


def hemisphere(x_mm: float) -> str:
    """RAS+: x grows towards the patient's right."""
    if abs(x_mm) < MIDLINE_MM:
        return "midline"
    return "right" if x_mm > 0 else "left"


def region_name(world: Sequence[float], atlas: Callable[[Sequence[float]], str | None] | None = None) -> str:
    """'left frontal lobe', 'midline brainstem', … for a RAS/MNI point in mm.

    ``atlas`` (a callable returning a label for a point, or None outside it) takes
    precedence when given, e.g. a template atlas once scans are registered."""
    x, y, z = (float(v) for v in world[:3])
    side = hemisphere(x)
    name = atlas(world) if atlas is not None else None
    if not name:
        name = next((n for n, inside in _BOXES if inside(abs(x), y, z)), "outside the brain boxes")
    return f"{side} {name}"
