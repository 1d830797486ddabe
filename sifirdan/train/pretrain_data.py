"""Pre-training's batches: the one loop (``trainer.py``) fed with random windows of the token bins.

Instruction fine-tuning builds its own ``TrainData`` (``finetune_data.py``) for the same ``Trainer``; the
stage itself is ``pretraining.pretrain``.
"""

from __future__ import annotations

import numpy as np

from sifirdan.data import BatchSampler, TokenBins, iter_eval_batches
from sifirdan.data.sampler import check_length
from sifirdan.train.config import TrainConfig
from sifirdan.train.distributed import DistInfo
from sifirdan.train.trainer import TrainData, stream_index

# the fixed evaluation batches get their own seeds, unrelated to any training stream
_EVAL_SEED_OFFSET = {"train": 7_919_000_001, "val": 7_919_000_002}


def fixed_batches(data: np.ndarray, batch_size: int, block_size: int, n: int, seed: int, name: str):
    """``n`` random windows drawn once; evaluating the same batches every time makes curves comparable."""
    sampler = BatchSampler(data, batch_size, block_size, seed, name=name)
    batches = [sampler.next_batch() for _ in range(n)]
    return lambda: iter(batches)


def check_split_lengths(bins: TokenBins, block_size: int) -> None:
    """Both splits must hold at least one window of block_size + 1 tokens (checked before a model is built)."""
    for split in ("train", "val"):
        check_length(bins.split(split), block_size, split)


def pretrain_data(bins: TokenBins, cfg: TrainConfig, block_size: int, dist: DistInfo | None = None) -> TrainData:
    """``TrainData`` over token bins: one ``BatchSampler`` per (rank, micro-step) stream."""
    dist = dist or DistInfo()
    n_streams = dist.world_size * cfg.grad_accum
    train = [
        BatchSampler(bins.train, cfg.batch_size, block_size, cfg.seed,
                     rank=stream_index(dist.rank, m, cfg.grad_accum), world_size=n_streams)
        for m in range(cfg.grad_accum)
    ]
    evals = {
        split: fixed_batches(bins.split(split), cfg.batch_size, block_size, cfg.eval_iters,
                             cfg.seed + _EVAL_SEED_OFFSET[split], split)
        for split in ("train", "val")
    }
    return TrainData(
        train=train,
        eval=evals,
        final=lambda: iter_eval_batches(bins.val, cfg.batch_size, block_size, "val"),
        bytes_per_token={s: bins.bytes_per_token(s) for s in ("train", "val")},
        chars_per_token={s: bins.chars_per_token(s) for s in ("train", "val")},
    )
