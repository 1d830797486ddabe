"""Guide §5 — Feed-forward network, applied to every position on its own:

    FFN(x) = GELU(x W_1 + b_1) W_2 + b_2        W_1: (n_embd, 4 n_embd), W_2: (4 n_embd, n_embd)

Attention mixes information *between* positions; this is where each position *thinks* about what it gathered.
"""

from __future__ import annotations

import torch
from torch import nn

from sifirdan.model.config import GPTConfig


class FeedForward(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)  # expand: 128 -> 512
        self.gelu = nn.GELU()  # smooth non-linearity (exact erf form, as nn.GELU() in the guide)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)  # project back: 512 -> 128
        self.dropout = nn.Dropout(config.dropout)  # the guide's only dropout: on the FFN's output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, n_embd) -> (B, T, 4 n_embd) -> (B, T, n_embd)
        return self.dropout(self.proj(self.gelu(self.fc(x))))
