"""Model folders on disk: the mechanics every kind of trained model shares. Nothing here unpickles.

A model folder holds

* ``model.safetensors`` — the weights; its safetensors header carries the format name and a copy
  of the config, so a hand-edited ``model.json`` is caught at load time;
* ``model.json`` — the description: ``format`` (which kind of model), ``format_version``, the
  config and preprocessing, what training did, and the sha256 of ``model.safetensors``
  (``model_hash``), checked on every load.

Two kinds exist: pixel-space diffusion models (format ``medidiff-model``, written by ``medidiff
train``; :mod:`medidiff.model.store`) and latent-diffusion generators (format
``medidiff-generator``; :mod:`medidiff.generator.store`). Each builds its networks on the reading,
writing and checking here. Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ..io.atomic import atomic_path, write_text_atomic
from ..jsonutil import json_default
from ..preprocess_config import PreprocessConfig

MODEL_FILE = "model.safetensors"
META_FILE = "model.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")
PIXEL_FORMAT = "medidiff-model"
GENERATOR_FORMAT = "medidiff-generator"
PIXEL_KIND = "pixel"
LATENT_KIND = "latent_diffusion"
KIND_OF_FORMAT = {PIXEL_FORMAT: PIXEL_KIND, GENERATOR_FORMAT: LATENT_KIND}


class CheckpointError(Exception):
    """A model folder (or training state) that cannot be (safely) loaded."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def package_version() -> str:
    try:
        from ..version import __version__

        return str(__version__)
    except Exception:  # pragma: no cover
        return "unknown"


# ----------------------------------------------------------------------------- safetensors files

def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=metadata)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    refuse_pickle(path)
    try:
        return load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({str(exc).splitlines()[0][:200]})") from exc


def read_header(path: Path) -> dict[str, str]:
    """The string metadata stored in a safetensors file's header (no tensors are read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def refuse_pickle(path: Path) -> None:
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


# ----------------------------------------------------------------------------- writing a folder

def write_weights(folder: Path, tensors: dict[str, torch.Tensor], header: dict[str, str]) -> str:
    """``folder/model.safetensors`` with ``header`` in its metadata. Returns its hash."""
    save_tensors(tensors, folder / MODEL_FILE, metadata=header)
    return sha256_file(folder / MODEL_FILE)


def write_description(folder: Path, meta: dict[str, Any]) -> None:
    """``folder/model.json``; written after the weights, so it never names weights that are not there."""
    write_text_atomic(folder / META_FILE, json.dumps(meta, indent=2, default=json_default) + "\n")


def frontend_fingerprint(pcfg: PreprocessConfig) -> dict[str, Any] | None:
    """What the front end (template, registration) was when the model was trained; None off-template."""
    if pcfg.space != "template":
        return None
    from ..frontend.config import fingerprint

    return fingerprint(pcfg.frontend_config())


# ----------------------------------------------------------------------------- reading a folder

def model_kind(folder: str | Path) -> str:
    """``pixel`` (a ``medidiff train`` run) or ``latent_diffusion`` (a generator), from model.json."""
    meta_path = Path(folder) / META_FILE
    if not meta_path.is_file():
        return PIXEL_KIND  # the pixel loader gives the full refusal message (pickles found, ...)
    try:
        fmt = json.loads(meta_path.read_text()).get("format")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return PIXEL_KIND
    return LATENT_KIND if fmt == GENERATOR_FORMAT else PIXEL_KIND


def read_description(folder: str | Path, fmt: str, fmt_version: int, kind: str = "model") -> dict[str, Any]:
    """``folder/model.json`` checked for format and version; pickles beside it are named, never loaded."""
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


def verified_weights(folder: Path, meta: dict[str, Any], owner: str, hint: str = "") -> tuple[Path, str]:
    """``folder/model.safetensors`` and its hash, refused unless it is the one model.json names.
    ``owner`` completes "the weights ... belong to another ..."; ``hint`` says what to do about it."""
    wpath = folder / MODEL_FILE
    if not wpath.is_file():
        raise CheckpointError(f"{folder}: {MODEL_FILE} missing")
    expected = meta.get("model_hash")
    actual = sha256_file(wpath)
    if not expected or actual != expected:
        raise CheckpointError(f"{wpath}: content hash {actual} does not match model.json ({expected}); "
                              f"the weights were modified or belong to another {owner} — refusing to load{hint}")
    return wpath, actual


def check_frontend(meta: dict[str, Any], pcfg: PreprocessConfig, folder: Path) -> list[str]:
    """Refuse a template-space model whose front end cannot be reproduced here; returns warnings
    about differences that do not change the result."""
    if pcfg.space != "template":
        return []
    from ..frontend.config import check_reproducible

    try:
        return list(check_reproducible(meta.get("frontend"), pcfg.frontend_config()) or [])
    except ValueError as exc:
        raise CheckpointError(f"{folder / META_FILE}: {exc}") from exc


def restore_weights(net: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str, wpath: Path,
                    what: str) -> torch.nn.Module:
    """``net`` with the tensors under ``prefix`` loaded strictly, in eval mode, without gradients."""
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{wpath}: {what} do not fit the configured network ({str(exc)[:300]})") from exc
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net
