"""Model/training configuration: one YAML file with sections ``preprocess``,
``model``, ``diffusion`` and ``train``, plus dotted overrides from the CLI
(``train.lr=1e-4``, ``model.channels=[16,32]``). Every section is a dataclass;
unknown keys and inconsistent values are refused with messages that name the key.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..preprocess_config import PreprocessConfig

SCHEDULES = ("linear_beta", "scaled_linear_beta", "cosine")
PREDICTION_TYPES = ("epsilon", "v_prediction")
NOISE_KINDS = ("gaussian", "simplex", "coarse")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


class ConfigError(ValueError):
    """A configuration value that medidiff refuses; the message names the key."""


def _tuple(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


@dataclass
class ModelConfig:
    channels: tuple[int, ...] = (16, 32, 64)
    attention_levels: tuple[bool, ...] | None = None  # None -> all False (MONAI still adds middle attention)
    num_res_blocks: int | tuple[int, ...] = 2
    norm_num_groups: int = 16
    num_head_channels: int | None = None  # None -> one head (= channels[-1]) in the forced middle block
    use_flash_attention: bool = True
    resblock_updown: bool = False
    # Patch-based model: trained on random patches of this size (voxels) that carry their
    # location as 3 coordinate channels; applied to the whole grid by Gaussian-blended sliding
    # windows (medidiff.model.patches). None = the network sees the whole grid.
    patch_size: tuple[int, int, int] | None = None
    patch_overlap: float = 0.25  # sliding-window overlap at inference
    patch_foreground_bias: float = 0.9  # share of training patches centred on a foreground voxel

    def __post_init__(self):
        if self.patch_size is not None:
            self.patch_size = tuple(int(p) for p in _tuple(self.patch_size))  # type: ignore[assignment]
        self.channels = tuple(int(c) for c in _tuple(self.channels))
        if self.attention_levels is None:
            self.attention_levels = tuple(False for _ in self.channels)
        self.attention_levels = tuple(bool(a) for a in _tuple(self.attention_levels))
        self.num_res_blocks = _tuple(self.num_res_blocks)
        if isinstance(self.num_res_blocks, tuple):
            self.num_res_blocks = tuple(int(n) for n in self.num_res_blocks)
        if self.num_head_channels is None:
            self.num_head_channels = self.channels[-1] if self.channels else 8

    def validate(self) -> list[str]:
        errs = []
        if not self.channels or any(c <= 0 for c in self.channels):
            errs.append(f"model.channels must be a non-empty list of positive ints, got {list(self.channels)}")
            return errs
        bad = [c for c in self.channels if c % self.norm_num_groups]
        if bad:
            errs.append(f"model.channels {list(self.channels)}: every entry must be divisible by "
                        f"model.norm_num_groups={self.norm_num_groups} (not: {bad})")
        if len(self.attention_levels) != len(self.channels):
            errs.append(f"model.attention_levels has {len(self.attention_levels)} entries but model.channels has "
                        f"{len(self.channels)}; they must match")
        if isinstance(self.num_res_blocks, tuple) and len(self.num_res_blocks) != len(self.channels):
            errs.append(f"model.num_res_blocks has {len(self.num_res_blocks)} entries, model.channels {len(self.channels)}")
        if self.patch_size is not None:
            div = 2 ** (len(self.channels) - 1)
            if len(self.patch_size) != 3 or any(p < div or p % div for p in self.patch_size):
                errs.append(f"model.patch_size must be 3 sizes divisible by {div}, got {list(self.patch_size)}")
            if not 0 <= self.patch_overlap < 1 or not 0 <= self.patch_foreground_bias <= 1:
                errs.append("model.patch_overlap must be in [0, 1) and patch_foreground_bias in [0, 1]")
        attn_ch = [c for c, a in zip(self.channels, self.attention_levels) if a] + [self.channels[-1]]
        bad = [c for c in attn_ch if c % int(self.num_head_channels)]
        if bad:
            errs.append(f"model.num_head_channels={self.num_head_channels} must divide the channels of attention "
                        f"levels and the middle block {sorted(set(attn_ch))}")
        return errs


@dataclass
class DiffusionConfig:
    num_train_timesteps: int = 1000
    schedule: str = "linear_beta"
    beta_start: float = 1e-4
    beta_end: float = 2e-2
    cosine_s: float = 8e-3
    prediction_type: str = "epsilon"
    noise: str = "gaussian"
    # extra parameters for the noise kind (simplex: octaves, persistence, period; coarse: factor)
    noise_params: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> list[str]:
        errs = []
        if self.schedule not in SCHEDULES:
            errs.append(f"diffusion.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            errs.append(f"diffusion.prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.noise not in NOISE_KINDS:
            errs.append(f"diffusion.noise must be one of {NOISE_KINDS}, got {self.noise!r}")
        if int(self.num_train_timesteps) < 2:
            errs.append("diffusion.num_train_timesteps must be >= 2")
        if not 0 < self.beta_start < self.beta_end < 1:
            errs.append(f"diffusion.beta_start/beta_end must satisfy 0 < start < end < 1, got {self.beta_start}, {self.beta_end}")
        return errs


@dataclass
class AugmentConfig:
    intensity_scale: float = 0.05  # multiplicative jitter, x *= 1 + U(-s, s)
    gamma: float = 0.1  # x = x ** exp(U(-g, g)) on the positive part
    bias: float = 0.05  # low-frequency multiplicative bias field amplitude
    shift: int = 2  # random translation in voxels (roll of zero-padded background), 0 = off
    flip_lr: bool = False  # left-right flips are OFF by default (asymmetric anatomy/laterality)
    probability: float = 0.8
    # anatomy-like variation, so a model that sees few subjects does not learn one brain:
    elastic: float = 0.0  # max smooth displacement in voxels (moves sulci and ventricles); 0 = off
    elastic_points: int = 5  # control points per axis of the random displacement field
    sharpness: float = 0.0  # U(-s, s): < 0 blurs, > 0 sharpens (unsharp mask), sigma 1 voxel
    contrast_curve: float = 0.0  # random monotone intensity curve (tissue contrast, vendor/sequence)

    def validate(self) -> list[str]:
        errs = []
        for k in ("intensity_scale", "gamma", "bias"):
            if not 0 <= getattr(self, k) < 1:
                errs.append(f"train.augment.{k} must be in [0, 1), got {getattr(self, k)}")
        if not 0 <= self.probability <= 1:
            errs.append("train.augment.probability must be in [0, 1]")
        if self.shift < 0:
            errs.append("train.augment.shift must be >= 0")
        if self.elastic < 0 or self.elastic_points < 2:
            errs.append("train.augment.elastic must be >= 0 and elastic_points >= 2")
        if not 0 <= self.sharpness <= 1 or not 0 <= self.contrast_curve < 0.5:
            errs.append("train.augment.sharpness must be in [0, 1] and contrast_curve in [0, 0.5)")
        return errs


@dataclass
class TrainConfig:
    batch_size: int = 2
    lr: float = 2e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    max_steps: int = 10000
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True  # decay ramps as min(decay, (1+n)/(10+n))
    precision: str = "auto"  # auto: bf16 autocast on CPUs that support it, fp16 AMP on CUDA
    checkpoint_every: int = 500
    val_every: int = 250
    val_batches: int = 4  # fixed (x0, noise, t) batches per validation
    val_fraction: float = 0.1  # held-out share of training scans when no val split is given
    log_every: int = 10
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self):
        if isinstance(self.augment, dict):
            self.augment = _from_dict(AugmentConfig, self.augment, "train.augment")
        self.betas = tuple(float(b) for b in _tuple(self.betas))

    def validate(self) -> list[str]:
        errs = []
        for k in ("batch_size", "max_steps", "checkpoint_every", "val_every", "log_every"):
            if int(getattr(self, k)) < 1:
                errs.append(f"train.{k} must be >= 1, got {getattr(self, k)}")
        if not self.lr > 0:
            errs.append(f"train.lr must be > 0, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            errs.append(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.precision not in PRECISIONS:
            errs.append(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 0 <= self.val_fraction < 1:
            errs.append("train.val_fraction must be in [0, 1)")
        if self.warmup_steps < 0:
            errs.append("train.warmup_steps must be >= 0")
        return errs + self.augment.validate()


@dataclass
class Config:
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "Config":
        errs = self.model.validate() + self.diffusion.validate() + self.train.validate()
        n_down = len(self.model.channels) - 1
        div = 2 ** n_down
        bad = [g for g in self.preprocess.grid if g % div]
        if self.model.patch_size is not None and any(p > g for p, g in zip(self.model.patch_size, self.preprocess.grid)):
            errs.append(f"model.patch_size {list(self.model.patch_size)} is larger than preprocess.grid "
                        f"{list(self.preprocess.grid)}")
        if bad and self.model.patch_size is None:
            errs.append(f"preprocess.grid {list(self.preprocess.grid)} must be divisible by {div} "
                        f"(2^(len(model.channels)-1)) for the U-Net's down/up-sampling")
        if errs:
            raise ConfigError("invalid config:\n  - " + "\n  - ".join(errs))
        return self

    def to_dict(self) -> dict[str, Any]:
        def conv(v):
            if isinstance(v, tuple):
                return [conv(x) for x in v]
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            return v

        return {
            "preprocess": self.preprocess.to_dict(),
            "model": conv(asdict(self.model)),
            "diffusion": conv(asdict(self.diffusion)),
            "train": conv(asdict(self.train)),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Config":
        d = dict(d or {})
        unknown = sorted(set(d) - {"preprocess", "model", "diffusion", "train"})
        if unknown:
            raise ConfigError(f"unknown config section(s): {', '.join(unknown)} "
                              "(expected preprocess, model, diffusion, train)")
        try:
            pre = PreprocessConfig.from_dict(d.get("preprocess"))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid config: {exc}") from exc
        cfg = cls(
            preprocess=pre,
            model=_from_dict(ModelConfig, d.get("model"), "model"),
            diffusion=_from_dict(DiffusionConfig, d.get("diffusion"), "diffusion"),
            train=_from_dict(TrainConfig, d.get("train"), "train"),
        )
        return cfg.validate()


def _from_dict(cls, d: dict[str, Any] | None, section: str):
    d = dict(d or {})
    if not isinstance(d, dict):
        raise ConfigError(f"config section {section!r} must be a mapping")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown option(s) in {section}: {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})")
    try:
        return cls(**d)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid value in {section}: {exc}") from exc


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, _, raw = text.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) < 2:
        raise ConfigError(f"override {text!r}: key must be dotted, e.g. train.lr=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: cannot parse value ({exc})") from exc
    # YAML 1.1 reads "1e-4" as a string; accept it as a float
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return parts, value


def apply_overrides(d: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    d = copy.deepcopy(d)
    for text in overrides or ():
        parts, value = parse_override(text)
        node = d
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = value
    return d


def _fix_yaml_floats(obj):
    if isinstance(obj, dict):
        return {k: _fix_yaml_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fix_yaml_floats(v) for v in obj]
    if isinstance(obj, str):
        try:
            if any(c.isdigit() for c in obj) and ("e" in obj.lower()) and obj.strip()[0] in "0123456789.-+":
                return float(obj)
        except ValueError:
            return obj
    return obj


def load_config_dict(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping with sections preprocess/model/diffusion/train")
    return _fix_yaml_floats(data)


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read YAML (or defaults when ``path`` is None), apply dotted overrides, validate."""
    d = apply_overrides(load_config_dict(path), overrides)
    try:
        return Config.from_dict(d)
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from exc
        raise
