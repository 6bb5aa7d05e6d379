"""Patch-based diffusion: train on random 3D patches, apply to the whole grid by sliding windows.

A full 2 mm brain volume is too slow to train on two CPU cores, so the U-Net sees patches.
Each patch carries its location as three extra input channels (the model-grid coordinates
scaled to [-1, 1]), so the network still knows *where* in the template-space brain it is:
the same intensity means different things in the cortex and in the ventricles. At inference
:class:`SlidingWindowDenoiser` wraps the U-Net so it looks like a whole-grid denoiser —
``net(x, timesteps)`` on the full grid — and MONAI's ``sliding_window_inference`` blends the
overlapping windows with Gaussian weights. Reconstruction and sampling code stay unchanged.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

N_COORD = 3


def coordinate_grid(shape: Sequence[int]) -> np.ndarray:
    """(3, D, H, W) float32: each voxel's model-grid index scaled to [-1, 1] along each axis."""
    axes = [np.linspace(-1.0, 1.0, int(n), dtype=np.float32) for n in shape]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=0)


def draw_patch_origin(fg: np.ndarray, patch: Sequence[int], rng: np.random.Generator,
                      foreground_bias: float) -> tuple[int, int, int]:
    """Corner of a random patch inside the grid; with probability ``foreground_bias`` it is
    centred (as far as the border allows) on a random foreground voxel."""
    shape = np.asarray(fg.shape)
    patch = np.asarray(patch)
    hi = shape - patch
    u, r = rng.random(), rng.random(3)
    fg_idx = np.flatnonzero(fg)
    if u < foreground_bias and fg_idx.size:
        centre = np.array(np.unravel_index(fg_idx[int(rng.integers(fg_idx.size))], fg.shape))
        origin = centre - patch // 2
    else:
        origin = np.floor(r * (hi + 1)).astype(int)
    return tuple(int(v) for v in np.clip(origin, 0, hi))


def crop(array: np.ndarray, origin: Sequence[int], patch: Sequence[int]) -> np.ndarray:
    return array[..., origin[0]:origin[0] + patch[0], origin[1]:origin[1] + patch[1], origin[2]:origin[2] + patch[2]]


class SlidingWindowDenoiser(torch.nn.Module):
    """A patch U-Net (1 image + 3 coordinate channels in) seen as a whole-grid denoiser."""

    def __init__(self, unet: torch.nn.Module, grid: Sequence[int], patch: Sequence[int], overlap: float = 0.25,
                 sw_batch_size: int = 4):
        super().__init__()
        self.unet = unet
        self.grid = tuple(int(g) for g in grid)
        self.patch = tuple(int(p) for p in patch)
        self.overlap = float(overlap)
        self.sw_batch_size = int(sw_batch_size)
        self.register_buffer("coords", torch.from_numpy(coordinate_grid(self.grid))[None], persistent=False)

    def with_overlap(self, overlap: float) -> "SlidingWindowDenoiser":
        """The same network (shared weights) behind windows with another overlap."""
        return SlidingWindowDenoiser(self.unet, self.grid, self.patch, overlap, self.sw_batch_size).eval()

    def with_unet(self, unet: torch.nn.Module, sw_batch_size: int | None = None) -> "SlidingWindowDenoiser":
        """The same windows and blending around another U-Net with the same call signature
        (e.g. an exported runtime, :mod:`medidiff.model.backends`)."""
        return SlidingWindowDenoiser(unet, self.grid, self.patch, self.overlap,
                                     sw_batch_size or self.sw_batch_size).eval()

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, **kwargs) -> torch.Tensor:
        from monai.inferers import sliding_window_inference

        if tuple(x.shape[2:]) != self.grid:
            raise ValueError(f"sliding-window denoiser expects the model grid {self.grid}, got {tuple(x.shape[2:])}")
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(x.shape[0])
        coords = self.coords.to(device=x.device, dtype=x.dtype)
        outs = []
        for b in range(x.shape[0]):  # one timestep per sample: windows of one sample share it
            t_b = timesteps[b:b + 1]
            inp = torch.cat([x[b:b + 1], coords], dim=1)

            def predictor(win: torch.Tensor, t_b=t_b) -> torch.Tensor:
                return self.unet(win, timesteps=t_b.expand(win.shape[0]), **kwargs)

            outs.append(sliding_window_inference(inp, self.patch, self.sw_batch_size, predictor,
                                                 overlap=self.overlap, mode="gaussian", sigma_scale=0.125,
                                                 padding_mode="constant", cval=0.0))
        return torch.cat(outs, dim=0).to(x.dtype)
