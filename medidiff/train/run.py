"""One training run from the command line's arguments: find the scans, preprocess them once, hold
out validation scans, then train (single process or one rank under torchrun)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..dataset import list_scans, prepare
from ..model.config import Config
from ..runtime import resolve_device, set_threads
from .distributed import init_distributed
from .loop import Trainer, TrainResult

log = logging.getLogger(__name__)


def split_holdout(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, val) indices; at least one val scan when n >= 4 and fraction > 0."""
    if fraction <= 0 or n < 4:
        return list(range(n)), []
    k = max(1, int(round(n * fraction)))
    perm = np.random.default_rng([int(seed), 0x5E1]).permutation(n)
    val = sorted(int(i) for i in perm[:k])
    return [i for i in range(n) if i not in set(val)], val


def run_training(cfg: Config, data: str | Path, out: str | Path, *, resume: bool = False,
                 max_minutes: float | None = None, device: str = "auto", seed: int | None = None,
                 train_split: str | None = "train", val_split: str | None = None,
                 val_data: str | Path | None = None, progress: bool = True,
                 threads: int | None = None, init_from: str | Path | None = None) -> TrainResult:
    """Find scans, preprocess once, train. Works single-process and under torchrun.

    ``init_from``: a trained model folder whose EMA weights start this run (warm start,
    same architecture; ignored when resuming, where the checkpoint wins)."""
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    set_threads(local_world if dev.type == "cpu" else 1, threads)
    rank, world, _ = init_distributed(dev)
    seed = int(cfg.train.seed if seed is None else seed)
    data = Path(data)
    is_manifest = data.is_file() and data.suffix.lower() in (".csv", ".tsv")
    splits = [train_split] if (is_manifest and train_split) else None
    sources = list_scans(data, splits)
    if not sources:
        raise ValueError(f"{data}: no training scans found" + (f" in split {train_split!r}" if splits else ""))
    prepared = prepare(sources, cfg.preprocess)
    if len(prepared) == 0:
        raise ValueError(f"{data}: none of the {len(sources)} scans could be preprocessed")
    if val_data is not None or (is_manifest and val_split):
        vsrc = list_scans(val_data or data, [val_split] if val_split else None)
        val = prepare(vsrc, cfg.preprocess)
        train_set = prepared
    else:
        tr_idx, va_idx = split_holdout(len(prepared), cfg.train.val_fraction, seed)
        train_set = prepared.subset(tr_idx)
        val = prepared.subset(va_idx) if va_idx else None
    if rank == 0:
        log.info("training on %d scans, validating on %d", len(train_set), 0 if val is None else len(val))
    trainer = Trainer(cfg, train_set, val, out, device=dev, seed=seed, progress=progress,
                      data_summary={"source": str(data), "train_split": train_split, "val_split": val_split})
    if init_from is not None and not resume:
        trainer.warm_start(init_from)
    try:
        return trainer.run(resume=resume, max_minutes=max_minutes)
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
