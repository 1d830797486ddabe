"""Guide §9 — Growing a pre-trained model for fine-tuning: more token ids, a longer context.

    grow_vocab(model, new_vocab_size)      # new special tokens (<INST>, </RESP>, ...) need embedding rows
    grow_context(model, new_block_size)    # fine-tuning at block 256 after pre-training at 128 (the guide)

Both keep every old parameter bit for bit, so on inputs the old model could read the new one computes exactly
what the old one did (tests hold logits equal). How the new rows start:

  * new token rows (embedding, and the LM head's rows and bias when it has its own) = the mean of the old rows.
    A random row would put the new token's logit anywhere; the mean row gives it an ordinary logit, roughly the
    average token's, so the first fine-tuning steps are not spent undoing a huge or tiny score (the choice of
    Hugging Face's ``resize_token_embeddings(mean_resizing=True)``).
  * new position rows = copies of the last old row. Positions beyond the old context are "later than anything
    seen"; the last learnt row is the nearest thing the model knows, and attention in a trained model is
    mostly driven by content, so the extended positions start out reading like the end of the old window and
    fine-tuning then tells them apart. (Zeros would give those tokens no position signal at all, unlike any
    input the model ever had; repeating the table from row 0 would make position 128 look like the start of a
    document.)
"""

from __future__ import annotations

import torch
from torch import nn

from sifirdan.model.gpt import GPT


@torch.no_grad()
def _grow_rows(old: torch.Tensor, n_new: int, fill: torch.Tensor) -> torch.Tensor:
    return torch.cat([old, fill.to(old.dtype).expand(n_new, *old.shape[1:])], dim=0)


@torch.no_grad()
def grow_vocab(model: GPT, new_vocab_size: int) -> int:
    """Add token ids ``vocab_size .. new_vocab_size - 1``; returns how many were added (0: nothing to do)."""
    old_size = model.config.vocab_size
    n_new = new_vocab_size - old_size
    if n_new < 0:
        raise ValueError(f"grow_vocab cannot shrink the vocabulary ({old_size} -> {new_vocab_size})")
    if n_new == 0:
        return 0
    emb = model.embeddings.token_embedding
    tied = model.lm_head.weight is emb.weight
    new_emb = nn.Embedding(new_vocab_size, emb.embedding_dim, device=emb.weight.device, dtype=emb.weight.dtype)
    new_emb.weight.copy_(_grow_rows(emb.weight, n_new, emb.weight.mean(dim=0, keepdim=True)))
    model.embeddings.token_embedding = new_emb
    head = model.lm_head
    new_head = nn.Linear(head.in_features, new_vocab_size, bias=head.bias is not None,
                         device=head.weight.device, dtype=head.weight.dtype)
    if tied:
        new_head.weight = new_emb.weight  # still one tensor
    else:
        new_head.weight.copy_(_grow_rows(head.weight, n_new, head.weight.mean(dim=0, keepdim=True)))
    if head.bias is not None:
        new_head.bias.copy_(_grow_rows(head.bias[:, None], n_new, head.bias.mean().view(1, 1))[:, 0])
    model.lm_head = new_head
    model.config.vocab_size = new_vocab_size
    return n_new


@torch.no_grad()
def grow_context(model: GPT, new_block_size: int) -> int:
    """Add position rows ``block_size .. new_block_size - 1``; returns how many were added. A rotary model
    (``position="rope"``) has no table: its context grows by the config alone, and 0 rows are added."""
    pos = model.embeddings.position_embedding
    old_size = model.config.block_size
    n_new = new_block_size - old_size
    if n_new < 0:
        raise ValueError(f"grow_context cannot shrink the context ({old_size} -> {new_block_size})")
    if pos is None:
        model.config.block_size = new_block_size
        return 0
    if n_new == 0:
        return 0
    new_pos = nn.Embedding(new_block_size, pos.embedding_dim, device=pos.weight.device, dtype=pos.weight.dtype)
    new_pos.weight.copy_(_grow_rows(pos.weight, n_new, pos.weight[-1:]))
    model.embeddings.position_embedding = new_pos
    model.config.block_size = new_block_size
    return n_new
