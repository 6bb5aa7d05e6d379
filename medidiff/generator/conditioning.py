"""Age and sex conditioning of the latent U-Net by concatenated input channels.

MONAI 1.6's ``DiffusionModelUNet`` offers two built-in conditionings (read in
``monai/networks/nets/diffusion_model_unet.py``):

* ``num_class_embeds``: an ``nn.Embedding`` of *integer* class labels added to the time
  embedding. Age is continuous; it would have to be binned, and with 12-30 training subjects
  most (age bin, sex) classes would hold one subject or none.
* ``with_conditioning`` + ``cross_attention_dim``: spatial transformers whose cross-attention
  reads a context sequence; they *replace* self-attention at the attention levels. With one
  context token the attention weights are identically 1, so the condition only enters as a
  learned bias at those levels, and the network's shape changes, so the bundled unconditional
  U-Net cannot warm-start it.

Chosen here: ``2 * len(latent.conditioning)`` spatially constant channels concatenated to the
noisy latent, per condition ``(value * present, present)``: age as ``(age - age_center) /
age_scale``, sex as +1 (F) / -1 (M). A missing condition is ``(0, 0)``, so all-zero channels
are the unconditional model; condition dropout in training (``train_latent.condition_dropout``)
teaches it, and classifier-free guidance (Ho & Salimans 2022) mixes the two predictions:
``v = v_uncond + w (v_cond - v_uncond)`` (``w = 1``: the conditional prediction alone, one
network pass). The first convolution of an unconditional U-Net extends with zero weights for the
new channels (:func:`load_widened`), so a conditioned U-Net starts exactly where the
unconditional one stood.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

SEX_CODES = {"f": "F", "female": "F", "w": "F", "m": "M", "male": "M"}
SEX_VALUE = {"F": 1.0, "M": -1.0}
AGE_RANGE = (0.0, 120.0)


def parse_condition_args(items: Sequence[str]) -> dict[str, Any]:
    """``["age=70", "sex=F"]`` (or ``"age=70,sex=F"``) -> ``{"age": 70.0, "sex": "F"}``."""
    out: dict[str, Any] = {}
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            key, sep, value = part.partition("=")
            key = key.strip().lower()
            if not sep or not key or not value.strip():
                raise ValueError(f"--condition {part!r}: expected NAME=VALUE, e.g. age=70 or sex=F")
            if key in out:
                raise ValueError(f"--condition {key} given twice")
            out[key] = value.strip()
    return canonical(out)


def canonical(cond: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validated ``{"age": float, "sex": "F"|"M"}`` (only the keys given); empty/None values dropped."""
    out: dict[str, Any] = {}
    for key, value in (cond or {}).items():
        key = str(key).strip().lower()
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if isinstance(value, float) and math.isnan(value):
            continue
        if key == "age":
            try:
                age = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"condition age={value!r}: not a number") from None
            if not AGE_RANGE[0] <= age <= AGE_RANGE[1]:
                raise ValueError(f"condition age={age:g}: outside {AGE_RANGE[0]:g}-{AGE_RANGE[1]:g} years")
            out["age"] = age
        elif key == "sex":
            code = SEX_CODES.get(str(value).strip().lower())
            if code is None:
                raise ValueError(f"condition sex={value!r}: use F or M")
            out["sex"] = code
        else:
            raise ValueError(f"unknown condition {key!r} (known: age, sex)")
    return out


def n_channels(latent_cfg) -> int:
    return 2 * len(latent_cfg.conditioning)


def check_supported(cond: Mapping[str, Any] | None, latent_cfg) -> dict[str, Any]:
    """The canonical condition, refused when the generator was not trained with one of its keys."""
    c = canonical(cond)
    extra = [k for k in c if k not in latent_cfg.conditioning]
    if extra:
        have = ", ".join(latent_cfg.conditioning) or "none (an unconditional generator)"
        raise ValueError(f"this generator is not conditioned on {', '.join(extra)}; its conditions: {have}")
    return c


def condition_vector(cond: Mapping[str, Any] | None, latent_cfg) -> torch.Tensor:
    """(2 * len(latent.conditioning),) float32: per condition (value * present, present)."""
    c = check_supported(cond, latent_cfg)
    vals: list[float] = []
    for name in latent_cfg.conditioning:
        if name not in c:
            vals += [0.0, 0.0]
        elif name == "age":
            vals += [(c["age"] - float(latent_cfg.age_center)) / float(latent_cfg.age_scale), 1.0]
        else:
            vals += [SEX_VALUE[c["sex"]], 1.0]
    return torch.tensor(vals, dtype=torch.float32)


def condition_batch(conds: Sequence[Mapping[str, Any] | None], latent_cfg) -> torch.Tensor:
    """(B, C) for a list of per-item conditions."""
    return torch.stack([condition_vector(c, latent_cfg) for c in conds]) if conds else \
        torch.zeros((0, n_channels(latent_cfg)))


def with_channels(x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    """The U-Net input: the latent ``x`` (B, C, *S) with ``cond`` (B, K) broadcast as K constant channels."""
    if cond is None or cond.shape[-1] == 0:
        return x
    maps = cond.to(device=x.device, dtype=x.dtype)[:, :, None, None, None].expand(-1, -1, *x.shape[2:])
    return torch.cat([x, maps], dim=1)


def drop_conditions(cond: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Condition dropout for classifier-free guidance: every item loses all conditions with
    probability ``p``, and each remaining condition with probability ``p`` on its own. Draws a
    fixed number of random numbers (1 + K/2 per item) whatever the outcome."""
    if cond.shape[-1] == 0 or p <= 0:
        return cond
    b, k = cond.shape
    u_all = torch.rand(b, generator=generator)
    u_each = torch.rand(b, k // 2, generator=generator)
    keep = ((u_all >= p)[:, None] & (u_each >= p)).float().repeat_interleave(2, dim=1)
    return cond * keep.to(cond.device)


def load_widened(net: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Load ``state`` into ``net``; tensors that differ only by having fewer input channels (dim 1)
    than the network's (the first convolution of an unconditional U-Net) are copied into the
    leading channels and the new channels start at zero. Returns the names widened."""
    own = net.state_dict()
    widened, merged = [], {}
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            t = own[k]
            if t.ndim == v.ndim and t.ndim >= 2 and t.shape[0] == v.shape[0] and t.shape[2:] == v.shape[2:] \
                    and t.shape[1] > v.shape[1]:
                w = torch.zeros_like(t)
                w[:, : v.shape[1]] = v
                merged[k] = w
                widened.append(k)
                continue
        merged[k] = v
    net.load_state_dict(merged, strict=True)
    return widened
