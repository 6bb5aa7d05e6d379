"""Training state for ``--resume``: optimizer tensors, RNG states, scalars. Nothing here unpickles.

A run folder is a model folder (:mod:`medidiff.model.store`: ``model.safetensors`` +
``model.json``) plus ``train_state-STEP.safetensors`` + ``train_state.json`` — optimizer tensors
and RNG states / scalars / history, so an interrupted run continues exactly where it stopped.

Every file is written atomically.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.atomic import write_text_atomic
from ..jsonutil import json_default as _json_default
from ..model.folder import CheckpointError, load_tensors, save_tensors, sha256_file

STATE_FILE = "train_state.safetensors"
STATE_META_FILE = "train_state.json"

__all__ = ["CheckpointError", "STATE_FILE", "STATE_META_FILE", "load_train_state",
           "restore_train_state", "rng_states", "save_train_state", "set_rng_states"]


# ----------------------------------------------------------------------------- resume state

def rng_states() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    py_state = random.getstate()
    scalars = {
        "numpy": [np_state[0], np.asarray(np_state[1]).tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return tensors, scalars


def set_rng_states(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    if "numpy" in scalars:
        n = scalars["numpy"]
        np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    if "python" in scalars:
        p = scalars["python"]
        random.setstate((p[0], tuple(p[1]), p[2]))


def save_train_state(run_dir: str | Path, *, step: int, optimizer: torch.optim.Optimizer,
                     lr_scheduler: Any, ema_state: dict[str, torch.Tensor], raw_state: dict[str, torch.Tensor],
                     scalars: dict[str, Any]) -> None:
    run_dir = Path(run_dir)
    tensors: dict[str, torch.Tensor] = {}
    tensors.update({f"model.{k}": v for k, v in raw_state.items()})
    tensors.update({f"ema.{k}": v for k, v in ema_state.items()})
    osd = optimizer.state_dict()
    opt_scalars: dict[str, Any] = {}
    for pid, st in osd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"opt.{pid}.{key}"] = val
            else:
                opt_scalars[f"{pid}.{key}"] = val
    rng_t, rng_s = rng_states()
    tensors.update(rng_t)
    # A step-numbered tensor file, then the JSON that points at it, then cleanup:
    # a kill at any moment leaves a JSON whose tensor file exists and matches.
    state_name = f"{Path(STATE_FILE).stem}-{int(step):08d}.safetensors"
    save_tensors(tensors, run_dir / state_name)
    sched_state = {k: v for k, v in lr_scheduler.state_dict().items() if k != "lr_lambdas"}
    meta = {
        "step": int(step),
        "param_groups": osd["param_groups"],
        "opt_scalars": opt_scalars,
        "lr_scheduler": sched_state,
        "rng": rng_s,
        **scalars,
        "state_file": state_name,
        "state_hash": sha256_file(run_dir / state_name),
    }
    write_text_atomic(run_dir / STATE_META_FILE, json.dumps(meta, default=_json_default) + "\n")
    for old in run_dir.glob(f"{Path(STATE_FILE).stem}*.safetensors"):
        if old.name != state_name:
            old.unlink(missing_ok=True)


def load_train_state(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    run_dir = Path(run_dir)
    meta_path = run_dir / STATE_META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{run_dir}: no resume state ({STATE_META_FILE})")
    meta = json.loads(meta_path.read_text())
    state_path = run_dir / meta.get("state_file", STATE_FILE)
    if not state_path.is_file():
        raise CheckpointError(f"{run_dir}: resume state {state_path.name} named in {STATE_META_FILE} is missing")
    actual = sha256_file(state_path)
    if actual != meta.get("state_hash"):
        raise CheckpointError(f"{state_path}: hash does not match {STATE_META_FILE}; refusing to resume")
    return load_tensors(state_path), meta


def restore_train_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any], *, model: torch.nn.Module,
                        ema_model: torch.nn.Module, optimizer: torch.optim.Optimizer, lr_scheduler: Any) -> int:
    def sub(prefix):
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    model.load_state_dict(sub("model."), strict=True)
    ema_model.load_state_dict(sub("ema."), strict=True)
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    for k, v in meta.get("opt_scalars", {}).items():
        pid, key = k.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    sd = lr_scheduler.state_dict()
    sd.update(meta["lr_scheduler"])
    lr_scheduler.load_state_dict(sd)
    set_rng_states({k: v for k, v in tensors.items() if k.startswith("rng.")}, meta.get("rng", {}))
    return int(meta["step"])
