"""Guide §5 — Feed-forward network, applied to every position on its own:

    FFN(x) = GELU(x W_1 + b_1) W_2 + b_2        W_1: (n_embd, 4 n_embd), W_2: (4 n_embd, n_embd)

Attention mixes information *between* positions; this is where each position *thinks* about what it gathered.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sifirdan.model import kernels
from sifirdan.model.config import GPTConfig


class FeedForward(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)  # expand: 128 -> 512
        self.gelu = nn.GELU()  # smooth non-linearity (exact erf form, as nn.GELU() in the guide)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)  # project back: 512 -> 128
        self.dropout = nn.Dropout(config.dropout)
        self.cpu_kernels = config.cpu_kernels

    def forward(self, x: torch.Tensor, out_bias: bool = True) -> torch.Tensor:
        """``out_bias=False`` (no dropout active only) leaves b_2 out: the block's fused residual + LayerNorm
        kernel adds it."""
        fc = self.fc
        if self.cpu_kernels and fc.bias is not None and kernels.applies(x):
            h = F.linear(x, fc.weight)  # bias not yet added
            # float32 (under bf16 autocast it is not): GELU(h + b_1) in C, which adds b_1 inside its pass:
            # PyTorch's addmm would first write the bias into the whole 4x-wide activation, and its gradient
            # would need a pass of its own
            hidden = kernels.bias_gelu(h, fc.bias) if kernels.applies(h) else self.gelu(h + fc.bias)
        else:
            hidden = self.gelu(fc(x))
        if not out_bias:
            if self.training and self.dropout.p > 0:
                raise ValueError("FeedForward: out_bias=False needs dropout off (the bias comes before dropout)")
            return F.linear(hidden, self.proj.weight)  # (B, T, n_embd)
        out = self.proj(hidden)  # (B, T, n_embd)
        if self.training and self.dropout.p > 0 and self.cpu_kernels and kernels.applies(out):
            # the same inverted dropout, with a hashed mask: PyTorch's CPU bernoulli_ costs ~4 ms a layer here
            return kernels.dropout(out, self.dropout.p)
        return self.dropout(out)
