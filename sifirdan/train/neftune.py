"""NEFTune (Jain et al. 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning") -- beyond the guide.

While training, every token embedding gets uniform noise before the first block:

    x = E_token[ids] + U(-m, m),    m = alpha / sqrt(T * n_embd)        T = the batch's row length

so the noise's norm per row stays about alpha / sqrt(3), whatever the row's length and width. Evaluation and
generation (the model in ``eval()`` mode) see the embeddings unchanged. The noise comes from the global torch
RNG, which the Trainer saves with every checkpoint, so a resumed run stays bit-exact.

What it changes here: fine-tuning on 240 Nutuk QA pairs overfits within a few epochs (train loss 1.5 against a
val loss of 3.8); the noise is a regulariser on the only layer every example passes through. Measured on five
held-out folds of 60 questions (bench/RESULTS.md, "fine-tuning levers"): alpha 5 / 6 / 7 raise the answers' token
F1 from 0.091 to 0.105 / 0.109 / 0.119 (greedy, chat's n-gram ban) and make them longer, until at 7 some no longer
end (96 %). Alpha 6 is the default recipe's setting (``train/finetuning.py: RECIPES``). Pre-training leaves it
off (``TrainConfig.neftune_alpha`` = 0).
"""

from __future__ import annotations

import torch
from torch import nn


def add_embedding_noise(model: nn.Module, alpha: float):
    """Register NEFTune on ``model.embeddings.token_embedding``; returns the hook's handle (``.remove()``)."""
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    embedding = model.embeddings.token_embedding

    def noisy(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        # output: (B, T, n_embd); the magnitude is per batch, from its (padded) row length, as in the paper
        magnitude = alpha / (output.shape[-2] * output.shape[-1]) ** 0.5
        return output + torch.empty_like(output).uniform_(-magnitude, magnitude)

    return embedding.register_forward_hook(noisy)
