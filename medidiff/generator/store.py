"""The generator model folder: networks, save and load. Nothing here unpickles.

``LDM_DIR/model.safetensors`` holds the EMA weights of both stages (``autoencoder.*``,
``unet.*``); its safetensors metadata carries the config and the latent scale factor, so a
hand-edited ``model.json`` is caught. ``LDM_DIR/model.json`` (format ``medidiff-generator``)
records the config, the preprocessing and front-end fingerprint, the latent scale factor and
shape, what training did (steps, CPU seconds, losses per stage) and the sha256 of the weights
(``model_hash``), checked on every load. The folder mechanics (hashing, safetensors, pickle
refusal, which kind a folder holds) are :mod:`medidiff.model.folder`'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..jsonutil import json_default
from ..model.folder import (GENERATOR_FORMAT, LATENT_KIND, META_FILE, CheckpointError, check_frontend,
                            frontend_fingerprint, load_tensors, package_version, read_description, read_header,
                            restore_weights, verified_weights, write_description, write_weights)
from .config import AutoencoderConfig, GeneratorConfig, LatentConfig

FORMAT = GENERATOR_FORMAT
FORMAT_VERSION = 1
KIND = LATENT_KIND


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


def save_generator(model_dir: str | Path, cfg: GeneratorConfig, autoencoder: dict[str, torch.Tensor],
                   unet: dict[str, torch.Tensor], scale_factor: float, metadata: dict[str, Any]) -> str:
    """Write model.safetensors, then model.json with its hash. Returns the hash."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tensors = {**{f"autoencoder.{k}": v for k, v in autoencoder.items()}, **{f"unet.{k}": v for k, v in unet.items()}}
    digest = write_weights(model_dir, tensors, header={
        "format": FORMAT, "config": json.dumps(cfg.to_dict(), sort_keys=True, default=json_default),
        "scale_factor": repr(float(scale_factor))})
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": KIND, "medidiff_version": package_version(),
            "torch_version": torch.__version__, **metadata, "config": cfg.to_dict(),
            "preprocess": cfg.preprocess.to_dict(), "frontend": frontend_fingerprint(cfg.preprocess),
            "scale_factor": float(scale_factor), "latent_shape": list(cfg.latent_shape), "model_hash": digest}
    write_description(model_dir, meta)
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


def load_generator(model_dir: str | Path, device: str | torch.device = "cpu") -> LoadedGenerator:
    """Load a generator folder: hash of the weights checked against model.json, config and scale
    factor checked against the copies inside the hashed weights file; safetensors + JSON only."""
    model_dir = Path(model_dir)
    meta = read_description(model_dir, FORMAT, FORMAT_VERSION, kind="generator")
    wpath, actual = verified_weights(model_dir, meta, owner="generator")
    tensors = load_tensors(wpath)  # refuses pickles before parsing
    try:
        cfg = GeneratorConfig.from_dict(meta["config"])
    except Exception as exc:
        raise CheckpointError(f"{model_dir / META_FILE}: bad generator config ({exc})") from exc
    header = read_header(wpath)
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
    check_frontend(meta, cfg.preprocess, model_dir)
    dev = torch.device(device)
    ae = restore_weights(build_autoencoder(cfg.autoencoder), tensors, "autoencoder.", wpath,
                         what="autoencoder weights").to(dev)
    unet = restore_weights(build_latent_unet(cfg.latent, cfg.autoencoder.latent_channels), tensors, "unet.", wpath,
                           what="unet weights").to(dev)
    return LoadedGenerator(ae, unet, cfg, float(meta["scale_factor"]), actual, meta, dev)

