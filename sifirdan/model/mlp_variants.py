"""Beyond the guide — two other feed-forward networks (the guide's GELU MLP is ``feedforward.py``, §5).

  * ``relu2`` — squared ReLU (So et al., "Primer", 2021; modded-nanogpt, nanochat):
        FFN(x) = relu(x W_1)^2 W_2                      hidden 4 * n_embd, as the guide's
  * ``swiglu`` — a gated linear unit with SiLU (Shazeer 2020; LLaMA):
        FFN(x) = (silu(x W_gate) * (x W_up)) W_2         hidden ~ 8/3 * n_embd, so the parameters match 4 * n_embd

Both keep the module's ``proj`` (W_2) name, so the residual-output initialisation and LoRA targets treat
them as the guide's MLP. ``make_feed_forward(config)`` returns the one ``GPTConfig.mlp`` selects.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sifirdan.model.feedforward import FeedForward


def swiglu_hidden(n_embd: int) -> int:
    """8/3 * n_embd rounded up to a multiple of 32: three matrices with about the parameters of the guide's two."""
    return -(-(8 * n_embd) // (3 * 32)) * 32


class ReLU2FeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.relu(self.fc(x)).square()))


class SwiGLUFeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden = swiglu_hidden(config.n_embd)
        self.gate = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.up = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.silu(self.gate(x)) * self.up(x)))


def make_feed_forward(config) -> nn.Module:
    if config.mlp == "relu2":
        return ReLU2FeedForward(config)
    if config.mlp == "swiglu":
        return SwiGLUFeedForward(config)
    return FeedForward(config)
