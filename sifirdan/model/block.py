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
from sifirdan.model.mlp_variants import make_feed_forward
from sifirdan.model.norms import make_norm


class TransformerBlock(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int = 0):
        super().__init__()
        # make_norm / make_feed_forward: the guide's nn.LayerNorm and GELU FeedForward unless the config picks
        # RMSNorm (model/norms.py) or another MLP (model/mlp_variants.py)
        self.ln1 = make_norm(config)
        self.attention = MultiHeadAttention(config, layer_idx=layer_idx)
        self.ln2 = make_norm(config)
        self.feed_forward = make_feed_forward(config)

    def forward(self, x, kv_cache=None, attn_mask=None, positions=None) -> torch.Tensor:
        # kv_cache / attn_mask: generation extras; positions: for rotary attention. All passed through to attention.
        x = x + self.attention(self.ln1(x), kv_cache=kv_cache, attn_mask=attn_mask, positions=positions)
        x = x + self.feed_forward(self.ln2(x))
        return x
