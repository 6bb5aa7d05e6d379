"""Where the denoiser runs: PyTorch (the reference) or an exported CPU runtime (``score.backend``).

``score.backend=openvino`` (``pip install 'medidiff[fast-cpu]'``) replaces the U-Net — for a patch
model the U-Net *inside* the sliding windows, so window placement and Gaussian blending stay
PyTorch's — by :class:`OpenVINODenoiser`, which has the U-Net's call signature
``net(x, timesteps=t) -> eps``. Everything around it (noise, DDIM arithmetic, blending, maps) is
unchanged, so a backend can change only the network's rounding.

The U-Net is exported once per weights to ONNX (``torch.onnx.export``, dynamo exporter) into a
cache folder outside the model folder — shipped model folders may be read-only —
``$MEDIDIFF_CACHE_DIR``, else ``$XDG_CACHE_HOME/medidiff``, else ``~/.cache/medidiff``. The file
name carries a hash of the weights actually loaded, the input shape and the torch version; it is
written atomically and recorded with its own sha256, so a half-written or edited file is never
used (it is exported again). An export is kept only after it reproduced PyTorch's fp32 output on
a fixed input. OpenVINO reads the ONNX file with its runtime (``Core.read_model``); its
conversion tool (``openvino.convert_model``) is deliberately not used, since that tool sends
usage telemetry by default.

Why OpenVINO and not ONNX Runtime: measured on the 2 mm model's 48³ windows (AMD EPYC with
AVX512-BF16, 2 threads), OpenVINO in bf16 needs about 0.4x the CPU time of PyTorch bf16 per
window, and ONNX Runtime, which has no bf16 convolutions on CPU, about 1.2x; in fp32 OpenVINO is
also ahead of ONNX Runtime (BENCHMARKS.md, "Fast scoring on a CPU").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..io.atomic import atomic_path, write_text_atomic

BACKENDS = ("torch", "openvino")  # score.backend
CACHE_ENV = "MEDIDIFF_CACHE_DIR"
EXPORT_FORMAT = 1  # bump when the exported graph's inputs/outputs change
# An export must reproduce PyTorch's fp32 output this closely (max |difference|, network output
# units) before it is cached; OpenVINO fp32 reaches about 3e-6 on the 2 mm model.
EXPORT_CHECK_ATOL = 1e-3
INSTALL_HINT = "pip install 'medidiff[fast-cpu]'"
log = logging.getLogger(__name__)
_FALLBACK_DIRS: list[tempfile.TemporaryDirectory] = []


class BackendError(RuntimeError):
    """An exported runtime that cannot be used here (not installed, wrong device, failed export)."""


def cache_dir() -> Path:
    """Where exported networks are kept (never inside a model folder)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "medidiff"


def weights_hash(module: torch.nn.Module) -> str:
    """sha256 over the names, shapes, dtypes and bytes of every parameter and buffer."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class _Call(torch.nn.Module):
    """``unet(x, timesteps=t)`` with positional inputs, as the exporter wants them."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, timesteps=t)


def _example(shape: Sequence[int], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *shape), generator=g)
    t = torch.tensor([100 + 400 * i for i in range(batch)], dtype=torch.long)
    return x, t


def _export(unet: torch.nn.Module, shape: Sequence[int], path: Path) -> None:
    """ONNX with a dynamic batch axis (the spatial shape stays fixed: faster kernels)."""
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        x, t = _example(shape, 2)
        batch = torch.export.Dim("batch", min=1, max=4096)
        with torch.no_grad(), warnings.catch_warnings():
            # the exporter's own notes: x and t share one batch axis; a torch-internal deprecation
            warnings.filterwarnings("ignore", message=".*axis name.*", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            torch.onnx.export(_Call(unet).eval(), (x, t), str(path), input_names=["x", "t"], output_names=["eps"],
                              dynamic_shapes=({0: batch}, {0: batch}), dynamo=True, external_data=False,
                              verbose=False)
    finally:
        for lg, lv in zip(quiet, levels):
            lg.setLevel(lv)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _reference_check(unet: torch.nn.Module, shape: Sequence[int], onnx_path: Path) -> float:
    """max |OpenVINO fp32 - PyTorch fp32| on a fixed input; raises if above EXPORT_CHECK_ATOL."""
    x, t = _example(shape, 2)
    with torch.no_grad():
        ref = unet(x, timesteps=t).float().numpy()
    got = OpenVINODenoiser(onnx_path, precision="fp32", threads=torch.get_num_threads())(x, t).numpy()
    err = float(np.abs(got - ref).max())
    if not err <= EXPORT_CHECK_ATOL:
        raise BackendError(f"the exported network does not reproduce PyTorch (max |difference| {err:.3g} > "
                           f"{EXPORT_CHECK_ATOL}); use score.backend=torch")
    return err


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
        return True
    except OSError:
        return False


def exported_onnx(unet: torch.nn.Module, shape: Sequence[int], folder: Path | None = None) -> Path:
    """The cached ONNX export of ``unet`` for inputs (batch, *shape); exported (and checked) if absent."""
    import openvino  # noqa: F401  (the reference check needs it; fail before a long export)

    shape = tuple(int(s) for s in shape)
    whash = weights_hash(unet)
    key = hashlib.sha256(json.dumps([whash, shape, torch.__version__, EXPORT_FORMAT]).encode()).hexdigest()
    folder = Path(folder) if folder is not None else cache_dir() / "exported"
    if not _writable(folder):
        tmp = tempfile.TemporaryDirectory(prefix="medidiff-export-")
        _FALLBACK_DIRS.append(tmp)  # removed at exit
        log.warning("cache folder %s is not writable (set %s): exporting the network into %s for this process "
                    "only", folder, CACHE_ENV, tmp.name)
        folder = Path(tmp.name)
    stem = f"unet-{whash[:16]}-{'x'.join(map(str, shape))}-{key[:12]}"
    onnx_path, meta_path = folder / f"{stem}.onnx", folder / f"{stem}.json"
    if onnx_path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") == key and meta.get("sha256") == _sha256(onnx_path):
                return onnx_path
        except (OSError, ValueError):
            pass
        log.warning("%s: cached export does not match its record; exporting again", onnx_path)
    with atomic_path(onnx_path) as tmp_path:
        _export(unet, shape, tmp_path)
        err = _reference_check(unet, shape, tmp_path)
    record = {"key": key, "sha256": _sha256(onnx_path), "weights_sha256": whash, "input_shape": list(shape),
              "torch": torch.__version__, "format": EXPORT_FORMAT, "max_abs_diff_fp32": err}
    write_text_atomic(meta_path, json.dumps(record, indent=1) + "\n")
    return onnx_path


class OpenVINODenoiser(torch.nn.Module):
    """An exported U-Net on OpenVINO's CPU runtime, called like the PyTorch one: ``net(x, timesteps)``.

    One compiled model per batch size (static shapes run faster; a scan needs one or two)."""

    def __init__(self, onnx_path: str | Path, precision: str = "fp32", threads: int | None = None):
        super().__init__()
        try:
            import openvino as ov
        except ImportError as exc:
            raise BackendError(f"score.backend=openvino needs OpenVINO: {INSTALL_HINT}") from exc
        if precision not in ("fp32", "bf16"):
            raise BackendError(f"score.backend=openvino runs fp32 or bf16, not {precision}")
        self.precision = precision
        self.threads = int(threads or torch.get_num_threads())
        self._core = ov.Core()
        self._model = self._core.read_model(str(onnx_path))
        self._compiled: dict[tuple[int, ...], object] = {}
        self.path = Path(onnx_path)

    def _for_shape(self, shape: tuple[int, ...]):
        if shape not in self._compiled:
            m = self._model.clone()
            m.reshape({m.inputs[0]: list(shape), m.inputs[1]: [shape[0]]})
            cfg = {"INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
                   "INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY"}
            self._compiled[shape] = self._core.compile_model(m, "CPU", cfg)
        return self._compiled[shape]

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, **kwargs) -> torch.Tensor:
        if kwargs:
            raise TypeError(f"exported denoiser takes only x and timesteps, got {sorted(kwargs)}")
        xn = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        tn = torch.as_tensor(timesteps).reshape(-1).expand(x.shape[0]).to("cpu", torch.long).numpy()
        out = self._for_shape(tuple(xn.shape))({0: xn, 1: np.ascontiguousarray(tn)})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)


def with_backend(net: torch.nn.Module, backend: str, precision: str, device: torch.device,
                 grid: Sequence[int]) -> torch.nn.Module:
    """``net`` (a grid denoiser: the U-Net, or the U-Net behind sliding windows) with its U-Net
    run by ``backend``; unchanged for ``torch``."""
    if backend == "torch":
        return net
    if backend not in BACKENDS:
        raise ValueError(f"unknown score.backend {backend!r} ({' | '.join(BACKENDS)})")
    if torch.device(device).type != "cpu":
        raise BackendError(f"score.backend={backend} is a CPU runtime; on {device} use score.backend=torch")
    try:
        import openvino  # noqa: F401
    except ImportError as exc:
        raise BackendError(f"score.backend={backend} needs OpenVINO, which is not installed: {INSTALL_HINT}") from exc
    from .patches import SlidingWindowDenoiser

    if isinstance(net, SlidingWindowDenoiser):
        unet, shape = net.unet, (int(net.unet.in_channels), *net.patch)
    else:
        unet, shape = net, (int(net.in_channels), *(int(g) for g in grid))
    exported = OpenVINODenoiser(exported_onnx(unet, shape), precision=precision).eval()
    if isinstance(net, SlidingWindowDenoiser):
        return net.with_unet(exported)
    return exported
