"""Training batches: ``BatchSampler`` draws random windows from a token array, seeded per rank and resumable.

The windows are nanoGPT's ``get_batch``, drawn from the sampler's own seeded ``torch.Generator``; its
``state_dict`` is plain JSON, so a resumed run continues bit-exactly and a checkpoint holds no pickle.
``check_length`` and ``_gather`` (token windows -> x, y tensors) are shared with ``eval_batches.py``.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import numpy as np
import torch

from sifirdan.errors import UserError


def check_length(data, block_size: int, name: str) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise UserError(f"block_size must be a positive integer, not {block_size!r}; e.g. --block-size 128")
    n = len(data)
    if n < block_size + 1:
        raise UserError(
            f"the {name} split has {n:,} tokens, fewer than block_size + 1 = {block_size + 1}; "
            "lower --block-size or give more text"
        )
    return n


def _gather(data, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows data[s : s + T + 1] for each start -> x (B, T) and y = x shifted by one (B, T), int64."""
    idx = starts[:, None] + np.arange(block_size + 1)[None, :]  # (B, T+1)
    if isinstance(data, np.memmap) and data.filename is not None:
        # Read through a fresh mapping that is dropped right after (nanoGPT does the same): pages touched by
        # random windows would otherwise stay mapped and count in the process's RSS, which then grows with the
        # corpus over a long run. The OS page cache still keeps hot pages, so this costs one mmap per batch.
        view = np.memmap(data.filename, dtype=data.dtype, mode="r", offset=data.offset, shape=data.shape)
        rows = np.asarray(view[idx], dtype=np.int64)
        del view
    else:
        rows = np.asarray(data[idx], dtype=np.int64)
    buf = torch.from_numpy(rows)  # one fancy-index read
    # clone, not contiguous(): with one row the slices are already contiguous and x, y would share memory
    return buf[:, :-1].clone(), buf[:, 1:].clone()


def _derive_seed(seed: int, rank: int) -> int:
    # a hash, not seed + rank: runs with seeds 1 and 2 must not share a stream between rank 1 and rank 0
    digest = hashlib.sha256(f"sifirdan-batches:{seed}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class BatchSampler:
    """Random training windows (nanoGPT's get_batch) from a token array, reproducible and resumable.

    Each rank draws from its own ``torch.Generator`` seeded from (seed, rank), so ranks read different windows.
    ``state_dict()`` is plain JSON (the generator state as base64), so a checkpoint holds no pickle; after
    ``load_state_dict`` the next batches are bit-identical to those the original run would have drawn.
    """

    def __init__(
        self,
        data: np.ndarray,
        batch_size: int,
        block_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        name: str = "train",
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size must be a positive integer, not {batch_size!r}; e.g. --batch-size 32")
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise UserError(f"rank {rank!r} is not in 0..world_size-1 (world_size {world_size!r}); check the launcher")
        self.n = check_length(data, block_size, name)
        self.data = data
        self.batch_size = batch_size
        self.block_size = block_size
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.batches = 0  # drawn so far (for logs and sanity checks on resume)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(_derive_seed(self.seed, rank))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), both int64 (batch_size, block_size) on the CPU; y[b, t] is the token after x[b, t]."""
        starts = torch.randint(self.n - self.block_size, (self.batch_size,), generator=self.generator).numpy()
        self.batches += 1
        return _gather(self.data, starts, self.block_size)

    def state_dict(self) -> dict[str, Any]:
        state = self.generator.get_state().numpy().tobytes()
        return {
            "version": 1,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "block_size": self.block_size,
            "n_tokens": self.n,
            "batches": self.batches,
            "generator": base64.b64encode(state).decode("ascii"),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("version") != 1 or not isinstance(state.get("generator"), str):
            raise UserError("the batch sampler state in this checkpoint is not recognised; resume from a sifirdan checkpoint")
        if state["rank"] != self.rank:
            raise UserError(f"this checkpoint's sampler state is for rank {state['rank']}, not rank {self.rank}; load each rank's own state")
        if state["n_tokens"] != self.n:
            raise UserError(
                f"the training data changed since the checkpoint ({state['n_tokens']:,} tokens then, {self.n:,} now); "
                "resume with the same data and tokenizer, or start a new run"
            )
        raw = np.frombuffer(base64.b64decode(state["generator"]), dtype=np.uint8).copy()
        self.generator.set_state(torch.from_numpy(raw))
        self.seed = int(state["seed"])
        self.batches = int(state["batches"])
