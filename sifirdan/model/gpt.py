"""Guide §7 — The complete GPT: embeddings -> N transformer blocks -> final LayerNorm -> LM head.

    logits, loss = model(idx, targets)       idx, targets: (B, T) token ids; logits: (B, T, vocab_size)

The loss is the guide's cross-entropy (§8) in nats per token; targets equal to ``IGNORE_INDEX`` (-100, as
F.cross_entropy) are not scored: padding, and positions a batch chooses to leave out.

``generate`` is the guide's own generation loop, kept to read; ``sifirdan.generate.Engine`` is the fast one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sifirdan.configs import IGNORE_INDEX
from sifirdan.model.block import TransformerBlock
from sifirdan.model.config import GPTConfig
from sifirdan.model.embeddings import Embeddings
from sifirdan.model.norms import make_norm


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.embeddings = Embeddings(config)  # 1. token + position embeddings
        self.blocks = nn.ModuleList([TransformerBlock(config, i) for i in range(config.n_layer)])  # 2. N blocks
        self.ln_f = make_norm(config)  # 3. final LayerNorm (RMSNorm with norm="rmsnorm")
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.lm_head_bias)  # 4. LM head
        if config.tie_weights:
            self.lm_head.weight = self.embeddings.token_embedding.weight
        self._init_weights()

    # ------------------------------------------------------------------------------------------------ init
    def _init_weights(self) -> None:
        if self.config.init == "pytorch":
            return  # nn.Linear / nn.Embedding defaults (the guide's code as written)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        if self.config.init == "zero_out":
            # each residual branch starts as a zero: the stack starts as the identity (modded-nanogpt, nanochat)
            for block in self.blocks:
                nn.init.zeros_(block.attention.proj.weight)
                nn.init.zeros_(block.feed_forward.proj.weight)
        if self.config.init == "scaled":
            # GPT-2: each residual branch adds to the stream, so shrink its output by 1/sqrt(2 * n_layer)
            std = 0.02 / math.sqrt(2 * self.config.n_layer)
            for block in self.blocks:
                nn.init.normal_(block.attention.proj.weight, mean=0.0, std=std)
                nn.init.normal_(block.feed_forward.proj.weight, mean=0.0, std=std)

    def num_parameters(self, exclude_position: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once
        if exclude_position and self.embeddings.position_embedding is not None:
            n -= self.embeddings.position_embedding.weight.numel()
        return n

    # ------------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        kv_cache=None,
        positions: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        last_only: bool = False,
    ):
        """Return ``(logits, loss)``; ``loss`` is None without targets.

        Generation extras (all optional): ``kv_cache`` (a ``KVCache``: the new tokens are appended to it),
        ``positions`` (B, T) absolute positions for left-padded batches, ``key_padding_mask`` (B, S) True for
        real tokens over all S cached + new positions, ``last_only`` to compute logits for the last position only.
        """
        B, T = idx.shape
        start = kv_cache.pos if kv_cache is not None else 0  # absolute index of idx[:, 0] in the cache
        if start + T > self.config.block_size:
            # the learned position table has block_size rows, and the causal mask as many: crop the context
            # first (sifirdan.generate crops to the last block_size // 2 tokens and prefills again)
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}")
        if positions is None:
            positions = torch.arange(start, start + T, device=idx.device)
        # Without padding the attention layers build the causal mask themselves, at the shape in use; only
        # left-padded batches (generation) need a per-row mask.
        attn_mask = None
        if key_padding_mask is not None:
            attn_mask = self._attention_mask(start, T, key_padding_mask, idx.device)

        x = self.embeddings(idx, positions)  # (B, T, n_embd)
        for block in self.blocks:
            x = block(x, kv_cache=kv_cache, attn_mask=attn_mask, positions=positions)
        if kv_cache is not None:
            kv_cache.advance(T)  # every layer has written its T new positions
        x = self.ln_f(x)
        if last_only and targets is None:
            x = x[:, -1:, :]
        logits = self.lm_head(x)  # (B, T, vocab_size)
        if self.config.logit_softcap > 0:  # beyond the guide: squash logits smoothly into (-c, c)
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)

        loss = None
        if targets is not None:
            # mean over every position whose target is not IGNORE_INDEX (float32 even under bf16 autocast)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        return logits, loss

    # ------------------------------------------------------------------------------------------------ generate
    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None):
        """The guide's generation loop (§9), kept as the readable reference: append one token at a time.

        idx: (B, T) prompt ids -> (B, T + max_new_tokens). Every step runs the whole (cropped) sequence again:
        O(T^2) work per token. ``sifirdan.generate.Engine`` computes the same tokens with a KV cache (tests hold
        it to this loop); use it, or ``sifirdan generate``, for anything but reading.
        ``temperature`` 0 picks the most likely token (greedy); ``top_k`` keeps only the k most likely.
        """
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size :]  # the position table has block_size rows
            logits, _ = self(context)
            logits = logits[:, -1, :]  # (B, vocab_size): the prediction for the next position
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                next_id = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)  # (B, 1)
            idx = torch.cat([idx, next_id], dim=1)
        return idx

    @staticmethod
    def _attention_mask(start: int, T: int, key_padding_mask: torch.Tensor, device) -> torch.Tensor:
        """Boolean mask (B, 1, T, S), True = may attend, for queries at start..start+T-1 over S = start+T keys.

        ``key_padding_mask`` (B, >= S) is True for real tokens. A padding query still sees itself, so no
        softmax row is all -inf (NaN); its output is never used.
        """
        S = start + T
        if T == 1:
            # one generation step: the newest query sees every key up to itself, minus padding (two tiny ops)
            mask = key_padding_mask[:, :S].clone()
            mask[:, -1] = True
            return mask[:, None, None, :]  # (B, 1, 1, S)
        q_pos = torch.arange(start, S, device=device)[:, None]
        k_pos = torch.arange(S, device=device)[None, :]
        mask = k_pos <= q_pos  # causal: (T, S)
        mask = (mask[None] & key_padding_mask[:, None, :S]) | (k_pos == q_pos)[None]  # (B, T, S)
        return mask[:, None]  # (B, 1, T, S): broadcast over heads
