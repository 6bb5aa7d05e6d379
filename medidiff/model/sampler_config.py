"""Sampler settings shared by every sampler (the pixel model's :mod:`medidiff.synthesis.sampler`
and the latent generator's :mod:`medidiff.generator.sampler`), and the timesteps they visit.

Timesteps start at T-1 (the fully-noised level the model was trained on, Lin
et al. 2024) and end at 0. Default spacing is *quadratic* (t_k = (T-1) (1 - k/(n-1))^2,
as in the DDIM paper): more steps at low noise, where fine detail is decided.
Measured with an exact Gaussian-data oracle (tests): with 50 DDIM steps the
sample std reaches 96% of the true one with quadratic spacing vs 88% with
linear spacing (10 steps: 79% vs 49%); ``spacing="linear"`` is available.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SAMPLERS = ("ddim", "ddpm")
SPACINGS = ("quadratic", "linear")
DEFAULT_STEPS = {"ddim": 50, "ddpm": 250}


@dataclass
class SamplerConfig:
    sampler: str = "auto"  # auto: the model's own (ddim for pixel models, rflow/ddim for latent generators)
    steps: int | None = None  # None -> DEFAULT_STEPS[sampler]
    temperature: float = 1.0
    eta: float | None = None  # None -> 0 (ddim) / 1 (ddpm)
    clip_x0: tuple[float, float] | None = None  # None -> by modality; () or "none" -> no clipping
    precision: str = "auto"
    batch_size: int = 4
    spacing: str = "quadratic"  # timestep spacing: quadratic | linear

    def resolved(self, modality: str = "mri", num_train_timesteps: int = 1000) -> "SamplerConfig":
        sampler = "ddim" if self.sampler == "auto" else self.sampler
        if sampler == "rflow":
            raise ValueError("sampler rflow needs a rectified-flow latent generator (latent.scheduler=rflow); "
                             "this model samples with ddim or ddpm")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        steps = int(self.steps or DEFAULT_STEPS[sampler])
        steps = min(steps, int(num_train_timesteps))
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        eta = self.eta if self.eta is not None else (0.0 if sampler == "ddim" else 1.0)
        if not 0 <= eta <= 1:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        clip = self.clip_x0
        if clip is None:
            clip = (0.0, 1.0) if modality == "ct" else (0.0, 2.0)
        elif len(clip) == 0:
            clip = ()
        else:
            clip = (float(clip[0]), float(clip[1]))
            if not clip[0] < clip[1]:
                raise ValueError(f"clip_x0 must be (low, high) with low < high, got {clip}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {SPACINGS}, got {self.spacing!r}")
        if int(self.batch_size) < 1:
            raise ValueError("batch_size must be >= 1")
        return SamplerConfig(sampler, steps, float(self.temperature), float(eta), tuple(clip),
                             self.precision, int(self.batch_size), self.spacing)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["clip_x0"] = list(self.clip_x0) if self.clip_x0 else None
        return d


def sampling_timesteps(num_train_timesteps: int, steps: int, spacing: str = "quadratic") -> list[int]:
    """``steps`` distinct descending timesteps from T-1 down to 0."""
    T = int(num_train_timesteps)
    if steps >= T:
        return list(range(T - 1, -1, -1))
    if steps == 1:
        return [T - 1]
    u = np.linspace(1.0, 0.0, steps)
    ts = np.round((T - 1) * (u ** 2 if spacing == "quadratic" else u)).astype(int)
    for k in range(steps - 2, -1, -1):  # keep them distinct: at least one apart
        ts[k] = max(ts[k], ts[k + 1] + 1)
    return [int(t) for t in ts]
