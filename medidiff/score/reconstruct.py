"""Partial noising and deterministic reconstruction ("healing").

A scan x0 on the model grid is noised to t* with the training noise type (and
its training ``noise_params``) and denoised back to 0 with DDIM in K steps
(K=1: single-step x0 prediction). Several noise draws and t* levels are batched
through the network together and their reconstructions averaged. The
scheduler's cumulative alphas come from MONAI's scheduler; the loop starts at
t* instead of T (partial diffusion).

Every draw has its own generator, seeded from (seed, pass, draw index), so the
maps do not depend on ``batch_size``: batching changes speed, never results.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..model.diffusion import add_noise, ddim_step, predict_eps, predict_x0
from ..model.noise import per_item_noise
from ..runtime import autocast_ctx, resolve_precision
from .config import ScoreConfig

FIRST_PASS, INPAINT_PASS = 0, 1


@dataclass
class Reconstruction:
    mean: np.ndarray  # float32, model grid: average over draws and t* levels
    n_evals: int  # network evaluations (per volume, summed over the batch items)


def ddim_timesteps(t_start: int, steps: int) -> list[int]:
    """Descending timesteps from t_start with ``steps`` entries (ends above 0)."""
    ts = np.linspace(t_start, 0, steps + 1)[:-1]
    return [int(round(t)) for t in ts]


def draw_generator(seed: int, pass_id: int, item: int) -> torch.Generator:
    """The CPU generator of one noise draw: independent of batch composition."""
    state = np.random.SeedSequence([int(seed), int(pass_id), int(item)]).generate_state(2, np.uint64)
    return torch.Generator().manual_seed(int(state[0] % (2**63)))


def follow_calibration(precision: str, calibrated: str | None, device) -> str:
    """Resolve ``precision``; 'auto' takes the calibration's precision when this device can run it.
    Thresholds are only valid for the precision they were measured in: a model calibrated in fp32
    (a CPU without bf16) scored in bf16 elsewhere would get maps its thresholds were not made for."""
    if precision == "auto" and calibrated:
        try:
            return resolve_precision(calibrated, device)
        except RuntimeError:  # e.g. calibrated in bf16, this CPU has none: the mismatch warning says so
            pass
    return resolve_precision(precision, device)


def _with_window_overlap(net, overlap: float | None):
    if overlap is None:
        return net
    from ..model.patches import SlidingWindowDenoiser

    if not isinstance(net, SlidingWindowDenoiser):
        raise ValueError("score.window_overlap applies to patch models only: this model scores its whole grid "
                         "in one pass (remove the setting)")
    return net.with_overlap(overlap)


def _pointwise_conv_pre(module, args):
    if not torch.is_autocast_enabled("cpu") and args and args[0].device.type == "cpu":
        module._medidiff_mkldnn = torch._C._get_mkldnn_enabled()
        torch._C._set_mkldnn_enabled(False)


def _pointwise_conv_post(module, args, output):
    prev = getattr(module, "_medidiff_mkldnn", None)
    if prev is not None:
        torch._C._set_mkldnn_enabled(prev)
        module._medidiff_mkldnn = None


def thread_invariant_pointwise_convs(net) -> None:
    """fp32 on CPU: oneDNN's 1x1x1 convolution splits its channel reduction by thread count, so a
    process with 2 intra-op threads and one with 1 (a local run and a Dask worker) give maps that
    differ in the last bits. These convolutions (the U-Net's skip projections) run on ATen's own
    kernel instead, which is thread-count invariant and not slower for 1x1x1 (measured). bf16
    autocast and CUDA are left alone (bf16 oneDNN convolutions were measured thread-invariant).
    Idempotent: hooks are added once per module."""
    for mod in net.modules():
        if isinstance(mod, torch.nn.Conv3d) and all(k == 1 for k in mod.kernel_size) \
                and not getattr(mod, "_medidiff_pointwise_hooked", False):
            mod.register_forward_pre_hook(_pointwise_conv_pre)
            mod.register_forward_hook(_pointwise_conv_post)
            mod._medidiff_pointwise_hooked = True


class Reconstructor:
    def __init__(self, loaded, cfg: ScoreConfig, calibrated_precision: str | None = None,
                 precision: str | None = None):
        self.net = _with_window_overlap(loaded.network, cfg.window_overlap)
        thread_invariant_pointwise_convs(self.net)
        self.device = loaded.device
        self.scheduler = loaded.scheduler_factory("ddim")
        self.T = int(loaded.scheduler_factory.num_train_timesteps)
        self.prediction_type = loaded.scheduler_factory.prediction_type
        dcfg = loaded.config.diffusion
        self.noise_kind = cfg.noise or dcfg.noise
        # the training noise parameters apply only when scoring with the training noise type
        self.noise_params = dict(dcfg.noise_params or {}) if self.noise_kind == dcfg.noise else {}
        if precision is not None:  # resolved elsewhere (a Dask client): this process must run the same
            try:
                self.precision = resolve_precision(precision, self.device)
            except RuntimeError as exc:
                raise RuntimeError(f"this process cannot compute in {precision}, the precision the run was "
                                   f"started with ({exc}); score with --set score.precision=fp32 so every "
                                   "machine computes alike") from exc
        else:
            self.precision = follow_calibration(cfg.precision, calibrated_precision, self.device)
        self.backend = cfg.backend
        if self.backend != "torch":  # an exported runtime runs the U-Net; everything around it stays
            from ..model.backends import with_backend

            self.net = with_backend(self.net, self.backend, self.precision, self.device, loaded.preprocess_config.grid)
        self.cfg = cfg
        self._acp = self.scheduler.alphas_cumprod.detach().to(torch.float64).cpu()

    def runtime_settings(self) -> dict:
        """What changes the maps beyond ScoreConfig: resolved precision, device kind, noise."""
        rt = {"precision": self.precision, "device": self.device.type, "noise": self.noise_kind,
              "noise_params": self.noise_params}
        if self.backend != "torch":  # keys cached reconstructions apart; absent for torch (older hashes hold)
            rt["backend"] = self.backend
        return rt

    def t_levels(self, fractions=None) -> list[int]:
        fr = self.cfg.t_fractions if fractions is None else fractions
        return [max(1, min(self.T - 1, int(round(f * self.T)))) for f in fr]

    def _noise(self, shape, gens) -> torch.Tensor:
        return per_item_noise(self.noise_kind, shape, gens, self.device, **self.noise_params)

    @torch.no_grad()
    def _denoise(self, x_t: torch.Tensor, t_start: torch.Tensor, steps: int, gens: list[torch.Generator],
                 known: torch.Tensor | None = None, known_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """DDIM (eta=0) from per-item t_start to 0. With ``known``/``known_mask``
        (RePaint-style), voxels outside the mask are replaced at every step by
        the known image noised to the current level."""
        b = x_t.shape[0]
        schedules = [ddim_timesteps(int(t), steps) for t in t_start.tolist()]
        x = x_t
        evals = 0
        for i in range(steps):
            t_now = torch.tensor([s[i] for s in schedules], dtype=torch.long)
            t_next = [s[i + 1] if i + 1 < steps else -1 for s in schedules]
            with autocast_ctx(self.precision, self.device):
                out = self.net(x, timesteps=t_now.to(self.device))
            out = out.float()
            evals += b
            x0 = predict_x0(out, x, t_now, self.scheduler, self.prediction_type)
            eps = predict_eps(out, x, t_now, self.scheduler, self.prediction_type)
            a_next = [1.0 if t < 0 else float(self._acp[t]) for t in t_next]
            x = ddim_step(x0, eps, self._acp[t_now], a_next)
            if known is not None and known_mask is not None and i + 1 < steps:
                known_t = add_noise(self.scheduler, known, self._noise(tuple(x.shape), gens), torch.tensor(t_next))
                x = known_mask * x + (1 - known_mask) * known_t
        if known is not None and known_mask is not None:
            x = known_mask * x + (1 - known_mask) * known
        return x, evals

    @torch.no_grad()
    def reconstruct(self, image: np.ndarray, seed: int | None = None, fractions=None,
                    inpaint_mask: np.ndarray | None = None, steps: int | None = None) -> Reconstruction:
        """Average reconstruction of ``image`` (model grid, float32)."""
        cfg = self.cfg
        steps = steps or cfg.steps
        seed = cfg.seed if seed is None else seed
        pass_id = FIRST_PASS if inpaint_mask is None else INPAINT_PASS
        x0 = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(self.device)
        levels = self.t_levels(fractions)
        items = [t for t in levels for _ in range(cfg.n_draws)]
        total = torch.zeros_like(x0[0])
        n_evals = 0
        mask_t = None
        if inpaint_mask is not None:
            mask_t = torch.from_numpy(inpaint_mask.astype(np.float32))[None, None].to(self.device)
        for start in range(0, len(items), cfg.batch_size):
            ts = torch.tensor(items[start:start + cfg.batch_size], dtype=torch.long)
            gens = [draw_generator(seed, pass_id, j) for j in range(start, start + len(ts))]
            xb = x0.expand(len(ts), *x0.shape[1:])
            x_t = add_noise(self.scheduler, xb, self._noise(tuple(xb.shape), gens), ts)
            known = xb if mask_t is not None else None
            rec, ev = self._denoise(x_t, ts, steps, gens, known, None if mask_t is None else mask_t.expand_as(xb))
            total += rec.sum(dim=0)
            n_evals += ev
        mean = (total / len(items))[0].cpu().numpy().astype(np.float32)
        return Reconstruction(mean=mean, n_evals=n_evals)
