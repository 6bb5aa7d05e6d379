"""The learning-rate schedule of both trainers (diffusion U-Net, latent generator): linear warm-up,
then cosine decay to ``min_ratio`` of the base rate, as a ``LambdaLR`` factor."""

from __future__ import annotations

import math


def lr_lambda_factory(warmup: int, total: int, min_ratio: float):
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        span = max(1, total - warmup)
        prog = min(1.0, max(0.0, (step - warmup) / span))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * prog))

    return f
