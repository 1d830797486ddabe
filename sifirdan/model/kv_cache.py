"""A key/value cache for generation: each layer's keys and values of the tokens seen so far.

Without it every new token re-runs the whole sequence (the guide's ``generate``): O(T^2) work per token.
With it, a prompt is run once (prefill) and each new token costs one position.

Layout: one preallocated (n_layer, B, n_head, max_len, head_size) tensor each for keys and values, so a
generation step writes in place and allocates nothing. ``pos`` is shared by all rows: a batch of prompts of
different lengths is left-padded to a common length (GPT.forward's ``key_padding_mask`` hides the padding).
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_size: int, device=None, dtype=None):
        shape = (n_layer, batch_size, n_head, max_len, head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0  # how many positions are filled (the same for every layer once a forward pass ends)

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int | None = None, device=None, dtype=None) -> "KVCache":
        c = model.config
        p = next(model.parameters())
        return cls(
            c.n_layer, batch_size, c.n_head, max_len or c.block_size, c.n_embd // c.n_head,
            device=device or p.device, dtype=dtype or p.dtype,
        )

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, n_head, T, head_size) at the current position; return all keys/values so far."""
        T = k.shape[2]
        end = self.pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions > max_len {self.max_len}")
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (a LongTensor of indices), e.g. to drop sequences that finished."""
        self.k = self.k.index_select(1, rows)
        self.v = self.v.index_select(1, rows)

    def advance(self, n: int) -> None:
        self.pos += n

    def reset(self) -> None:
        self.pos = 0
