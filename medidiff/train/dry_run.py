"""``medidiff train --dry-run``: what one training step of a config costs on this machine
(parameters, precision, peak memory, seconds), measured on random data."""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from ..model.config import Config
from ..model.diffusion import add_noise, build_scheduler, training_target
from ..model.network import build_network, count_parameters
from ..model.noise import make_noise
from ..runtime import autocast_ctx, resolve_device, resolve_precision, set_threads


def dry_run_report(cfg: Config, device: str = "auto", measure: bool = True) -> dict[str, Any]:
    """Parameter count, precision, and (measured) peak memory / time of one training step."""
    import resource

    dev = resolve_device(device)
    set_threads()
    net = build_network(cfg.model).to(dev)
    precision = resolve_precision(cfg.train.precision, dev)
    rep: dict[str, Any] = {"parameters": count_parameters(net), "device": str(dev), "precision": precision,
                           "threads": torch.get_num_threads(),
                           "batch_shape": [cfg.train.batch_size, 1, *(cfg.model.patch_size or cfg.preprocess.grid)]}
    if not measure:
        return rep
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.train.lr)
    sched = build_scheduler(cfg.diffusion)
    shape = tuple(rep["batch_shape"])
    n_cond = 3 if cfg.model.patch_size is not None else 0
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for i in range(2):
        g = torch.Generator().manual_seed(i)
        x0 = torch.rand(shape, generator=g).to(dev)
        t = torch.randint(0, cfg.diffusion.num_train_timesteps, (shape[0],), generator=g)
        noise = make_noise(cfg.diffusion.noise, shape, g, **dict(cfg.diffusion.noise_params)).to(dev)
        t0 = time.monotonic()
        with autocast_ctx(precision, dev):
            cond = torch.zeros((shape[0], n_cond, *shape[2:]), device=dev)
            out = net(torch.cat([add_noise(sched, x0, noise, t), cond], dim=1), timesteps=t.to(dev))
        loss = F.mse_loss(out.float(), training_target(sched, x0, noise, t))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.monotonic() - t0)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rep.update({"peak_rss_mib": round(rss1, 1), "step_rss_delta_mib": round(rss1 - rss0, 1),
                "seconds_per_step": round(times[-1], 3)})
    if dev.type == "cuda":
        rep["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    return rep
