"""Learning-rate schedules: a pure function of the step, so a resumed run continues the same curve.

    constant:  lr(t) = lr_max                                              (the guide, §8)
    cosine:    lr(t) = lr_max * (t + 1) / warmup                          for t < warmup
               lr(t) = lr_min + (lr_max - lr_min) * (1 + cos(pi * p)) / 2 p = (t - warmup) / (max_iters - warmup)

Warmup lets AdamW's moment estimates settle before full-size steps; the cosine tail takes smaller steps as
the loss flattens, which usually ends lower than a constant LR for the same number of steps.
"""

from __future__ import annotations

import math

from sifirdan.train.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    lr_max = cfg.learning_rate
    if cfg.lr_schedule == "constant":
        return lr_max
    lr_min = lr_max * cfg.min_lr_ratio
    if step < cfg.warmup_iters:
        return lr_max * (step + 1) / cfg.warmup_iters
    decay_steps = max(1, cfg.max_iters - cfg.warmup_iters)
    progress = min(1.0, (step - cfg.warmup_iters) / decay_steps)
    return lr_min + (lr_max - lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))
