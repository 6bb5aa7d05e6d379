"""`medidiff synthesize`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import user_errors


def _ints(values: List[str]) -> list[int]:
    out: list[int] = []
    for v in values:
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part[1:]:
                a, b = part.split("-", 1) if not part.startswith("-") else (part, part)
                out.extend(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
    return out


def synthesize(
    model: Path = typer.Option(..., "--model", help="Trained model folder: a `medidiff train` run or a latent-diffusion "
                               "generator (pipelines/train_generator.py)."),
    out: Path = typer.Option(..., "--out", help="Output folder (resumable: a re-run makes only missing samples)."),
    n: Optional[int] = typer.Option(None, "--n", help="Number of samples (indices 0..n-1, seed = --seed + index)."),
    index: List[str] = typer.Option([], "--index", help="Only these indices, e.g. 3 or 0,5-7 (repeatable)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Explicit seeds, one per index, e.g. 11,42,7."),
    seed: int = typer.Option(0, "--seed", help="Base seed: sample i uses seed + i."),
    sampler: str = typer.Option("auto", "--sampler", help="auto (the model's own) | ddim (deterministic, eta=0) | "
                                "ddpm (ancestral, eta=1) | rflow (rectified-flow latent generators)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps (default: ddim 50, ddpm 250; latent "
                                        "generators: their latent.default_steps)."),
    spacing: str = typer.Option("quadratic", "--spacing", help="Timestep spacing: quadratic (more steps at low "
                                "noise) | linear."),
    temperature: float = typer.Option(1.0, "--temperature", help="Scale of initial and stochastic noise "
                                      "(<1: higher fidelity, less diversity)."),
    eta: Optional[float] = typer.Option(None, "--eta", help="DDIM stochasticity 0..1 (default: 0 ddim, 1 ddpm)."),
    clip_x0: Optional[str] = typer.Option(None, "--clip-x0", help="Clamp x0 estimates to LOW,HIGH model units, or "
                                          "'none' (default: 0,2 MRI; 0,1 CT)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Samples denoised together."),
    precision: str = typer.Option("auto", "--precision", help="auto | fp32 | bf16 | fp16"),
    dicom: bool = typer.Option(False, "--dicom", help="Also write a DICOM series per sample (derived, synthetic identity)."),
    with_anomalies: bool = typer.Option(False, "--with-anomalies", help="Insert synthetic anomalies; write masks and "
                                        "labels.csv for `medidiff evaluate`."),
    anomaly_fraction: float = typer.Option(0.5, "--anomaly-fraction", help="Share of samples with anomalies."),
    anomaly_kinds: Optional[str] = typer.Option(None, "--anomaly-kinds", help="Comma list of kinds "
                                                "(hypo,hyper,ring,texture,wm_cluster; default all)."),
    anomaly_count: Optional[int] = typer.Option(None, "--anomaly-count", help="Anomalies per anomalous scan "
                                                "(default random 1-3)."),
    split: str = typer.Option("val", "--split", help="Split name written in labels.csv."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Real healthy scans for MMD / histogram distance."),
    train_data: Optional[Path] = typer.Option(None, "--train-data", help="Training scans (folder or CSV) for the "
                                              "memorization check."),
    memorization_threshold: float = typer.Option(0.9, "--memorization-threshold", help="Flag samples whose "
                                                 "subject-specific NCC with a training scan is at least this."),
    condition: List[str] = typer.Option([], "--condition", help="Conditioned generators: NAME=VALUE for every "
                                        "sample, repeatable, e.g. --condition age=70 --condition sex=F (names "
                                        "the generator was trained with; none = unconditional, the default)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale with "
                                             "--condition (default: the generator's latent.guidance; 1 = plain "
                                             "conditional model, >1 stronger condition, less diversity)."),
    quality: bool = typer.Option(True, "--quality/--no-quality", help="Write quality.json + quality.png."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Regenerate requested samples even if present."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Generate healthy-looking scans from noise with a trained model: NIfTI on the model grid
    (RAS, centred at 0, model intensity units), optional DICOM, optional labelled synthetic
    anomalies, a manifest and a quality report."""
    from ..synthesis.run import SynthConflict, SynthOptions, synthesize_run
    from ..model.sampler_config import SamplerConfig

    with user_errors(SynthConflict, ValueError, FileNotFoundError):
        clip = None
        if clip_x0 is not None:
            clip = () if clip_x0.strip().lower() in ("none", "off", "") else tuple(
                float(v) for v in clip_x0.split(","))
            if clip and len(clip) != 2:
                raise ValueError("--clip-x0 needs LOW,HIGH or none")
        from ..generator.conditioning import parse_condition_args

        cond = parse_condition_args(condition) or None
        scfg = SamplerConfig(sampler=sampler.lower(), steps=steps, temperature=temperature, eta=eta, clip_x0=clip,
                             precision=precision, batch_size=batch_size, spacing=spacing.lower())
        opts = SynthOptions(
            n=n, indices=_ints(index) or None, seeds=_ints([seeds]) if seeds else None, base_seed=seed,
            sampler=scfg, dicom=dicom, with_anomalies=with_anomalies, anomaly_fraction=anomaly_fraction,
            anomaly_kinds=[k.strip() for k in anomaly_kinds.split(",") if k.strip()] if anomaly_kinds else None,
            anomaly_count=anomaly_count, split=split, reference=reference, train_data=train_data,
            memorization_threshold=memorization_threshold, quality=quality, overwrite=overwrite,
            condition=cond, guidance=guidance)
        summary = synthesize_run(model, out, opts, device=device, progress=progress,
                                 log=lambda m: typer.echo(m, err=True))
    typer.echo(summary.line())
    for row in (summary.quality or {}).get("comparison") or []:
        typer.echo(f"  {row['measure']}: samples {row['samples']:.4g}, real {row['real']:.4g} "
                   f"(target {row['target']}: {'met' if row['met'] else 'MISSED'})")
    if summary.labels is not None:
        typer.echo(f"labels: {summary.labels}")
