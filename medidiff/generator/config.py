"""Configuration of the latent-diffusion generator (Pinaya et al. 2022 style): one YAML file with
sections ``preprocess``, ``autoencoder``, ``latent`` (the diffusion U-Net on the latent and its
schedule), ``train_autoencoder`` and ``train_latent``. Dotted ``--set`` overrides as for
``medidiff train``; unknown keys are refused with the key's name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..model.config import AugmentConfig, ConfigError, _from_dict, _tuple, apply_overrides, load_config_dict
from ..preprocess_config import PreprocessConfig

SCHEDULERS = ("rflow", "ddpm")
CONDITIONS = ("age", "sex")  # the IXI demographics; see medidiff.generator.conditioning
SECTIONS = ("preprocess", "autoencoder", "latent", "train_autoencoder", "train_latent")


@dataclass
class AutoencoderConfig:
    """MONAI ``AutoencoderKL``: the volume is downsampled 2x per level after the first
    (``len(channels) - 1`` times), so channels of length 3 compress 4x per axis."""
    channels: tuple[int, ...] = (32, 64, 64)
    num_res_blocks: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 16
    # attention at full resolution is the dominant CPU cost; the bottleneck is small enough without it
    with_nonlocal_attn: bool = False

    def __post_init__(self):
        self.channels = tuple(int(c) for c in _tuple(self.channels))

    @property
    def factor(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def validate(self) -> list[str]:
        errs = []
        if len(self.channels) < 2 or any(c <= 0 or c % self.norm_num_groups for c in self.channels):
            errs.append(f"autoencoder.channels must be >= 2 positive multiples of autoencoder.norm_num_groups="
                        f"{self.norm_num_groups}, got {list(self.channels)}")
        if self.latent_channels < 1 or self.num_res_blocks < 1:
            errs.append("autoencoder.latent_channels and autoencoder.num_res_blocks must be >= 1")
        return errs


@dataclass
class LatentConfig:
    """The diffusion U-Net on the latent and its schedule.

    ``scheduler: rflow`` is MONAI's ``RFlowScheduler`` (rectified flow, velocity target, Euler
    sampling in few steps); ``ddpm`` is the classic linear-beta epsilon model sampled with the
    project's deterministic DDIM step."""
    channels: tuple[int, ...] = (64, 128)
    num_res_blocks: int = 2
    norm_num_groups: int = 16
    attention_levels: tuple[bool, ...] | None = None  # None -> attention on the last level
    num_head_channels: int = 32
    scheduler: str = "rflow"
    num_train_timesteps: int = 1000
    beta_start: float = 0.0015  # ddpm only: the scaled-linear schedule of latent diffusion
    beta_end: float = 0.0195
    default_steps: int = 25  # sampling steps when --steps is not given
    # conditioning by concatenated channels (medidiff.generator.conditioning): () = unconditional
    conditioning: tuple[str, ...] = ()
    age_center: float = 60.0  # age channel = (age - age_center) / age_scale
    age_scale: float = 15.0
    guidance: float = 1.0  # default classifier-free guidance scale (1 = plain conditional model)

    def __post_init__(self):
        self.channels = tuple(int(c) for c in _tuple(self.channels))
        cond = self.conditioning or ()
        if isinstance(cond, str):
            cond = [c.strip() for c in cond.split(",") if c.strip()]
        self.conditioning = tuple(str(c) for c in cond)
        if self.attention_levels is None:
            self.attention_levels = tuple(i == len(self.channels) - 1 for i in range(len(self.channels)))
        self.attention_levels = tuple(bool(a) for a in _tuple(self.attention_levels))

    def validate(self) -> list[str]:
        errs = []
        if not self.channels or any(c <= 0 or c % self.norm_num_groups for c in self.channels):
            errs.append(f"latent.channels must be positive multiples of latent.norm_num_groups="
                        f"{self.norm_num_groups}, got {list(self.channels)}")
        if len(self.attention_levels) != len(self.channels):
            errs.append("latent.attention_levels must have one entry per latent.channels entry")
        if self.scheduler not in SCHEDULERS:
            errs.append(f"latent.scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if int(self.num_train_timesteps) < 2 or int(self.default_steps) < 1:
            errs.append("latent.num_train_timesteps must be >= 2 and latent.default_steps >= 1")
        bad = [c for c in self.conditioning if c not in CONDITIONS]
        if bad or len(set(self.conditioning)) != len(self.conditioning):
            errs.append(f"latent.conditioning must be distinct names from {CONDITIONS}, got {list(self.conditioning)}")
        if not self.age_scale > 0 or not self.guidance >= 0:
            errs.append("latent.age_scale must be > 0 and latent.guidance >= 0")
        return errs


@dataclass
class StageConfig:
    batch_size: int = 2
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 50
    max_steps: int = 5000
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    precision: str = "auto"
    checkpoint_every: int = 250
    log_every: int = 10
    seed: int = 0
    kl_weight: float = 1e-6  # autoencoder stage: weight of the KL term (MONAI tutorial value)
    l2_weight: float = 0.0  # autoencoder stage: optional MSE next to L1
    augment_copies: int = 0  # latent stage: augmented copies of each scan encoded once, next to the scan
    # latent stage of a conditioned generator: probability that a step's item loses all its conditions
    # (and, independently, each one): the same network then also samples unconditionally and with
    # classifier-free guidance (Ho & Salimans 2022)
    condition_dropout: float = 0.2
    # autoencoder stage: patch-adversarial term (MONAI PatchDiscriminator, least squares), off at 0
    adv_weight: float = 0.0
    adv_start: int = 0  # step at which the adversarial term starts (the discriminator trains from then on)
    disc_channels: int = 16
    disc_layers: int = 2
    disc_lr: float | None = None  # None: the stage's lr
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self):
        if isinstance(self.augment, dict):
            self.augment = _from_dict(AugmentConfig, self.augment, "augment")

    def validate(self, name: str) -> list[str]:
        errs = []
        for k in ("batch_size", "max_steps", "checkpoint_every", "log_every"):
            if int(getattr(self, k)) < 1:
                errs.append(f"{name}.{k} must be >= 1, got {getattr(self, k)}")
        if not self.lr > 0 or not 0 <= self.ema_decay < 1:
            errs.append(f"{name}.lr must be > 0 and {name}.ema_decay in [0, 1)")
        if self.kl_weight < 0 or self.l2_weight < 0 or self.augment_copies < 0:
            errs.append(f"{name}.kl_weight, l2_weight and augment_copies must be >= 0")
        if not 0 <= self.condition_dropout < 1:
            errs.append(f"{name}.condition_dropout must be in [0, 1)")
        if self.adv_weight < 0 or self.adv_start < 0 or self.disc_channels < 1 or self.disc_layers < 1:
            errs.append(f"{name}.adv_weight and adv_start must be >= 0, disc_channels and disc_layers >= 1")
        return errs + self.augment.validate()


@dataclass
class GeneratorConfig:
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    train_autoencoder: StageConfig = field(default_factory=StageConfig)
    train_latent: StageConfig = field(default_factory=StageConfig)

    def validate(self) -> "GeneratorConfig":
        errs = (self.autoencoder.validate() + self.latent.validate()
                + self.train_autoencoder.validate("train_autoencoder") + self.train_latent.validate("train_latent"))
        f = self.autoencoder.factor
        latent_div = f * 2 ** (len(self.latent.channels) - 1)
        if any(g % latent_div for g in self.preprocess.grid):
            errs.append(f"preprocess.grid {list(self.preprocess.grid)} must be divisible by {latent_div} (autoencoder "
                        f"factor {f} x latent U-Net factor {latent_div // f})")
        if errs:
            raise ConfigError("invalid generator config:\n  - " + "\n  - ".join(errs))
        return self

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        f = self.autoencoder.factor
        return (self.autoencoder.latent_channels, *(int(g) // f for g in self.preprocess.grid))

    def to_dict(self) -> dict[str, Any]:
        def conv(v):
            if isinstance(v, (tuple, list)):
                return [conv(x) for x in v]
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            return v

        return {"preprocess": self.preprocess.to_dict(), "autoencoder": conv(asdict(self.autoencoder)),
                "latent": conv(asdict(self.latent)), "train_autoencoder": conv(asdict(self.train_autoencoder)),
                "train_latent": conv(asdict(self.train_latent))}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "GeneratorConfig":
        d = dict(d or {})
        unknown = sorted(set(d) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown generator config section(s): {', '.join(unknown)} (expected {', '.join(SECTIONS)})")
        try:
            pre = PreprocessConfig.from_dict(d.get("preprocess"))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid generator config: {exc}") from exc
        return cls(preprocess=pre,
                   autoencoder=_from_dict(AutoencoderConfig, d.get("autoencoder"), "autoencoder"),
                   latent=_from_dict(LatentConfig, d.get("latent"), "latent"),
                   train_autoencoder=_from_dict(StageConfig, d.get("train_autoencoder"), "train_autoencoder"),
                   train_latent=_from_dict(StageConfig, d.get("train_latent"), "train_latent")).validate()


def load_generator_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> GeneratorConfig:
    d = apply_overrides(load_config_dict(path), overrides)
    try:
        return GeneratorConfig.from_dict(d)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") if path is not None else exc
