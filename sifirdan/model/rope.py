"""Beyond the guide — rotary position embeddings (RoPE; Su et al. 2021, as in LLaMA, nanochat, modded-nanogpt).

The guide adds a learned vector per position to each token (§3). RoPE instead *rotates* each query and key by
an angle proportional to its position, pair of channels by pair of channels:

    (q_{2i}, q_{2i+1})  ->  rotate by  pos * theta^(-2i / head_size)       (the same for k)

so ``q_m . k_n`` depends only on the distance ``m - n``. What it changes:
  * no position table: ``block_size`` rows fewer to learn from a small corpus, and nothing to grow when
    fine-tuning at a longer context (``model/resize.py: grow_context`` has no rows to add);
  * attention sees relative offsets directly, which is what predicting the next token mostly needs.
Selected by ``GPTConfig(position="rope")``; ``rope_theta`` is the base. The pairs are the "half split"
convention (channel i with channel i + head_size/2), which is what Hugging Face's Llama and llama.cpp's
NEOX-style rope compute, so an export needs no weight permutation beyond their own.
"""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    def __init__(self, head_size: int, block_size: int, theta: float = 10000.0):
        super().__init__()
        if head_size % 2:
            raise ValueError(f"rotary embeddings need an even head_size, got {head_size}")
        self.head_size = head_size
        self.theta = float(theta)
        # inverse frequencies theta^(-2i/d), i = 0 .. d/2-1, in float64; the cos/sin tables built from them are
        # plain attributes, not buffers: they follow from the config, so checkpoints carry no rotary tensors and
        # the model holds no buffer that grows with block_size
        # (on the CPU even inside ``with torch.device("meta")``, where checkpoints compute shapes without memory)
        self.inv_freq = self.theta ** (-torch.arange(0, head_size, 2, dtype=torch.float64, device="cpu") / head_size)
        self._cos = self._sin = None
        self._cached_len = 0
        self._build(block_size)

    def _build(self, length: int) -> None:
        t = torch.arange(length, dtype=torch.float64, device="cpu")
        freqs = torch.outer(t, self.inv_freq)  # (length, head_size/2)
        self._cos = freqs.cos().float()
        self._sin = freqs.sin().float()
        self._cached_len = length

    def tables(self, positions: torch.Tensor, length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for ``positions`` (T,) or (B, T), every one below ``length`` (the caller knows that bound, so
        no device sync reads it): shaped to broadcast over (B, n_head, T, head_size/2)."""
        need = length
        if need > self._cached_len:
            self._build(max(need, 2 * self._cached_len))
        if self._cos.device != device:
            self._cos, self._sin = self._cos.to(device), self._sin.to(device)
        cos, sin = self._cos[positions], self._sin[positions]  # (T, d/2) or (B, T, d/2)
        if positions.dim() == 2:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, d/2): broadcast over heads
        return cos.to(dtype), sin.to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + d/2) of x (B, n_head, T, d) by the angles whose cos/sin are given."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
