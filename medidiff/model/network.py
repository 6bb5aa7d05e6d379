"""The 3D diffusion U-Net (MONAI ``DiffusionModelUNet``) built from a :class:`ModelConfig`."""

from __future__ import annotations

import torch

from .config import ModelConfig


def build_network(cfg: ModelConfig) -> torch.nn.Module:
    from monai.networks.nets import DiffusionModelUNet

    errs = cfg.validate()
    if errs:
        raise ValueError("; ".join(errs))
    from .patches import N_COORD

    return DiffusionModelUNet(
        spatial_dims=3,
        in_channels=1 + (N_COORD if cfg.patch_size is not None else 0),  # patch models also see their location
        out_channels=1,
        channels=tuple(cfg.channels),
        attention_levels=tuple(cfg.attention_levels),
        num_res_blocks=cfg.num_res_blocks,
        norm_num_groups=cfg.norm_num_groups,
        num_head_channels=cfg.num_head_channels,
        use_flash_attention=cfg.use_flash_attention,
        resblock_updown=cfg.resblock_updown,
    )


def as_grid_denoiser(net: torch.nn.Module, cfg: ModelConfig, grid) -> torch.nn.Module:
    """What scoring and sampling call on a whole model grid: the net itself, or — for a patch
    model — the net behind Gaussian-blended sliding windows."""
    if cfg.patch_size is None:
        return net
    from .patches import SlidingWindowDenoiser

    return SlidingWindowDenoiser(net, grid, cfg.patch_size, cfg.patch_overlap).eval()


def count_parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
