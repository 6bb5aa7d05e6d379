"""Run folders: model weights, metadata, resume state. Nothing here unpickles.

A run folder holds

* ``model.safetensors`` — EMA weights (``ema.*``) and raw weights (``raw.*``);
* ``model.json`` — full config, preprocessing parameters, schedule, training
  data summary, package version, steps, final losses, and the sha256 of
  ``model.safetensors`` (``model_hash``), verified by :func:`load_model`;
* ``train_state.safetensors`` + ``train_state.json`` — optimizer tensors and
  RNG states / scalars / history for ``--resume``.

Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.atomic import atomic_path, write_text_atomic
from ..jsonutil import json_default as _json_default
from ..model.config import Config, ConfigError
from ..model.diffusion import SchedulerFactory
from ..model.network import as_grid_denoiser, build_network
from ..preprocess_config import PreprocessConfig

MODEL_FILE = "model.safetensors"
META_FILE = "model.json"
STATE_FILE = "train_state.safetensors"
STATE_META_FILE = "train_state.json"
FORMAT = "medidiff-model"
FORMAT_VERSION = 1
log = logging.getLogger(__name__)
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")


class CheckpointError(Exception):
    """A run folder that cannot be (safely) loaded."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _version() -> str:
    try:
        from ..version import __version__

        return str(__version__)
    except Exception:  # pragma: no cover
        return "unknown"


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=metadata)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    _refuse_pickle(path)
    try:
        return load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({str(exc).splitlines()[0][:200]})") from exc


def _refuse_pickle(path: Path) -> None:
    """Refuse anything that looks like a pickle (zip-based torch.save or raw pickle) before parsing."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: missing") from exc
    if head[:1] == b"\x80" or head[:2] == b"PK":
        raise CheckpointError(f"{path}: looks like a pickle / torch.save file; medidiff only loads safetensors "
                              "and never unpickles checkpoints")
    with open(path, "rb") as fh:
        head = fh.read(9)
    # safetensors: 8-byte little-endian header length, then a JSON object.
    if len(head) < 9 or head[8:9] != b"{":
        raise CheckpointError(f"{path}: not a safetensors file (no safetensors header; a pickle or another "
                              "format?); medidiff only loads safetensors and never unpickles checkpoints")


# ----------------------------------------------------------------------------- model files

def save_model(run_dir: str | Path, ema_state: dict[str, torch.Tensor], config: Config,
               metadata: dict[str, Any], raw_state: dict[str, torch.Tensor] | None = None) -> str:
    """Write model.safetensors then model.json (with its hash). Returns the hash."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"ema.{k}": v for k, v in ema_state.items()}
    if raw_state is not None:
        tensors.update({f"raw.{k}": v for k, v in raw_state.items()})
    # The config travels inside the hashed weights file too, so an edited model.json
    # (another grid, modality, schedule) is caught at load time instead of silently
    # scoring on a grid the weights and calibration were never made for.
    _save_tensors(tensors, run_dir / MODEL_FILE,
                  metadata={"format": FORMAT, "config": json.dumps(config.to_dict(), sort_keys=True,
                                                                     default=_json_default)})
    digest = sha256_file(run_dir / MODEL_FILE)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "medidiff_version": _version(),
        "torch_version": torch.__version__,
        **metadata,
        "config": config.to_dict(),
        "preprocess": config.preprocess.to_dict(),
        "frontend": _frontend_fingerprint(config.preprocess),
        "diffusion": config.to_dict()["diffusion"],
        "model_hash": digest,
        "weights": {"ema": True, "raw": raw_state is not None},
    }
    write_text_atomic(run_dir / META_FILE, json.dumps(meta, indent=2, default=_json_default) + "\n")
    return digest


def _frontend_fingerprint(pcfg: PreprocessConfig) -> dict[str, Any] | None:
    if pcfg.space != "template":
        return None
    from ..frontend.config import fingerprint

    return fingerprint(pcfg.frontend_config())


@dataclass
class LoadedModel:
    network: torch.nn.Module  # eval mode, EMA weights
    config: Config
    preprocess_config: PreprocessConfig
    scheduler_factory: SchedulerFactory
    model_hash: str
    metadata: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    device: torch.device = torch.device("cpu")


def read_description(folder: str | Path, fmt: str = FORMAT, fmt_version: int = FORMAT_VERSION,
                     kind: str = "model") -> dict[str, Any]:
    """``folder/model.json`` checked for format and version (models and generators share this);
    pickles beside it are named, never loaded."""
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        pickles = [p.name for p in folder.glob("*") if p.suffix.lower() in PICKLE_SUFFIXES] if folder.is_dir() else []
        hint = (f"; found pickle-based file(s) {pickles}, which medidiff refuses to load" if pickles else "")
        raise CheckpointError(f"{folder}: not a medidiff {kind} folder (no {META_FILE}){hint}")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise CheckpointError(f"{meta_path}: not a medidiff {kind} description (format != {fmt!r})")
    if int(meta.get("format_version", 0)) > fmt_version:
        raise CheckpointError(f"{meta_path}: format_version {meta.get('format_version')} is newer than this "
                              f"medidiff understands ({fmt_version}); upgrade medidiff")
    return meta


def read_metadata(run_dir: str | Path) -> dict[str, Any]:
    return read_description(run_dir)


def load_model(run_dir: str | Path, device: str | torch.device = "cpu", weights: str = "ema") -> LoadedModel:
    """Load a trained model folder. Verifies the sha256 of the weights against
    model.json and refuses on mismatch; reads only safetensors + JSON."""
    run_dir = Path(run_dir)
    meta = read_metadata(run_dir)
    wpath = run_dir / MODEL_FILE
    if not wpath.is_file():
        raise CheckpointError(f"{run_dir}: {MODEL_FILE} missing")
    expected = meta.get("model_hash")
    actual = sha256_file(wpath)
    if not expected or actual != expected:
        raise CheckpointError(f"{wpath}: content hash {actual} does not match model.json ({expected}); "
                              "the weights were modified or belong to another run — refusing to load (if "
                              "training was interrupted while saving, re-run `medidiff train --resume`; otherwise "
                              "restore the model folder from its source)")
    try:
        config = Config.from_dict(meta["config"])
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"{run_dir / META_FILE}: bad config ({exc})") from exc
    tensors = _load_tensors(wpath)
    _check_config_matches_weights(wpath, config)
    if config.preprocess.space == "template":
        from ..frontend.config import check_reproducible

        try:
            for w in check_reproducible(meta.get("frontend"), config.preprocess.frontend_config()):
                log.warning("%s: %s", run_dir, w)
        except ValueError as exc:
            raise CheckpointError(f"{run_dir / META_FILE}: {exc}") from exc
    prefix = f"{weights}."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not state:
        raise CheckpointError(f"{wpath}: no {weights!r} weights stored")
    net = build_network(config.model)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{wpath}: weights do not fit the configured network ({str(exc)[:300]})") from exc
    dev = torch.device(device)
    net.to(dev).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    net = as_grid_denoiser(net, config.model, config.preprocess.grid).to(dev)
    return LoadedModel(network=net, config=config, preprocess_config=config.preprocess,
                       scheduler_factory=SchedulerFactory(config.diffusion), model_hash=actual,
                       metadata=meta, run_dir=run_dir, device=dev)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _check_config_matches_weights(wpath: Path, config: Config) -> None:
    """Refuse a model.json whose config differs from the one stored inside the
    (hash-verified) weights file: e.g. grid or modality edited by hand."""
    from safetensors import safe_open

    try:
        with safe_open(str(wpath), framework="pt") as fh:
            stored = (fh.metadata() or {}).get("config")
    except Exception:  # unreadable metadata was already reported by _load_tensors
        return
    if stored is None:  # written by an older medidiff: nothing to compare against
        return
    try:
        saved = Config.from_dict(json.loads(stored)).to_dict()
    except Exception as exc:
        raise CheckpointError(f"{wpath}: config stored with the weights is unreadable ({exc})") from exc
    now = json.loads(json.dumps(config.to_dict(), default=_json_default))
    saved = json.loads(json.dumps(saved, default=_json_default))
    if now != saved:
        a, b = _flatten(saved), _flatten(now)
        diffs = [f"{k}: {b.get(k)!r} in {META_FILE}, {a.get(k)!r} for the weights"
                 for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        raise CheckpointError(
            f"{wpath.parent / META_FILE}: config does not match the one the weights were trained with "
            f"({'; '.join(diffs[:3])}{'; ...' if len(diffs) > 3 else ''}); the model was built for another grid/"
            "modality/settings — restore the original model.json or use the matching model")


# ----------------------------------------------------------------------------- resume state

def _rng_states() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
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


def _set_rng_states(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
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
    rng_t, rng_s = _rng_states()
    tensors.update(rng_t)
    # A step-numbered tensor file, then the JSON that points at it, then cleanup:
    # a kill at any moment leaves a JSON whose tensor file exists and matches.
    state_name = f"{Path(STATE_FILE).stem}-{int(step):08d}.safetensors"
    _save_tensors(tensors, run_dir / state_name)
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
    return _load_tensors(state_path), meta


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
    _set_rng_states({k: v for k, v in tensors.items() if k.startswith("rng.")}, meta.get("rng", {}))
    return int(meta["step"])
