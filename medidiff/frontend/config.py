"""Front-end settings, stored in ``model.json`` under ``preprocess.frontend``.

A model trained through the front end must be scored through the same front end: the
settings and the template hash are part of the model, and scoring refuses a model whose
front end it cannot reproduce (unknown method, missing package, different template).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

BRAIN_METHODS = ("auto", "deepbet", "skull_stripped", "ct_hu")
BIAS_METHODS = ("n4", "none")
REGISTRATIONS = ("affine", "deformable", "rigid", "none")


@dataclass
class FrontEndConfig:
    # auto: ct_hu for CT; for MRI skull_stripped when the input already is a brain on a zero
    # background (recognised, never stripped twice), deepbet otherwise.
    # deepbet: whole-head MRI; skull_stripped: foreground by Otsu; ct_hu: brain from Hounsfield units
    brain: str = "auto"
    bias: str = "n4"  # N4 inside the brain mask (MRI only; ignored for CT)
    n4_iterations: tuple[int, ...] = (30, 20, 10)  # per fitting level, on a 4 mm copy
    # affine: rigid then 12-parameter affine to the template (Mattes MI, multi-resolution);
    # deformable: the affine, then a coarse B-spline (control points deformable_spacing_mm apart) that
    # moves ventricles and cortex onto the template's; none: the input is already in template (MNI) space
    registration: str = "affine"
    deformable_spacing_mm: float = 32.0
    template: str = "mni152_2009a"
    # quality control: a scan outside these limits is reported as failed, never scored
    min_brain_ml: float = 900.0
    max_brain_ml: float = 2100.0
    # NCC of the registered brain with the template inside the template brain: real healthy T1s measured
    # 0.66-0.70, skull-stripped template warps 0.92-0.95; a phantom or a failed registration falls far below
    min_similarity: float = 0.45
    min_inside_fraction: float = 0.97  # share of the scan's brain that lands inside the model grid

    def __post_init__(self) -> None:
        errs = []
        for name, allowed in (("brain", BRAIN_METHODS), ("bias", BIAS_METHODS), ("registration", REGISTRATIONS)):
            if getattr(self, name) not in allowed:
                errs.append(f"preprocess.frontend.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 0 < self.min_brain_ml < self.max_brain_ml:
            errs.append("preprocess.frontend.min_brain_ml must be positive and below max_brain_ml")
        if errs:
            raise ValueError("; ".join(errs))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "FrontEndConfig":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown preprocess.frontend option(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**d)


def fingerprint(cfg: FrontEndConfig) -> dict[str, Any]:
    """What a model records about its front end: settings, template hash, library versions."""
    from importlib.metadata import PackageNotFoundError, version

    from .template import load_template

    def ver(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    return {"settings": cfg.to_dict(), "template_sha256": load_template(cfg.template).sha256,
            "deepbet": ver("deepbet"), "SimpleITK": ver("SimpleITK")}


def check_reproducible(recorded: dict[str, Any] | None, cfg: FrontEndConfig) -> list[str]:
    """Refuse (raise) a model whose front end this installation cannot reproduce; return warnings.

    Template content must match exactly (it defines the model grid); the libraries must be
    importable; a different library version is only a warning (masks/registrations may move
    slightly)."""
    if recorded is None:
        raise ValueError("model.json records no front end (preprocess.space=template needs one); retrain "
                         "or re-save the model with this medidiff")
    now = fingerprint(cfg)
    if recorded.get("template_sha256") != now["template_sha256"]:
        raise ValueError(f"the model's template ({cfg.template}) differs from the one shipped with this medidiff "
                         "(hash mismatch): scoring would use another template space; use the medidiff version "
                         "the model was trained with")
    warnings = []
    for lib in ("deepbet", "SimpleITK"):
        if now[lib] is None:
            raise ValueError(f"the model's front end needs {lib}, which is not installed: pip install {lib}")
        if recorded.get(lib) and recorded[lib] != now[lib]:
            warnings.append(f"front end: {lib} {now[lib]} installed, model made with {recorded[lib]}")
    return warnings
