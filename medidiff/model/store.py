"""The pixel-space model folder (``medidiff train``'s output): save and load. Nothing here unpickles.

``model.safetensors`` holds the EMA weights (``ema.*``) and, optionally, the raw weights
(``raw.*``); ``model.json`` (format ``medidiff-model``) records the full config, preprocessing
parameters, schedule, training data summary, package version, steps, final losses, and the sha256
of ``model.safetensors`` (``model_hash``), verified by :func:`load_model`. The folder mechanics
(hashing, safetensors, pickle refusal) are :mod:`medidiff.model.folder`'s.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..jsonutil import json_default
from ..preprocess_config import PreprocessConfig
from .config import Config, ConfigError
from .diffusion import SchedulerFactory
from .folder import (META_FILE, PIXEL_FORMAT, CheckpointError, check_frontend, frontend_fingerprint, load_tensors,
                     package_version, read_description, read_header, restore_weights, verified_weights,
                     write_description, write_weights)
from .network import as_grid_denoiser, build_network

FORMAT = PIXEL_FORMAT
FORMAT_VERSION = 1
log = logging.getLogger(__name__)


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
    digest = write_weights(run_dir, tensors, header={
        "format": FORMAT, "config": json.dumps(config.to_dict(), sort_keys=True, default=json_default)})
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "medidiff_version": package_version(),
        "torch_version": torch.__version__,
        **metadata,
        "config": config.to_dict(),
        "preprocess": config.preprocess.to_dict(),
        "frontend": frontend_fingerprint(config.preprocess),
        "diffusion": config.to_dict()["diffusion"],
        "model_hash": digest,
        "weights": {"ema": True, "raw": raw_state is not None},
    }
    write_description(run_dir, meta)
    return digest


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


def read_metadata(run_dir: str | Path) -> dict[str, Any]:
    """A pixel model's model.json, checked for format and version."""
    return read_description(run_dir, FORMAT, FORMAT_VERSION)


def load_model(run_dir: str | Path, device: str | torch.device = "cpu", weights: str = "ema") -> LoadedModel:
    """Load a trained model folder. Verifies the sha256 of the weights against
    model.json and refuses on mismatch; reads only safetensors + JSON."""
    run_dir = Path(run_dir)
    meta = read_metadata(run_dir)
    wpath, actual = verified_weights(
        run_dir, meta, owner="run",
        hint=" (if training was interrupted while saving, re-run `medidiff train --resume`; otherwise "
             "restore the model folder from its source)")
    try:
        config = Config.from_dict(meta["config"])
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"{run_dir / META_FILE}: bad config ({exc})") from exc
    tensors = load_tensors(wpath)
    _check_config_matches_weights(wpath, config)
    for w in check_frontend(meta, config.preprocess, run_dir):
        log.warning("%s: %s", run_dir, w)
    prefix = f"{weights}."
    if not any(k.startswith(prefix) for k in tensors):
        raise CheckpointError(f"{wpath}: no {weights!r} weights stored")
    dev = torch.device(device)
    net = restore_weights(build_network(config.model), tensors, prefix, wpath, what="weights").to(dev)
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
    try:
        stored = read_header(wpath).get("config")
    except Exception:  # unreadable metadata was already reported by load_tensors
        return
    if stored is None:  # written by an older medidiff: nothing to compare against
        return
    try:
        saved = Config.from_dict(json.loads(stored)).to_dict()
    except Exception as exc:
        raise CheckpointError(f"{wpath}: config stored with the weights is unreadable ({exc})") from exc
    now = json.loads(json.dumps(config.to_dict(), default=json_default))
    saved = json.loads(json.dumps(saved, default=json_default))
    if now != saved:
        a, b = _flatten(saved), _flatten(now)
        diffs = [f"{k}: {b.get(k)!r} in {META_FILE}, {a.get(k)!r} for the weights"
                 for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        raise CheckpointError(
            f"{wpath.parent / META_FILE}: config does not match the one the weights were trained with "
            f"({'; '.join(diffs[:3])}{'; ...' if len(diffs) > 3 else ''}); the model was built for another grid/"
            "modality/settings — restore the original model.json or use the matching model")
