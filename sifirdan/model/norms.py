"""Beyond the guide — RMSNorm, the normalisation of LLaMA, nanochat and modded-nanogpt.

    RMSNorm(x) = g * x / sqrt(mean(x^2) + eps)           (LayerNorm: g * (x - mean) / std + b)

It drops LayerNorm's mean subtraction and bias: one reduction instead of two and no shift to learn, with the
same effect on training stability in pre-norm transformers. ``make_norm(config)`` returns the norm the config
asks for (``norm="layernorm"``, the guide's, or ``"rmsnorm"``), so the chapter files name one call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, n_embd: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def make_norm(config, size: int | None = None) -> nn.Module:
    """The block's normalisation over ``size`` channels (default n_embd): nn.LayerNorm (the guide) or RMSNorm."""
    size = config.n_embd if size is None else size
    if config.norm == "rmsnorm":
        return RMSNorm(size)
    return nn.LayerNorm(size, bias=config.bias)
