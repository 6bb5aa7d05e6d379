"""A compact 3D convolutional autoencoder baseline: trained on the same healthy
training scans with the same preprocessing (model grid), reconstruction error
as the anomaly map.

Network: three stride-2 conv blocks (GroupNorm + SiLU) down to a narrow
bottleneck (``latent`` channels at 1/8 resolution: a real information
bottleneck, so it cannot learn the identity), then trilinear upsampling +
conv blocks back. Input is zero-padded to a multiple of 8 and the output cropped.
Loss: mean squared error. Training budget: ``max_steps`` and/or ``minutes``.
Map: |x - x̂| median-filtered (3 voxels) inside the eroded foreground — the same
residual → map step as medidiff (:func:`medidiff.score.maps.raw_map`), without
healthy-statistics normalisation by default; the shared post-processor maps it back.
Weights: safetensors (``autoencoder.safetensors``) + ``params.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..io.atomic import atomic_path, write_text_atomic
from ..preprocess_config import PreprocessConfig
from ..score.cache import preprocessed
from ..score.config import ScoreConfig
from ..score.maps import raw_map, scoring_mask
from ..score.postprocess import ModelGridMap
from .common import BaselineError, BaselineMethod

WEIGHTS_FILE = "autoencoder.safetensors"


def build_autoencoder(channels: tuple[int, ...] = (16, 32, 64), latent: int = 8, groups: int = 8):
    import torch
    from torch import nn

    def block(cin, cout, stride):
        return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(min(groups, cout), cout),
                             nn.SiLU())

    class ConvAE(nn.Module):
        def __init__(self):
            super().__init__()
            enc, cin = [], 1
            for c in channels:
                enc.append(block(cin, c, 2))
                cin = c
            self.encoder = nn.Sequential(*enc, nn.Conv3d(cin, latent, 1))
            dec, cin = [block(latent, channels[-1], 1)], channels[-1]
            for c in reversed(channels):
                dec += [nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False), block(cin, c, 1)]
                cin = c
            self.decoder = nn.Sequential(*dec, nn.Conv3d(cin, 1, 3, padding=1))
            self.factor = 2 ** len(channels)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shape = x.shape[2:]
            pad = [(-s) % self.factor for s in shape]
            xp = nn.functional.pad(x, [p for q in reversed(pad) for p in (0, q)])
            y = self.decoder(self.encoder(xp))
            return y[..., : shape[0], : shape[1], : shape[2]]

    return ConvAE()


class AutoencoderBaseline(BaselineMethod):
    name = "autoencoder"

    def __init__(self, preprocess_config: PreprocessConfig | None = None, channels: tuple[int, ...] = (16, 32, 64),
                 latent: int = 8, max_steps: int = 2000, minutes: float | None = 10.0, batch_size: int = 2,
                 lr: float = 1e-3, seed: int = 0, erode_mm: float = 3.0, median_size: int = 3):
        self.pcfg = preprocess_config or PreprocessConfig()
        self.channels = tuple(int(c) for c in channels)
        self.latent = int(latent)
        self.max_steps = int(max_steps)
        self.minutes = minutes
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.seed = int(seed)
        self.erode_mm = float(erode_mm)
        self.median_size = int(median_size)
        self.net = None
        self.history: dict[str, Any] = {}

    def params(self) -> dict[str, Any]:
        return {"preprocess": self.pcfg.to_dict(), "channels": list(self.channels), "latent": self.latent,
                "max_steps": self.max_steps, "minutes": self.minutes, "batch_size": self.batch_size, "lr": self.lr,
                "seed": self.seed, "erode_mm": self.erode_mm, "median_size": self.median_size}

    def _score_cfg(self) -> ScoreConfig:
        return ScoreConfig(erode_mm=self.erode_mm, smoothing="median", smoothing_size=float(self.median_size),
                           normalization="none")

    def fit(self, train: str | Path | None, log: Callable[[str], None] = print) -> None:
        if train is None:
            if self.net is None:
                raise BaselineError("the autoencoder baseline needs --train (a folder of healthy scans)")
            return
        import torch

        from ..runtime import set_threads
        from ..dataset import list_scans, prepare

        set_threads()
        data = prepare(list_scans(train), self.pcfg)
        if len(data) < 1:
            raise BaselineError(f"{train}: no readable training scans for the autoencoder")
        torch.manual_seed(self.seed)
        net = build_autoencoder(self.channels, self.latent)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        images = torch.from_numpy(data.images[:, None])
        rng = np.random.default_rng(self.seed)
        t0 = time.perf_counter()
        budget = None if self.minutes is None else 60.0 * float(self.minutes)
        losses, step = [], 0
        net.train()
        while step < self.max_steps and (budget is None or time.perf_counter() - t0 < budget):
            idx = rng.choice(len(data), size=min(self.batch_size, len(data)), replace=len(data) < self.batch_size)
            x = images[idx]
            loss = torch.nn.functional.mse_loss(net(x), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            if step % 100 == 0:
                log(f"autoencoder: step {step}, loss {np.mean(losses[-100:]):.5f}")
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net
        self.history = {"steps": step, "seconds": round(time.perf_counter() - t0, 2), "n_train": len(data),
                        "final_loss": float(np.mean(losses[-20:])) if losses else None,
                        "stopped": "max_steps" if step >= self.max_steps else "time budget"}

    def reconstruct(self, image: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.net(torch.from_numpy(image[None, None].astype(np.float32)))[0, 0].numpy()

    def model_map(self, volume) -> ModelGridMap:
        if self.net is None:
            raise BaselineError("autoencoder not trained")
        pre, _ = preprocessed(volume, self.pcfg)
        cfg = self._score_cfg()
        spacing = np.asarray(self.pcfg.spacing)
        region = scoring_mask(pre.foreground, cfg, spacing)
        recon = self.reconstruct(pre.image)
        return ModelGridMap(pre=pre, raw=raw_map(pre.image, recon, region, cfg, spacing), region=region, recon=recon)

    def state_bytes(self) -> bytes:
        if self.net is None:
            return b""
        return b"".join(v.numpy().tobytes() for v in self.net.state_dict().values())

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().clone() for k, v in self.net.state_dict().items()}
        with atomic_path(folder / WEIGHTS_FILE) as tmp:
            save_file(state, str(tmp))
        write_text_atomic(folder / "params.json", json.dumps(
            {"method": self.name, "params": self.params(), "training": self.history}, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> "AutoencoderBaseline":
        from safetensors.torch import load_file

        folder = Path(folder)
        meta = json.loads((folder / "params.json").read_text())
        p = dict(meta["params"])
        p["preprocess_config"] = PreprocessConfig.from_dict(p.pop("preprocess"))
        p["channels"] = tuple(p["channels"])
        obj = cls(**p)
        net = build_autoencoder(obj.channels, obj.latent)
        net.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
        net.eval()
        obj.net, obj.history = net, meta.get("training", {})
        return obj
