"""Evaluation batches: ``iter_eval_batches`` covers a split once with non-overlapping windows, scoring every token once.

Training draws random windows (``sampler.py``); evaluation must instead predict each token of a split exactly
once, so the mean loss over these batches is the split's loss. Targets a window must not score are set to
``IGNORE_INDEX``, the loss's own convention (``sifirdan.configs``, shared with ``sifirdan.model.gpt``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from sifirdan.configs import IGNORE_INDEX
from sifirdan.data.sampler import _gather, check_length
from sifirdan.errors import UserError


def eval_windows(n_tokens: int, block_size: int) -> int:
    """How many windows ``iter_eval_batches`` yields for a split of ``n_tokens`` tokens."""
    return math.ceil((n_tokens - 1) / block_size)


def iter_eval_batches(
    data: np.ndarray, batch_size: int, block_size: int, name: str = "val"
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Cover a split once: every token after the first is a target exactly once.

    Windows start at 0, T, 2T, ... (no overlap, so no token is scored twice). When ``n - 1`` is not a multiple of
    T, the last window is the final T tokens of the split -- full context rather than a short stub -- and its
    targets already scored by the previous window are set to ``IGNORE_INDEX`` (-100, which the model's loss
    skips). Batches hold ``batch_size`` windows (the last one fewer). For an exact mean, weight each batch's
    mean loss by ``(y != IGNORE_INDEX).sum()``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, not {batch_size!r}; e.g. --batch-size 32")
    n = check_length(data, block_size, name)
    T = block_size
    full = (n - 1) // T
    tail = (n - 1) - full * T  # targets left after the full windows
    starts = np.arange(full, dtype=np.int64) * T
    if tail:
        starts = np.append(starts, n - 1 - T)
    for b in range(0, len(starts), batch_size):
        chunk = starts[b : b + batch_size]
        x, y = _gather(data, chunk, T)
        if tail and b + len(chunk) == len(starts):
            y[-1, : T - tail] = IGNORE_INDEX
        yield x, y
