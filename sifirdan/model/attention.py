"""Guide §4 — Multi-head causal self-attention.

    Q = X W_Q,  K = X W_K,  V = X W_V                       (per head: head_size = n_embd / n_head)
    Attention(Q, K, V) = softmax(Q K^T / sqrt(head_size) + causal_mask) V

Two paths compute the same function on the same weights:
  * ``explicit`` — the guide's code: scores, ``masked_fill(-inf)``, softmax, weighted sum. Readable, and it
    can return the attention weights (``sifirdan attention`` draws them).
  * ``sdpa`` — ``torch.nn.functional.scaled_dot_product_attention``: the same math in one fused kernel
    (flash / memory-efficient on GPU, a fused loop on CPU) that never materialises the (T, T) matrix.
Tests check that both give the same outputs and gradients (and that sifirdan's C kernel for this step,
``sifirdan/kernels``, does too).

The three projections W_Q, W_K, W_V are stored stacked in one ``qkv`` Linear (n_embd -> 3*n_embd): the same
parameters as the guide's three Linears, one matrix multiply instead of three.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sifirdan.model.config import GPTConfig
from sifirdan.model.norms import RMSNorm
from sifirdan.model.rope import RotaryEmbedding, apply_rotary


class MultiHeadAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int = 0):
        super().__init__()
        self.n_head = config.n_head
        self.head_size = config.n_embd // config.n_head
        self.layer_idx = layer_idx  # which slot of a KV cache this layer uses
        self.kind = config.attention
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # W_Q | W_K | W_V
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)  # W_O
        # beyond the guide (model/rope.py, model/norms.py): rotary positions and per-head query/key norms
        self.rotary = RotaryEmbedding(self.head_size, config.block_size, config.rope_theta) if config.position == "rope" else None
        self.q_norm = RMSNorm(self.head_size) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_size) if config.qk_norm else None
        self.last_attention: torch.Tensor | None = None  # filled when record_attention is True
        self.record_attention = False

    def forward(self, x: torch.Tensor, kv_cache=None, attn_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape  # batch, time, channels (n_embd)
        qkv = self.qkv(x)  # (B, T, 3 * n_embd): q | k | v
        q, k, v = qkv.split(C, dim=2)  # each (B, T, n_embd)
        # (B, T, n_embd) -> (B, T, n_head, head_size) -> (B, n_head, T, head_size): heads become a batch dim
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)
        k = k.view(B, T, self.n_head, self.head_size).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_size).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary is not None:
            # positions: (T,) or (B, T) absolute positions of these T tokens (GPT.forward passes them)
            start = kv_cache.pos if kv_cache is not None else 0
            if positions is None:
                positions = torch.arange(start, start + T, device=x.device)
            cos, sin = self.rotary.tables(positions, start + T, x.device, q.dtype)  # positions < start + T
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_cache is not None:
            # append this step's keys/values; attend over everything cached so far: (B, n_head, S, head_size)
            k, v = kv_cache.update(self.layer_idx, k, v)
        S = k.shape[2]  # keys: the T new positions plus any cached before them (the queries are the last T)
        # attn_mask (bool, True = may attend) comes from GPT.forward only when some keys are padding (left-padded
        # batches). Otherwise the mask is causal, aligned so query i (absolute position S-T+i) sees keys 0..S-T+i:
        # rows S-T..S-1 of the guide's triangle. With no cache S == T and that is the plain triangle.
        # No dropout in here, as in the guide's forward(): its only dropout is after the feed-forward network.
        if self.kind == "sdpa" and not self.record_attention:
            if attn_mask is not None:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            elif S == T:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            elif T == 1:
                # one new token after a cache (every generation step): it may see every key, so no mask at all
                y = F.scaled_dot_product_attention(q, k, v)
            else:
                # sdpa's is_causal aligns the triangle top-left, which is wrong once S > T: pass the rows explicitly
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, S, x.device))
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_size))  # (B, n_head, T, S)
            keep = causal_mask(T, S, x.device) if attn_mask is None else attn_mask
            att = att.masked_fill(~keep, float("-inf"))
            att = F.softmax(att, dim=-1)  # each row sums to 1 over the visible tokens
            if self.record_attention:
                self.last_attention = att.detach()
            y = att @ v  # (B, n_head, T, S) @ (B, n_head, S, head_size) -> (B, n_head, T, head_size)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # concatenate the heads again
        return self.proj(y)  # W_O: (B, T, n_embd)


def causal_mask(T: int, S: int, device) -> torch.Tensor:
    """The guide's lower-triangular mask for T queries at the end of S keys: (T, S) bool, True = may attend.

    Query i (absolute position S - T + i) sees keys 0 .. S - T + i: rows S-T..S-1 of the (S, S) triangle, and
    the plain triangle when S == T. Built for the shape at hand, not once as a (block_size, block_size)
    buffer: that buffer would cost block_size**2 bytes per layer whether or not a pass ever needs it.
    """
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T)
