"""The generator model folder: networks, save and load. Nothing here unpickles.

``LDM_DIR/model.safetensors`` holds the EMA weights of both stages (``autoencoder.*``,
``unet.*``); its safetensors metadata carries the config and the latent scale factor, so a
hand-edited ``model.json`` is caught. ``LDM_DIR/model.json`` (format ``medidiff-generator``)
records the config, the preprocessing and front-end fingerprint, the latent scale factor and
shape, what training did (steps, CPU seconds, losses per stage) and the sha256 of the weights
(``model_hash``), checked on every load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..io.atomic import write_text_atomic
from ..jsonutil import json_default
from ..train.checkpoint import (META_FILE, MODEL_FILE, CheckpointError, _frontend_fingerprint,
                                _load_tensors, read_description, _save_tensors, _version, sha256_file)
from .config import AutoencoderConfig, GeneratorConfig, LatentConfig

FORMAT = "medidiff-generator"
FORMAT_VERSION = 1
KIND = "latent_diffusion"


def build_autoencoder(cfg: AutoencoderConfig) -> torch.nn.Module:
    from monai.networks.nets import AutoencoderKL

    return AutoencoderKL(spatial_dims=3, in_channels=1, out_channels=1, channels=tuple(cfg.channels),
                         num_res_blocks=(cfg.num_res_blocks,) * len(cfg.channels),
                         attention_levels=(False,) * len(cfg.channels), latent_channels=cfg.latent_channels,
                         norm_num_groups=cfg.norm_num_groups, with_encoder_nonlocal_attn=cfg.with_nonlocal_attn,
                         with_decoder_nonlocal_attn=cfg.with_nonlocal_attn)


def build_latent_unet(cfg: LatentConfig, latent_channels: int) -> torch.nn.Module:
    """The latent U-Net; a conditioned generator has ``2 * len(cfg.conditioning)`` more input
    channels (:mod:`medidiff.generator.conditioning`)."""
    from monai.networks.nets import DiffusionModelUNet

    from .conditioning import n_channels

    return DiffusionModelUNet(spatial_dims=3, in_channels=latent_channels + n_channels(cfg),
                              out_channels=latent_channels,
                              channels=tuple(cfg.channels), attention_levels=tuple(cfg.attention_levels),
                              num_res_blocks=cfg.num_res_blocks, norm_num_groups=cfg.norm_num_groups,
                              num_head_channels=cfg.num_head_channels, use_flash_attention=True)


def model_kind(model_dir: str | Path) -> str:
    """``pixel`` (a ``medidiff train`` run) or ``latent_diffusion`` (this package), from model.json."""
    meta_path = Path(model_dir) / META_FILE
    if not meta_path.is_file():
        return "pixel"  # load_model gives the full refusal message (pickles found, ...)
    try:
        fmt = json.loads(meta_path.read_text()).get("format")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return "pixel"
    return KIND if fmt == FORMAT else "pixel"


def save_generator(model_dir: str | Path, cfg: GeneratorConfig, autoencoder: dict[str, torch.Tensor],
                   unet: dict[str, torch.Tensor], scale_factor: float, metadata: dict[str, Any]) -> str:
    """Write model.safetensors, then model.json with its hash. Returns the hash."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tensors = {**{f"autoencoder.{k}": v for k, v in autoencoder.items()}, **{f"unet.{k}": v for k, v in unet.items()}}
    _save_tensors(tensors, model_dir / MODEL_FILE, metadata={
        "format": FORMAT, "config": json.dumps(cfg.to_dict(), sort_keys=True, default=json_default),
        "scale_factor": repr(float(scale_factor))})
    digest = sha256_file(model_dir / MODEL_FILE)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": KIND, "medidiff_version": _version(),
            "torch_version": torch.__version__, **metadata, "config": cfg.to_dict(),
            "preprocess": cfg.preprocess.to_dict(), "frontend": _frontend_fingerprint(cfg.preprocess),
            "scale_factor": float(scale_factor), "latent_shape": list(cfg.latent_shape), "model_hash": digest}
    write_text_atomic(model_dir / META_FILE, json.dumps(meta, indent=2, default=json_default) + "\n")
    return digest


@dataclass
class LoadedGenerator:
    autoencoder: torch.nn.Module  # eval, no grad
    unet: torch.nn.Module
    config: GeneratorConfig
    scale_factor: float
    model_hash: str
    metadata: dict[str, Any] = field(default_factory=dict)
    device: torch.device = torch.device("cpu")

    @property
    def preprocess_config(self):
        return self.config.preprocess


def _read_meta(model_dir: Path) -> dict[str, Any]:
    return read_description(model_dir, FORMAT, FORMAT_VERSION, kind="generator")


def _stored_header(wpath: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(wpath), framework="pt") as fh:
        return dict(fh.metadata() or {})


def load_generator(model_dir: str | Path, device: str | torch.device = "cpu") -> LoadedGenerator:
    """Load a generator folder: hash of the weights checked against model.json, config and scale
    factor checked against the copies inside the hashed weights file; safetensors + JSON only."""
    model_dir = Path(model_dir)
    meta = _read_meta(model_dir)
    wpath = model_dir / MODEL_FILE
    if not wpath.is_file():
        raise CheckpointError(f"{model_dir}: {MODEL_FILE} missing")
    actual = sha256_file(wpath)
    if actual != meta.get("model_hash"):
        raise CheckpointError(f"{wpath}: content hash {actual} does not match model.json ({meta.get('model_hash')}); "
                              "the weights were modified or belong to another generator — refusing to load")
    tensors = _load_tensors(wpath)  # refuses pickles before parsing
    try:
        cfg = GeneratorConfig.from_dict(meta["config"])
    except Exception as exc:
        raise CheckpointError(f"{model_dir / META_FILE}: bad generator config ({exc})") from exc
    header = _stored_header(wpath)
    try:  # re-read through GeneratorConfig: options added since (at their defaults) still match
        raw_cfg = header.get("config")
        stored_cfg = GeneratorConfig.from_dict(json.loads(raw_cfg)).to_dict() if raw_cfg else None
    except Exception:
        stored_cfg = None
    if json.loads(json.dumps(stored_cfg, sort_keys=True, default=json_default)) != \
            json.loads(json.dumps(cfg.to_dict(), sort_keys=True, default=json_default)) or \
            float(header.get("scale_factor", "nan")) != float(meta.get("scale_factor", "nan")):
        raise CheckpointError(f"{model_dir / META_FILE}: config or scale_factor differs from the one stored with the "
                              "weights; restore the original model.json")
    if cfg.preprocess.space == "template":
        from ..frontend.config import check_reproducible

        try:
            check_reproducible(meta.get("frontend"), cfg.preprocess.frontend_config())
        except ValueError as exc:
            raise CheckpointError(f"{model_dir / META_FILE}: {exc}") from exc
    dev = torch.device(device)
    ae = _restore(build_autoencoder(cfg.autoencoder), tensors, "autoencoder.", wpath).to(dev)
    unet = _restore(build_latent_unet(cfg.latent, cfg.autoencoder.latent_channels), tensors, "unet.", wpath).to(dev)
    return LoadedGenerator(ae, unet, cfg, float(meta["scale_factor"]), actual, meta, dev)


def _restore(net: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str, wpath: Path) -> torch.nn.Module:
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{wpath}: {prefix[:-1]} weights do not fit the configured network "
                              f"({str(exc)[:300]})") from exc
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net
