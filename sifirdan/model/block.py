"""Guide §6 — Transformer block, pre-LN variant:

    x = x + Attention(LayerNorm(x))
    x = x + FFN(LayerNorm(x))

The residual "+" gives gradients a straight path through deep stacks; normalising *before* each sub-layer
(pre-LN) keeps activations in range without a warm-up-sensitive post-LN.
"""

from __future__ import annotations

import torch
from torch import nn

from sifirdan.model import kernels
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
        x = x + self.attention(self.ln1(x), kv_cache=kv_cache, attn_mask=attn_mask)
        x = x + self.feed_forward(self.ln2(x))
        return x

    def forward_fused(self, x: torch.Tensor, h: torch.Tensor, next_norm: nn.LayerNorm):
        """The same two residual steps, for sifirdan's CPU kernels: ``h`` is ``ln1(x)``, already computed, and
        each "x + sub-layer output", together with the LayerNorm that reads it next (``ln2``, then the next
        block's ``ln1`` or the final ``ln_f``: ``next_norm``), is one C pass that also adds the sub-layer's
        output bias. Returns ``(x, next_norm(x))``."""
        x, h = add_norm(x, self.attention(h, out_bias=False), self.attention.proj.bias, self.ln2)
        ffn = self.feed_forward
        if self.training and ffn.dropout.p > 0:  # its bias must come before the dropout
            return add_norm(x, ffn(h), None, next_norm)
        return add_norm(x, ffn(h, out_bias=False), ffn.proj.bias, next_norm)


def add_norm(x: torch.Tensor, y: torch.Tensor, bias: torch.Tensor | None, norm: nn.LayerNorm):
    """``x + y (+ bias)`` and its LayerNorm: one C pass when both are float32 CPU tensors (under bf16 autocast
    the sub-layer's output is not), PyTorch ops otherwise."""
    if kernels.applies(x, y):
        return kernels.add_layernorm(x, y, bias, norm)
    x = x + y if bias is None else x + (y + bias)
    return x, norm(x)
