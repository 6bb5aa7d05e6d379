"""Two-stage training of the latent-diffusion generator, resumable within time budgets.

Run folder::

    RUN/data_cache.safetensors (+ .json)   training scans preprocessed once (front end + template grid)
    RUN/autoencoder/train_state.*           stage 1: AutoencoderKL, L1 (+ optional L2) + KL
    RUN/latent/latents.safetensors (+ .json) the training set encoded once by the stage-1 EMA encoder
    RUN/latent/train_state.*                stage 2: DiffusionModelUNet on the scaled latents
    RUN/model.safetensors + model.json      the generator (written at every stage-2 checkpoint)
    RUN/loss_curve.png

Both stages run ``max_steps`` steps; a call with ``max_minutes`` stops at a checkpoint when the
budget is spent, and ``resume=True`` continues bit for bit (data order, noise and augmentation
are functions of (seed, step); the global RNG state travels in the train state). Wall and CPU
seconds (``time.process_time``: all threads of the process) add up over resumed runs.
A perceptual loss (Pinaya et al.) is left out: it needs a pretrained network, and nothing may be
downloaded. A patch-adversarial term (MONAI ``PatchDiscriminator``, least squares, weight
``train_autoencoder.adv_weight`` from step ``adv_start``) is available to sharpen the decoder;
its discriminator and optimiser are saved next to the stage (``RUN/autoencoder/discriminator/``).

Warm start (``init_from``): both networks start from another generator folder (e.g. the bundled
one); a conditioned U-Net takes the unconditional first convolution with zero weights for its
condition channels. Conditioning (``conditions``: per training scan, ``{"age", "sex"}``) enters
the latent stage only; each latent carries the condition of the scan it was encoded from.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..dataset import PreparedData, prepare
from ..io.atomic import atomic_path, write_text_atomic
from ..jsonutil import json_default
from ..model.folder import META_FILE, refuse_pickle, sha256_file
from ..preprocess_config import PreprocessConfig
from ..train import checkpoint as ckpt
from ..train.data import make_batch, sample_indices, step_seed
from ..train.lr_schedule import lr_lambda_factory
from .config import GeneratorConfig, StageConfig
from .store import build_autoencoder, build_latent_unet, save_generator

log = logging.getLogger(__name__)
STAGES = ("autoencoder", "latent")


# ----------------------------------------------------------------------------- data

def _cache_key(sources, pcfg) -> str:
    return json.dumps({"preprocess": pcfg.to_dict(), "sources": [s.path for s in sources]}, sort_keys=True,
                      default=json_default)


def _prepare_from_scan_cache(sources, pcfg, scan_cache: Path, log_fn) -> PreparedData:
    """The scans through :func:`medidiff.train.scan_cache.preprocess_cached` (shared with the benchmarks)."""
    from ..train.scan_cache import preprocess_cached

    images, fgs, ids, skipped = [], [], [], []
    for src in sources:
        try:
            im, fg = preprocess_cached(src.path, pcfg, scan_cache, log_fn)
        except Exception as exc:  # one bad file never stops training
            skipped.append({"path": src.path, "reason": str(exc)[:200]})
            continue
        images.append(im)
        fgs.append(fg)
        ids.append(src.scan_id)
    if not images:
        shape = tuple(pcfg.grid)
        return PreparedData(np.zeros((0, *shape), np.float32), np.zeros((0, *shape), bool), [],
                            {"count": 0, "skipped": skipped})
    return PreparedData(np.stack(images), np.stack(fgs), ids, {
        "count": len(images), "skipped": skipped, "model_grid": list(pcfg.grid),
        "model_spacing_mm": list(pcfg.spacing),
        "foreground_fraction_median": float(np.median([f.mean() for f in fgs]))})


def load_training_data(data: str | Path, cfg: GeneratorConfig, run_dir: Path, splits: Sequence[str] | None,
                       log_fn: Callable[[str], None] = print, scan_cache: str | Path | None = None) -> PreparedData:
    """Healthy training scans on the model grid, preprocessed once and cached in RUN (safetensors);
    ``scan_cache``: take (and leave) each scan's preprocessing in that shared cache folder."""
    from safetensors.torch import load_file, save_file

    from ..dataset import list_scans

    sources = list_scans(data, splits=list(splits) if splits else None)
    if not sources:
        raise ValueError(f"{data}: no healthy training scans found" + (f" in split(s) {list(splits)}" if splits else ""))
    key = _cache_key(sources, cfg.preprocess)
    meta_path, tens_path = run_dir / "data_cache.json", run_dir / "data_cache.safetensors"
    if meta_path.is_file() and tens_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key and meta.get("hash") == sha256_file(tens_path):
            refuse_pickle(tens_path)
            t = load_file(str(tens_path))
            return PreparedData(t["images"].numpy(), t["foregrounds"].numpy().astype(bool), meta["scan_ids"],
                                meta["summary"])
    log_fn(f"preprocessing {len(sources)} training scan(s) once (cached in {tens_path.name})")
    prepared = _prepare_from_scan_cache(sources, cfg.preprocess, Path(scan_cache), log_fn) if scan_cache else \
        prepare(sources, cfg.preprocess)
    if not len(prepared):
        raise ValueError(f"{data}: no training scan survived preprocessing: {prepared.summary.get('skipped')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(tens_path) as tmp:
        save_file({"images": torch.from_numpy(prepared.images),
                   "foregrounds": torch.from_numpy(prepared.foregrounds.astype(np.uint8))}, str(tmp))
    write_text_atomic(meta_path, json.dumps({"key": key, "hash": sha256_file(tens_path),
                                             "scan_ids": prepared.scan_ids, "summary": prepared.summary},
                                            default=json_default) + "\n")
    return prepared


# ----------------------------------------------------------------------------- one stage

def _normalised(fingerprint: dict[str, Any] | None) -> dict[str, Any] | None:
    """A stored fingerprint with its preprocessing re-read through PreprocessConfig, so a front-end
    setting added since (at its default) does not block a resume."""
    if not fingerprint or "preprocess" not in fingerprint:
        return fingerprint
    try:
        pre = PreprocessConfig.from_dict(fingerprint["preprocess"]).to_dict()
    except (TypeError, ValueError):
        return fingerprint
    return json.loads(json.dumps({**fingerprint, "preprocess": pre}, default=json_default))


class Stage:
    """AdamW + warm-up/cosine + EMA + gradient clipping + bf16 autocast, checkpointed with
    :mod:`medidiff.train.checkpoint` (safetensors; never pickle)."""

    def __init__(self, name: str, net: torch.nn.Module, scfg: StageConfig, out: Path, fingerprint: dict[str, Any],
                 loss_fn: Callable[[torch.nn.Module, int], tuple[torch.Tensor, dict[str, float]]],
                 device: torch.device):
        from ..runtime import resolve_precision

        self.name, self.net, self.scfg, self.out, self.loss_fn = name, net.to(device), scfg, out, loss_fn
        self.fingerprint = json.loads(json.dumps(fingerprint, default=json_default))
        self.device = device
        self.precision = resolve_precision(scfg.precision, device)
        self.ema = copy.deepcopy(self.net).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=scfg.lr, weight_decay=scfg.weight_decay)
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lr_lambda_factory(scfg.warmup_steps, scfg.max_steps, scfg.min_lr_ratio))
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.wall_seconds = 0.0
        self.cpu_seconds = 0.0
        self.extras: list[Any] = []  # objects with save(folder) / resume(folder) (e.g. the discriminator)

    @property
    def finished(self) -> bool:
        return self.step >= int(self.scfg.max_steps)

    def resume(self) -> bool:
        if not (self.out / ckpt.STATE_META_FILE).is_file():
            return False
        tensors, meta = ckpt.load_train_state(self.out)
        if _normalised(meta.get("fingerprint")) != self.fingerprint:
            raise ckpt.CheckpointError(f"{self.out}: cannot resume the {self.name} stage: its config (networks, "
                                       "preprocessing, seed or the stage-1 weights it builds on) changed")
        self.step = ckpt.restore_train_state(tensors, meta, model=self.net, ema_model=self.ema, optimizer=self.opt,
                                             lr_scheduler=self.lr_sched)
        self.history = list(meta.get("history", []))
        self.wall_seconds = float(meta.get("wall_seconds", 0.0))
        self.cpu_seconds = float(meta.get("cpu_seconds", 0.0))
        for extra in self.extras:
            extra.resume(self.out, self.step)
        return True

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for extra in self.extras:  # first: the stage's own train_state.json is the commit point
            extra.save(self.out, self.step)
        raw = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        ema = {k: v.detach().cpu() for k, v in self.ema.state_dict().items()}
        ckpt.save_train_state(self.out, step=self.step, optimizer=self.opt, lr_scheduler=self.lr_sched,
                              ema_state=ema, raw_state=raw,
                              scalars={"history": self.history, "fingerprint": self.fingerprint,
                                       "wall_seconds": self.wall_seconds, "cpu_seconds": self.cpu_seconds,
                                       "precision": self.precision, "max_steps": int(self.scfg.max_steps)})

    def _ema_update(self) -> None:
        n = self.step
        decay = min(float(self.scfg.ema_decay), (1 + n) / (10 + n))
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.net.parameters()):
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
            for e, b in zip(self.ema.buffers(), self.net.buffers()):
                e.copy_(b)

    def train_step(self) -> dict[str, float]:
        from ..runtime import autocast_ctx

        self.net.train()
        with autocast_ctx(self.precision, self.device):
            loss, parts = self.loss_fn(self.net, self.step)
        self.opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss.detach()).all():
            # a non-finite loss would poison the weights and their EMA: skip this update, count it
            log.warning("%s step %d: non-finite loss, update skipped", self.name, self.step + 1)
            parts = {**parts, "skipped_nonfinite": 1.0}
        else:
            loss.float().backward()
            if self.scfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), float(self.scfg.grad_clip))
            self.opt.step()
        self.lr_sched.step()
        self._ema_update()
        self.step += 1
        return {"loss": float(loss.detach()), **parts}

    def run(self, deadline: float | None, on_checkpoint: Callable[["Stage"], None] | None = None,
            log_fn: Callable[[str], None] = print, max_new_steps: int | None = None) -> str:
        """Train until max_steps, the wall-clock ``deadline`` (time.monotonic()) or ``max_new_steps``
        steps in this call; returns why it stopped."""
        from ..train.stop_signals import catch_stop_signals, restore_signals

        start = self.step
        stop_signal: list[int] = []
        previous = catch_stop_signals(stop_signal)  # SIGTERM/Ctrl-C: stop at a step boundary and save
        try:
            stopped = self._loop(deadline, on_checkpoint, log_fn, max_new_steps, stop_signal, start)
        finally:
            restore_signals(previous)
        return stopped

    def _loop(self, deadline, on_checkpoint, log_fn, max_new_steps, stop_signal: list[int], start: int) -> str:
        """The step loop of :meth:`run`; ``stop_signal`` fills when SIGTERM/SIGINT arrives."""
        stopped = "max_steps"
        window: list[dict[str, float]] = []
        t_wall, t_cpu = time.monotonic(), time.process_time()
        last_save = start
        while not self.finished:
            if stop_signal:
                stopped = "signal"
                break
            if deadline is not None and time.monotonic() >= deadline:
                stopped = "time_budget"
                break
            if max_new_steps is not None and self.step - start >= max_new_steps:
                stopped = "step_budget"
                break
            window.append(self.train_step())
            if self.step % int(self.scfg.log_every) == 0 or self.finished:
                keys = list(dict.fromkeys(k for w in window for k in w))  # a term may start mid-window
                row = {"step": self.step, **{k: float(np.mean([w[k] for w in window if k in w])) for k in keys},
                       "lr": float(self.lr_sched.get_last_lr()[0])}
                self.history.append(row)
                window = []
                log_fn(f"{self.name} step {self.step}/{self.scfg.max_steps}: loss {row['loss']:.5f}")
            if self.step % int(self.scfg.checkpoint_every) == 0 and self.step != last_save:
                self._account(t_wall, t_cpu)
                t_wall, t_cpu = time.monotonic(), time.process_time()
                self.save()
                last_save = self.step
                if on_checkpoint:
                    on_checkpoint(self)
        self._account(t_wall, t_cpu)
        if self.step != last_save or not (self.out / ckpt.STATE_META_FILE).is_file():
            self.save()
            if on_checkpoint:
                on_checkpoint(self)
        return stopped

    def _account(self, t_wall: float, t_cpu: float) -> None:
        self.wall_seconds += time.monotonic() - t_wall
        self.cpu_seconds += time.process_time() - t_cpu

    def summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        return {"steps": self.step, "max_steps": int(self.scfg.max_steps), "final_loss": last.get("loss"),
                "wall_seconds": round(self.wall_seconds, 1), "cpu_seconds": round(self.cpu_seconds, 1),
                "precision": self.precision, "parameters": sum(p.numel() for p in self.net.parameters()),
                "history": self.history}


# ----------------------------------------------------------------------------- losses

class Discriminator:
    """The patch discriminator of the autoencoder stage (MONAI ``PatchDiscriminator``, instance norm,
    least-squares ``PatchAdversarialLoss``), its AdamW optimiser and their checkpoint."""

    def __init__(self, scfg: StageConfig, device: torch.device):
        from monai.losses import PatchAdversarialLoss
        from monai.networks.nets import PatchDiscriminator

        self.net = PatchDiscriminator(spatial_dims=3, num_layers_d=int(scfg.disc_layers),
                                      channels=int(scfg.disc_channels), in_channels=1, out_channels=1,
                                      norm="INSTANCE").to(device)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=float(scfg.disc_lr or scfg.lr), betas=(0.5, 0.9))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda _: 1.0)
        self.loss = PatchAdversarialLoss(criterion="least_squares")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 outside autocast: instance norm over few voxels is fragile in bf16 (NaN seen in tests)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.net(x.contiguous().float())[-1]

    def update(self, real: torch.Tensor, fake: torch.Tensor) -> float:
        """One discriminator step on real and (detached) reconstructed volumes."""
        self.net.train()
        d_loss = 0.5 * (self.loss(self.logits(fake.detach()), target_is_real=False, for_discriminator=True)
                        + self.loss(self.logits(real), target_is_real=True, for_discriminator=True))
        self.opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt.step()
        return float(d_loss.detach())

    def generator_term(self, fake: torch.Tensor) -> torch.Tensor:
        for p in self.net.parameters():
            p.requires_grad_(False)
        try:
            return self.loss(self.logits(fake), target_is_real=True, for_discriminator=False)
        finally:
            for p in self.net.parameters():
                p.requires_grad_(True)

    def save(self, folder: Path, step: int) -> None:
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        sub = folder / "discriminator"
        sub.mkdir(parents=True, exist_ok=True)
        ckpt.save_train_state(sub, step=step, optimizer=self.opt, lr_scheduler=self.sched, ema_state=state,
                              raw_state=state, scalars={})

    def resume(self, folder: Path, step: int) -> None:
        sub = folder / "discriminator"
        if not (sub / ckpt.STATE_META_FILE).is_file():
            raise ckpt.CheckpointError(f"{sub}: the discriminator's state is missing; cannot resume exactly")
        rng = ckpt.rng_states()  # the stage's own RNG state was restored first: keep it
        tensors, meta = ckpt.load_train_state(sub)
        if int(meta["step"]) != int(step):
            log.warning("%s: discriminator saved at step %s, autoencoder at %s", sub, meta["step"], step)
        ckpt.restore_train_state(tensors, meta, model=self.net, ema_model=copy.deepcopy(self.net),
                                 optimizer=self.opt, lr_scheduler=self.sched)
        ckpt.set_rng_states(*rng)


def autoencoder_loss(data: PreparedData, scfg: StageConfig, disc: Discriminator | None = None):
    def loss_fn(ae: torch.nn.Module, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        dev = next(ae.parameters()).device
        x = torch.from_numpy(make_batch(data, step, scfg.batch_size, 0, 1, scfg.seed, scfg.augment)).to(dev)
        recon, mu, sigma = ae(x)  # z drawn with the global RNG: saved in the train state, so resume is exact
        recon = recon.float()
        l1 = (recon - x).abs().mean()
        mu, sigma = mu.float(), sigma.float()
        kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1).sum(dim=(1, 2, 3, 4)).mean()
        loss = l1 + float(scfg.kl_weight) * kl
        parts = {"l1": float(l1.detach()), "kl": float(kl.detach())}
        if scfg.l2_weight:
            l2 = (recon - x).pow(2).mean()
            loss = loss + float(scfg.l2_weight) * l2
            parts["l2"] = float(l2.detach())
        if disc is not None and step >= int(scfg.adv_start):
            parts["d_loss"] = disc.update(x, recon)
            g = disc.generator_term(recon)
            loss = loss + float(scfg.adv_weight) * g
            parts["g_adv"] = float(g.detach())
        return loss, parts

    return loss_fn


def latent_loss(latents: torch.Tensor, cfg: GeneratorConfig, cond: torch.Tensor | None = None):
    """MSE on the velocity (rflow: target z0 - noise) or on the noise (ddpm). ``cond``: (N, K)
    condition channels of the N latents (conditioned generators), dropped per item with
    ``train_latent.condition_dropout`` from a stream of its own."""
    from .conditioning import drop_conditions, with_channels
    from .sampler import ddpm_latent_scheduler, rflow_scheduler

    scfg, lcfg = cfg.train_latent, cfg.latent
    T = int(lcfg.num_train_timesteps)
    sched = rflow_scheduler(lcfg) if lcfg.scheduler == "rflow" else ddpm_latent_scheduler(lcfg)

    def loss_fn(unet: torch.nn.Module, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        from ..model.diffusion import add_noise

        dev = next(unet.parameters()).device
        idx = sample_indices(step, len(latents), scfg.batch_size, 0, 1, scfg.seed)
        z0 = latents[idx].to(dev)
        g = torch.Generator().manual_seed(step_seed(scfg.seed, step, 0, stream=7))
        noise = torch.randn(z0.shape, generator=g).to(dev)
        c = None
        if cond is not None:
            gc = torch.Generator().manual_seed(step_seed(scfg.seed, step, 0, stream=11))
            c = drop_conditions(cond[idx], float(scfg.condition_dropout), gc).to(dev)
        if lcfg.scheduler == "rflow":
            t = (torch.rand(len(idx), generator=g) * T).to(dev)
            v = unet(with_channels(sched.add_noise(z0, noise, t), c), timesteps=t).float()
            return (v - (z0 - noise)).pow(2).mean(), {}
        t = torch.randint(0, T, (len(idx),), generator=g)
        eps = unet(with_channels(add_noise(sched, z0, noise, t), c), timesteps=t.to(dev)).float()
        return (eps - noise).pow(2).mean(), {}

    return loss_fn


# ----------------------------------------------------------------------------- latents

def encode_training_set(ae: torch.nn.Module, data: PreparedData, cfg: GeneratorConfig, out: Path, ae_hash: str,
                        log_fn: Callable[[str], None] = print) -> tuple[torch.Tensor, float]:
    """z_mu of every training scan and of ``augment_copies`` augmented copies, scaled to unit std
    (the latent scale factor of Rombach et al.); cached in RUN/latent/ keyed by the encoder's hash."""
    from safetensors.torch import load_file, save_file

    from ..train.data import augment

    scfg = cfg.train_latent
    path, meta_path = out / "latents.safetensors", out / "latents.json"
    key = {"autoencoder": ae_hash, "copies": int(scfg.augment_copies), "augment": cfg.to_dict()["train_latent"]["augment"],
           "seed": int(scfg.seed), "n": len(data)}
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key and meta.get("hash") == sha256_file(path):
            refuse_pickle(path)
            return load_file(str(path))["latents"], float(meta["scale_factor"])
    n_copies = int(scfg.augment_copies)
    log_fn(f"encoding {len(data)} scan(s) x {1 + n_copies} (scan + augmented copies) into latents")
    dev = next(ae.parameters()).device
    zs = []
    with torch.no_grad():
        for i in range(len(data)):
            for c in range(1 + n_copies):
                img = data.images[i]
                if c:
                    rng = np.random.default_rng([int(scfg.seed), i, c, 0x1A7])
                    img = augment(img, data.foregrounds[i], scfg.augment, rng)
                mu, _ = ae.encode(torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None].to(dev))
                zs.append(mu.float().cpu()[0])
    latents = torch.stack(zs)
    scale = float(1.0 / latents.std().clamp_min(1e-6))
    latents = (latents * scale).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"latents": latents}, str(tmp))
    write_text_atomic(meta_path, json.dumps({"key": key, "hash": sha256_file(path), "scale_factor": scale,
                                             "shape": list(latents.shape)}) + "\n")
    return latents, scale


# ----------------------------------------------------------------------------- both stages

def _stage_done(run_dir: Path, name: str) -> tuple[int, int] | None:
    p = run_dir / name / ckpt.STATE_META_FILE
    if not p.is_file():
        return None
    meta = json.loads(p.read_text())
    return int(meta["step"]), int(meta.get("max_steps", 0))


def scan_conditions(cfg: GeneratorConfig, scan_ids: Sequence[str],
                    conditions: dict[str, dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """The condition of every training scan (canonical, only the generator's condition names), or
    None for an unconditional generator. Refuses a conditioned generator without any condition."""
    from .conditioning import canonical

    names = tuple(cfg.latent.conditioning)
    if not names:
        return None
    conditions = conditions or {}
    out = [{k: v for k, v in canonical(conditions.get(sid)).items() if k in names} for sid in scan_ids]
    if not any(out):
        raise ValueError(f"latent.conditioning={list(names)} but no training scan has a condition (give the "
                         "training scans' age/sex, e.g. pipelines/train_generator.py --cohort)")
    return out


def conditioning_summary(conds: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """What the conditioned generator saw in training: age range and count, sexes (for model.json)."""
    if conds is None:
        return None
    ages = [c["age"] for c in conds if "age" in c]
    sexes = [c["sex"] for c in conds if "sex" in c]
    return {"n_scans": len(conds), "n_with_age": len(ages),
            "age_min": min(ages) if ages else None, "age_max": max(ages) if ages else None,
            "age_median": float(np.median(ages)) if ages else None,
            "sex_counts": {s: sexes.count(s) for s in sorted(set(sexes))}}


def _init_states(init_from: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str]:
    """EMA weights of both networks of a generator folder (hash checked), and its hash."""
    from .store import load_generator

    loaded = load_generator(init_from, "cpu")
    return ({k: v.clone() for k, v in loaded.autoencoder.state_dict().items()},
            {k: v.clone() for k, v in loaded.unet.state_dict().items()}, loaded.model_hash)


def _autoencoder_stage(cfg: GeneratorConfig, data: PreparedData, run_dir: Path, base: dict[str, Any],
                       init: tuple | None, init_from: str | Path | None, dev) -> Stage:
    """Stage 1 (autoencoder, plus its discriminator when adversarial), seeded, optionally from ``init``."""
    torch.manual_seed(cfg.train_autoencoder.seed)
    ae_net = build_autoencoder(cfg.autoencoder)
    if init:
        try:
            ae_net.load_state_dict(init[0], strict=True)
        except RuntimeError as exc:
            raise ValueError(f"--init-from {init_from}: its autoencoder does not fit autoencoder.* of this config "
                             f"({str(exc)[:200]})") from exc
    sa = cfg.train_autoencoder
    disc = Discriminator(sa, dev) if sa.adv_weight > 0 else None
    ae_stage = Stage("autoencoder", ae_net, sa, run_dir / "autoencoder",
                     {**base, "autoencoder": cfg.to_dict()["autoencoder"], "train": cfg.to_dict()["train_autoencoder"]},
                     autoencoder_loss(data, sa, disc), dev)
    if disc is not None:
        ae_stage.extras.append(disc)
    return ae_stage


def _autoencoder_hash(run_dir: Path) -> str:
    """Hash of the autoencoder's saved state: the latent stage and its cached latents are tied to it."""
    return sha256_file(run_dir / "autoencoder" / json.loads(
        (run_dir / "autoencoder" / ckpt.STATE_META_FILE).read_text())["state_file"])


def _latent_stage(cfg: GeneratorConfig, run_dir: Path, base: dict[str, Any], latents: torch.Tensor, scale: float,
                  ae_hash: str, conds: list[dict[str, Any]] | None, init: tuple | None,
                  init_from: str | Path | None, dev, log_fn: Callable[[str], None]) -> Stage:
    """Stage 2 (latent U-Net), seeded, optionally from ``init`` (widened for condition channels)."""
    from .conditioning import condition_batch, load_widened

    torch.manual_seed(cfg.train_latent.seed)
    unet = build_latent_unet(cfg.latent, cfg.autoencoder.latent_channels)
    if init:
        try:
            widened = load_widened(unet, init[1])
        except RuntimeError as exc:
            raise ValueError(f"--init-from {init_from}: its latent U-Net does not fit latent.* of this config "
                             f"({str(exc)[:200]})") from exc
        if widened:
            log_fn(f"latent: condition channels added to {', '.join(widened)} (zero-initialised)")
    per_copy = 1 + int(cfg.train_latent.augment_copies)
    cond_t = None
    if conds is not None:  # latents are ordered scan-major: latent k comes from scan k // per_copy
        cond_t = condition_batch([conds[k // per_copy] for k in range(len(latents))], cfg.latent)
    return Stage("latent", unet, cfg.train_latent, run_dir / "latent",
                 {**base, "latent": cfg.to_dict()["latent"], "train": cfg.to_dict()["train_latent"],
                  "autoencoder_state": ae_hash, "scale_factor": scale,
                  **({"conditions": conds} if conds is not None else {})},
                 latent_loss(latents, cfg, cond_t), dev)


def _generator_meta(ae_stage: Stage, lat_stage: Stage, n_latents: int, data: PreparedData,
                    conds: list[dict[str, Any]] | None, init: tuple | None,
                    init_from: str | Path | None) -> dict[str, Any]:
    """What model.json records about training: cost, loss curves, data, conditioning, origin."""
    return {"training": {"autoencoder": _brief(ae_stage.summary()), "latent": _brief(lat_stage.summary()),
                         "cpu_seconds_total": round(ae_stage.cpu_seconds + lat_stage.cpu_seconds, 1),
                         "wall_seconds_total": round(ae_stage.wall_seconds + lat_stage.wall_seconds, 1),
                         "n_latents": int(n_latents)},
            "training_data": {**data.summary, "scan_ids": data.scan_ids},
            "conditioning": conditioning_summary(conds),
            **({"init_from": {"path": str(init_from), "model_hash": init[2]}} if init else {}),
            "steps": lat_stage.step}


def train_generator(cfg: GeneratorConfig, data: str | Path, out: str | Path, *, splits: Sequence[str] | None = None,
                    resume: bool = False, max_minutes: float | None = None, max_new_steps: int | None = None,
                    device: str = "cpu", log_fn: Callable[[str], None] = print,
                    conditions: dict[str, dict[str, Any]] | None = None,
                    init_from: str | Path | None = None, scan_cache: str | Path | None = None) -> dict[str, Any]:
    """Stage 1 until its max_steps, then stage 2, within ``max_minutes`` of wall clock and
    ``max_new_steps`` steps of both stages together (None: no limit). Without ``resume`` the run
    folder must not hold a started run. ``conditions``: scan id -> ``{"age", "sex"}`` for a
    conditioned generator; ``init_from``: a generator folder both networks start from."""
    from ..runtime import resolve_device

    run_dir = Path(out)
    dev = resolve_device(device)
    if not resume and any(_stage_done(run_dir, s) for s in STAGES):
        raise ValueError(f"{run_dir} already holds a generator run; pass --resume to continue it or use another --out")
    deadline = time.monotonic() + 60.0 * float(max_minutes) if max_minutes else None
    data_ = load_training_data(data, cfg, run_dir, splits, log_fn, scan_cache)
    conds = scan_conditions(cfg, data_.scan_ids, conditions)
    init = _init_states(init_from) if init_from else None
    base = {"preprocess": cfg.to_dict()["preprocess"], "scan_ids": data_.scan_ids,
            **({"init_from": init[2]} if init else {})}

    ae_stage = _autoencoder_stage(cfg, data_, run_dir, base, init, init_from, dev)
    if resume and ae_stage.resume():
        log_fn(f"autoencoder: resumed at step {ae_stage.step}")
    report: dict[str, Any] = {"run_dir": str(run_dir), "stopped": None}
    if not ae_stage.finished:
        ae_start = ae_stage.step
        report["stopped"] = ae_stage.run(deadline, log_fn=log_fn, max_new_steps=max_new_steps)
        if max_new_steps is not None:
            max_new_steps -= ae_stage.step - ae_start
        _plot(run_dir, ae_stage, None)
    report["autoencoder"] = ae_stage.summary()
    if not ae_stage.finished:
        report["latent"] = None
        _write_report(run_dir, report)
        return report

    ae_state = {k: v.detach().cpu() for k, v in ae_stage.ema.state_dict().items()}
    ae_hash = _autoencoder_hash(run_dir)
    latents, scale = encode_training_set(ae_stage.ema, data_, cfg, run_dir / "latent", ae_hash, log_fn)
    lat_stage = _latent_stage(cfg, run_dir, base, latents, scale, ae_hash, conds, init, init_from, dev, log_fn)
    if resume and lat_stage.resume():
        log_fn(f"latent: resumed at step {lat_stage.step}")

    def export(stage: Stage) -> None:
        unet_state = {k: v.detach().cpu() for k, v in stage.ema.state_dict().items()}
        meta = _generator_meta(ae_stage, stage, len(latents), data_, conds, init, init_from)
        save_generator(run_dir, cfg, ae_state, unet_state, scale, meta)
        _plot(run_dir, ae_stage, stage)

    if lat_stage.finished and not (run_dir / META_FILE).is_file():
        export(lat_stage)
    if not lat_stage.finished:
        report["stopped"] = lat_stage.run(deadline, on_checkpoint=export, log_fn=log_fn, max_new_steps=max_new_steps)
    report["latent"] = lat_stage.summary()
    report["scale_factor"] = scale
    report["model"] = str(run_dir) if (run_dir / META_FILE).is_file() else None
    report["finished"] = lat_stage.finished
    _write_report(run_dir, report)
    return report


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "history"} | {"loss_curve": [
        (h["step"], round(h["loss"], 6)) for h in summary.get("history", [])]}


def _write_report(run_dir: Path, report: dict[str, Any]) -> None:
    slim = {k: (_brief(v) if isinstance(v, dict) and "history" in v else v) for k, v in report.items()}
    write_text_atomic(run_dir / "training.json", json.dumps(slim, indent=2, default=json_default) + "\n")


def _plot(run_dir: Path, ae: Stage, lat: Stage | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, stage, title in ((axes[0], ae, "autoencoder (L1 + KL)"), (axes[1], lat, "latent diffusion (MSE)")):
        ax.set_title(title, fontsize=9)
        if stage is not None and stage.history:
            ax.plot([h["step"] for h in stage.history], [h["loss"] for h in stage.history])
            ax.set_yscale("log")
        ax.set_xlabel("step")
    fig.tight_layout()
    with atomic_path(run_dir / "loss_curve.png") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
