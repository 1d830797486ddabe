"""Guide §6 — Transformer block, pre-LN variant:

    x = x + Attention(LayerNorm(x))
    x = x + FFN(LayerNorm(x))

The residual "+" gives gradients a straight path through deep stacks; normalising *before* each sub-layer
(pre-LN) keeps activations in range without a warm-up-sensitive post-LN.
"""

from __future__ import annotations

import torch
from torch import nn

from sifirdan.model.attention import MultiHeadAttention
from sifirdan.model.config import GPTConfig
from sifirdan.model.feedforward import FeedForward


class TransformerBlock(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int = 0):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attention = MultiHeadAttention(config, layer_idx=layer_idx)
        self.ln2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.feed_forward = FeedForward(config)

    def forward(self, x, kv_cache=None, attn_mask=None) -> torch.Tensor:
        # kv_cache / attn_mask: generation extras, passed through to attention (see attention.py)
        x = x + self.attention(self.ln1(x), kv_cache=kv_cache, attn_mask=attn_mask)
        x = x + self.feed_forward(self.ln2(x))
        return x
