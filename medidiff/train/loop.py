"""The training loop: AdamW, warm-up + cosine LR (:mod:`.lr_schedule`), gradient clipping, EMA,
bf16 autocast on capable CPUs / AMP on CUDA, fixed-noise validation, atomic
checkpoints, bit-for-bit resume, time budget, stop signals (:mod:`.stop_signals`),
optional DDP (torchrun, :mod:`.distributed`). A whole run from scans: :mod:`.run`.

Determinism: the batch content, augmentation, timesteps and noise of step s on
rank r are derived from ``(seed, s, r)`` only (see :mod:`.data`), so resuming
from a checkpoint at step N reproduces an uninterrupted run exactly.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..dataset import PreparedData
from ..model.config import Config, ConfigError
from ..model.diffusion import add_noise, build_scheduler, training_target
from ..model.network import build_network, count_parameters
from ..model.noise import make_noise
from ..model.patches import coordinate_grid, crop, draw_patch_origin
from ..model.store import load_model, save_model
from ..runtime import autocast_ctx, resolve_device, resolve_precision
from . import checkpoint as ckpt
from .data import make_batch, step_seed
from .distributed import all_ranks_mean, any_rank, dist_info
from .lr_schedule import lr_lambda_factory
from .progress import TrainProgress, plot_loss_curve
from .stop_signals import catch_stop_signals, restore_signals

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- results

@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    train_loss: float | None
    val_loss: float | None
    stopped: str  # "max_steps" | "time_budget"
    seconds: float
    steps_per_second: float | None
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    def __init__(self, cfg: Config, train_data: PreparedData, val_data: PreparedData | None, out_dir: str | Path,
                 device: str | torch.device = "auto", seed: int | None = None, progress: bool = True,
                 data_summary: dict[str, Any] | None = None, checkpoint_raw: bool = True):
        self.cfg = cfg
        self.tc = cfg.train
        self.train_data = train_data
        self.val_data = val_data if val_data is not None and len(val_data) else None
        self.out = Path(out_dir)
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.seed = int(self.tc.seed if seed is None else seed)
        self.rank, self.world = dist_info()
        self.is_main = self.rank == 0
        self.progress = progress and self.is_main
        self.precision = resolve_precision(self.tc.precision, self.device)
        self.data_summary = data_summary or {}
        self.checkpoint_raw = checkpoint_raw
        if len(train_data) == 0:
            raise ValueError("no training scans after preprocessing")

        torch.manual_seed(self.seed)  # identical initial weights on every rank
        self.net = build_network(cfg.model).to(self.device)
        self.ema = copy.deepcopy(self.net).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.model = self.net
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.model = DDP(self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=self.tc.lr, betas=tuple(self.tc.betas),
                                     weight_decay=self.tc.weight_decay)
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lr_lambda_factory(self.tc.warmup_steps, self.tc.max_steps, self.tc.min_lr_ratio))
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.scheduler = build_scheduler(cfg.diffusion, "ddpm")
        self.T = int(cfg.diffusion.num_train_timesteps)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.n_params = count_parameters(self.net)
        self._val_batches: list[tuple[torch.Tensor, ...]] | None = None

    # -- pieces ---------------------------------------------------------------
    def _noise(self, shape, gen):
        return make_noise(self.cfg.diffusion.noise, shape, gen, **dict(self.cfg.diffusion.noise_params))

    def train_step(self, step: int) -> float:
        tc = self.tc
        aug = tc.augment
        mc = self.cfg.model
        batch = torch.from_numpy(make_batch(self.train_data, step, tc.batch_size, self.rank, self.world,
                                            self.seed, aug, mc.patch_size, mc.patch_foreground_bias)).to(self.device)
        x0, cond = batch[:, :1], batch[:, 1:]  # cond: a patch model's coordinate channels (else empty)
        gen = torch.Generator().manual_seed(step_seed(self.seed, step, self.rank))
        t = torch.randint(0, self.T, (x0.shape[0],), generator=gen)
        noise = self._noise(tuple(x0.shape), gen).to(self.device)
        x_t = add_noise(self.scheduler, x0, noise, t)
        target = training_target(self.scheduler, x0, noise, t)
        self.model.train()
        with autocast_ctx(self.precision, self.device):
            out = self.model(torch.cat([x_t, cond], dim=1), timesteps=t.to(self.device))
        loss = F.mse_loss(out.float(), target)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        if tc.grad_clip and tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), tc.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.lr_sched.step()
        self._ema_update(step)
        return float(loss.detach())

    @torch.no_grad()
    def _ema_update(self, step: int) -> None:
        d = self.tc.ema_decay
        if self.tc.ema_warmup:
            d = min(d, (1 + step) / (10 + step))
        ema_p = [p for p in self.ema.parameters()]
        src_p = [p.detach() for p in self.net.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - d)
        for eb, b in zip(self.ema.buffers(), self.net.buffers()):
            eb.copy_(b)

    def _build_val(self) -> None:
        vd = self.val_data
        assert vd is not None
        B = min(self.tc.batch_size, len(vd))
        batches = []
        gen = torch.Generator().manual_seed(step_seed(self.seed, 0, 0, stream=0x7A1))
        n_total = self.tc.val_batches * B
        # stratified timesteps over [0, T): every part of the schedule is represented
        ts = ((torch.arange(n_total, dtype=torch.float64) + 0.5) * self.T / n_total).long().clamp(0, self.T - 1)
        k = 0
        patch = self.cfg.model.patch_size
        coords = coordinate_grid(vd.images.shape[1:]) if patch is not None else None
        prng = np.random.default_rng([self.seed, 0x7A2])
        for b in range(self.tc.val_batches):
            idx = [(b * B + j) % len(vd) for j in range(B)]
            if patch is None:
                x0 = torch.from_numpy(vd.images[idx][:, None].astype(np.float32))
                cond = x0[:, :0]
            else:  # fixed validation patches, centred on brain
                origins = [draw_patch_origin(vd.foregrounds[i], patch, prng, 1.0) for i in idx]
                x0 = torch.from_numpy(np.stack([crop(vd.images[i], o, patch)[None] for i, o in zip(idx, origins)]))
                cond = torch.from_numpy(np.stack([crop(coords, o, patch) for o in origins]))
            t = ts[k:k + B]
            k += B
            noise = self._noise(tuple(x0.shape), gen)
            batches.append((x0, cond, noise, t))
        self._val_batches = batches

    @torch.no_grad()
    def validate(self) -> float | None:
        if self.val_data is None:
            return None
        if self._val_batches is None:
            self._build_val()
        losses = []
        for x0, cond, noise, t in self._val_batches:  # type: ignore[union-attr]
            x0, cond, noise = x0.to(self.device), cond.to(self.device), noise.to(self.device)
            x_t = add_noise(self.scheduler, x0, noise, t)
            target = training_target(self.scheduler, x0, noise, t)
            with autocast_ctx(self.precision, self.device):
                out = self.ema(torch.cat([x_t, cond], dim=1), timesteps=t.to(self.device))
            losses.append(float(F.mse_loss(out.float(), target)))
        return float(np.mean(losses))

    # -- checkpoints ------------------------------------------------------------
    def _last(self, key: str) -> float | None:
        for h in reversed(self.history):
            if h.get(key) is not None:
                return float(h[key])
        return None

    def warm_start(self, model_dir: str | Path) -> None:
        """Start from another trained model's EMA weights (the architecture must match, except that a
        patch model may add coordinate input channels to a whole-volume model: they start at zero)."""
        loaded = load_model(model_dir, device=self.device)
        net = getattr(loaded.network, "unet", loaded.network)  # a patch model's U-Net behind its sliding windows
        try:
            self.net.load_state_dict(widen_inputs(net.state_dict(), self.net.state_dict()), strict=True)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"{model_dir}: its network does not fit this config ({str(exc)[:200]})") from exc
        self.ema.load_state_dict(self.net.state_dict())
        self.data_summary["warm_start"] = {"model": str(model_dir), "model_hash": loaded.model_hash,
                                           "steps": loaded.metadata.get("steps")}

    def save(self, stopped: str | None = None, seconds: float | None = None) -> None:
        if not self.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        raw = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        ema = {k: v.detach().cpu() for k, v in self.ema.state_dict().items()}
        meta = {
            "steps": self.step,
            "final_train_loss": self._last("loss"),
            "final_val_loss": self._last("val_loss"),
            "parameters": self.n_params,
            "precision": self.precision,
            "device": str(self.device),
            "world_size": self.world,
            "seed": self.seed,
            "stopped": stopped,
            "train_seconds": seconds,
            "training_data": {"train": self.train_data.summary,
                              "val": self.val_data.summary if self.val_data is not None else None},
            **({"data_summary": self.data_summary} if self.data_summary else {}),
        }
        save_model(self.out, ema, self.cfg, meta, raw_state=raw if self.checkpoint_raw else None)
        scalars = {"history": self.history, "seed": self.seed, "config": self.cfg.to_dict(),
                   "world_size": self.world, "precision": self.precision}
        if self.scaler is not None:
            scalars["grad_scaler"] = {k: (float(v) if torch.is_tensor(v) else v)
                                      for k, v in self.scaler.state_dict().items()}
        ckpt.save_train_state(self.out, step=self.step, optimizer=self.opt, lr_scheduler=self.lr_sched,
                              ema_state=ema, raw_state=raw, scalars=scalars)
        self.plot()

    def resume(self) -> bool:
        if not (self.out / ckpt.STATE_META_FILE).is_file():
            return False
        tensors, meta = ckpt.load_train_state(self.out)
        old = meta.get("config", {})
        try:  # through Config: a setting added since, at its default, is not a difference
            old = Config.from_dict(old).to_dict()
        except (ConfigError, TypeError, ValueError):
            pass  # unreadable: the comparison below reports the differing section
        new = self.cfg.to_dict()
        # Compare as JSON: the checkpoint's lists must equal the config's tuples.
        old, new = json.loads(json.dumps(old)), json.loads(json.dumps(new))
        for section in ("preprocess", "model", "diffusion"):
            if old.get(section) != new.get(section):
                raise ckpt.CheckpointError(
                    f"{self.out}: cannot resume, the {section} section of the config differs from the checkpoint's")
        if int(meta.get("world_size", 1)) != self.world:
            log.warning("resuming with world size %d (checkpoint: %s): data order changes", self.world,
                        meta.get("world_size"))
        if int(meta.get("seed", self.seed)) != self.seed:
            log.warning("resuming with seed %d but the checkpoint used %s", self.seed, meta.get("seed"))
        tensors = {k: v.to(self.device) if not k.startswith("rng.") else v for k, v in tensors.items()}
        self.step = ckpt.restore_train_state(tensors, meta, model=self.net, ema_model=self.ema,
                                             optimizer=self.opt, lr_scheduler=self.lr_sched)
        if self.scaler is not None and meta.get("grad_scaler"):
            self.scaler.load_state_dict(meta["grad_scaler"])
        self.history = list(meta.get("history", []))
        return True

    def plot(self) -> None:
        plot_loss_curve(self.history, self.out / "loss_curve.png")

    # -- main loop ---------------------------------------------------------------
    def run(self, resume: bool = False, max_minutes: float | None = None,
            max_steps: int | None = None) -> TrainResult:
        if resume:
            if self.resume():
                log.info("resumed at step %d", self.step)
            elif self.is_main:
                log.info("no resume state in %s; starting fresh", self.out)
        total = int(max_steps if max_steps is not None else self.tc.max_steps)
        budget = None if max_minutes is None else float(max_minutes) * 60.0
        t_start = time.monotonic()
        window: list[float] = []
        step_times: list[float] = []
        stopped = "max_steps"
        start_step = self.step
        prog = TrainProgress(total, self.step, enabled=self.progress, budget=budget)
        stop_signal: list[int] = []
        previous = catch_stop_signals(stop_signal)
        try:
            while self.step < total:
                if any_rank(bool(stop_signal), self.world):  # SIGTERM/SIGINT: finish this step's bookkeeping, save, exit
                    stopped = "signal"
                    break
                if budget is not None:
                    elapsed = time.monotonic() - t_start
                    est = float(np.median(step_times[-20:])) if step_times else 0.0
                    if any_rank(elapsed + 1.2 * est > budget, self.world):
                        stopped = "time_budget"
                        break
                t0 = time.monotonic()
                loss = self.train_step(self.step)
                self.step += 1
                step_times.append(time.monotonic() - t0)
                window.append(loss)
                entry: dict[str, Any] | None = None
                if self.step % self.tc.log_every == 0 or self.step == total:
                    mean_loss = all_ranks_mean(float(np.mean(window)), self.world)
                    window = []
                    entry = {"step": self.step, "loss": mean_loss, "lr": float(self.lr_sched.get_last_lr()[0])}
                if self.step % self.tc.val_every == 0 or self.step == total:
                    if self.is_main:
                        v = self.validate()
                        if v is not None:
                            entry = entry or {"step": self.step}
                            entry["val_loss"] = v
                if entry is not None and self.is_main:
                    self.history.append(entry)
                sps = len(step_times) / max(sum(step_times), 1e-9)
                prog.update(self.step, loss, sps, self._last("val_loss"))
                if self.step % self.tc.checkpoint_every == 0 and self.step < total:
                    self.save(stopped=None, seconds=time.monotonic() - t_start)
        finally:
            prog.close()
            restore_signals(previous)
        if window and self.is_main:
            self.history.append({"step": self.step, "loss": float(np.mean(window)),
                                 "lr": float(self.lr_sched.get_last_lr()[0])})
        seconds = time.monotonic() - t_start
        if self.is_main and self.val_data is not None and (not self.history or "val_loss" not in self.history[-1]):
            if self.step > start_step:
                self.history[-1]["val_loss"] = self.validate()
        self.save(stopped=stopped, seconds=seconds)
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
        done = self.step - start_step
        return TrainResult(self.out, self.step, self._last("loss"), self._last("val_loss"), stopped, seconds,
                           (done / sum(step_times)) if step_times else None, list(self.history))


def widen_inputs(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``source`` weights shaped for ``target``: a convolution that gains input channels in the target
    (the coordinate channels of a patch model) keeps the source's weights for its first channels and
    zeros for the new ones, so the warm-started network computes exactly what the source did."""
    out = dict(source)
    for key, want in target.items():
        have = source.get(key)
        if have is None or have.shape == want.shape:
            continue
        if have.ndim == want.ndim >= 2 and have.shape[0] == want.shape[0] and have.shape[2:] == want.shape[2:] \
                and have.shape[1] < want.shape[1]:
            grown = torch.zeros_like(want)
            grown[:, :have.shape[1]] = have.to(want.dtype)
            out[key] = grown
        else:
            raise ValueError(f"{key}: shape {tuple(have.shape)} does not fit {tuple(want.shape)}")
    return out


__all__ = ["Trainer", "TrainResult", "widen_inputs"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: python -m medidiff.train --help")
