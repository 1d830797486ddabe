"""The guide's own model and training step, re-implemented faithfully: the reference for every benchmark.

What makes it "the guide's code" (GUIDE.md §3-8), kept deliberately even where sifirdan differs:
  * separate ``query`` / ``key`` / ``value`` Linears (three matmuls, not one fused ``qkv``);
  * an explicit float ``tril`` mask, ``masked_fill(mask == 0, -inf)``, ``F.softmax`` -- the (T, T) matrix;
  * ``nn.GELU()`` (exact erf form), dropout only where the guide's code has it (after the FFN);
  * PyTorch's default initialisation (the guide never re-initialises), fp32 everywhere;
  * ``torch.optim.AdamW(model.parameters(), lr=3e-4)`` with nothing else (no clipping, no schedule),
    ``zero_grad(); loss.backward(); step()`` in that order.
Only the structure is from the guide; the code is written for this benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GuideConfig:
    vocab_size: int = 500
    block_size: int = 128
    n_embd: int = 128
    n_head: int = 4
    n_layer: int = 4
    dropout: float = 0.1
    batch_size: int = 32
    learning_rate: float = 3e-4
    max_iters: int = 1000


class GuideAttention(nn.Module):
    def __init__(self, c: GuideConfig):
        super().__init__()
        self.n_head, self.head_size = c.n_head, c.n_embd // c.n_head
        self.query = nn.Linear(c.n_embd, c.n_embd)
        self.key = nn.Linear(c.n_embd, c.n_embd)
        self.value = nn.Linear(c.n_embd, c.n_embd)
        self.proj = nn.Linear(c.n_embd, c.n_embd)
        self.register_buffer("mask", torch.tril(torch.ones(c.block_size, c.block_size)))  # float, as the guide

    def forward(self, x):
        B, T, C = x.shape
        q = self.query(x).view(B, T, self.n_head, self.head_size).transpose(1, 2)
        k = self.key(x).view(B, T, self.n_head, self.head_size).transpose(1, 2)
        v = self.value(x).view(B, T, self.n_head, self.head_size).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / (self.head_size**0.5))
        att = att.masked_fill(self.mask[:T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


class GuideFeedForward(nn.Module):
    def __init__(self, c: GuideConfig):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(c.n_embd, 4 * c.n_embd), nn.GELU(), nn.Linear(4 * c.n_embd, c.n_embd), nn.Dropout(c.dropout)
        )

    def forward(self, x):
        return self.net(x)


class GuideBlock(nn.Module):
    def __init__(self, c: GuideConfig):
        super().__init__()
        self.attention = GuideAttention(c)
        self.feed_forward = GuideFeedForward(c)
        self.ln1 = nn.LayerNorm(c.n_embd)
        self.ln2 = nn.LayerNorm(c.n_embd)

    def forward(self, x):
        x = x + self.attention(self.ln1(x))
        return x + self.feed_forward(self.ln2(x))


class GuideGPT(nn.Module):
    def __init__(self, c: GuideConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(c.vocab_size, c.n_embd)
        self.position_embedding = nn.Embedding(c.block_size, c.n_embd)
        self.blocks = nn.ModuleList([GuideBlock(c) for _ in range(c.n_layer)])
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        x = self.token_embedding(idx) + self.position_embedding(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


def make_guide(c: GuideConfig | None = None, seed: int = 0):
    """Model and optimizer exactly as the guide's train.py builds them."""
    c = c or GuideConfig()
    torch.manual_seed(seed)
    model = GuideGPT(c)
    optimizer = torch.optim.AdamW(model.parameters(), lr=c.learning_rate)
    return model, optimizer


def guide_step(model, optimizer, xb, yb) -> float:
    """One training iteration of the guide's loop; returns the loss as a float (the guide prints it)."""
    _, loss = model(xb, yb)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()
