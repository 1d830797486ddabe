"""Guide §3 — Embedding layers: a learned vector per token plus a learned vector per position.

    x = E_token[token_id] + E_pos[position]        E_token: (vocab_size, n_embd), E_pos: (block_size, n_embd)

Attention by itself is blind to order, so the position table is what tells the model *where* a token is.
"""

from __future__ import annotations

import torch
from torch import nn

from sifirdan.model.config import GPTConfig


class Embeddings(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        # position="rope" (model/rope.py): positions enter inside attention instead, and there is no table
        self.position_embedding = nn.Embedding(config.block_size, config.n_embd) if config.position == "learned" else None

    def forward(self, idx: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        # idx: (B, T) token ids; positions: (T,) or (B, T) absolute positions, default 0..T-1
        if positions is None:
            positions = torch.arange(idx.shape[1], device=idx.device)
        tok_emb = self.token_embedding(idx)  # (B, T, n_embd)
        if self.position_embedding is None:
            return tok_emb
        pos_emb = self.position_embedding(positions)  # (T, n_embd) or (B, T, n_embd): broadcasts over B
        return tok_emb + pos_emb
