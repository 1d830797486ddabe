"""Memory checked before it is taken: estimates for a model and a training run, against what the machine has.

A typo (``--block-size 100000``, ``--n-embd 1000000``) or a forged checkpoint (``vocab_size`` 10**9 in a
``config.json``) must end in one line that says how much was asked for and how much there is -- not in the
OS killing the process, an allocator traceback or an hour of swapping. So every command estimates first
and refuses what cannot fit; the estimates are deliberately on the low side (refusing a run that would have
fit is worse than letting a borderline one try).
"""

from __future__ import annotations

import dataclasses
import os

from sifirdan.errors import UserError

GiB = 2**30


def available_memory(device=None) -> int | None:
    """Bytes this process can still allocate on ``device`` (CPU: MemAvailable, capped by RLIMIT_AS); None
    when unknown."""
    if device is not None and getattr(device, "type", "cpu") == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            avail = soft if avail is None else min(avail, soft)
    except (ImportError, ValueError, OSError):
        pass
    return avail


def count_parameters(config) -> int:
    """Parameters of ``GPT(config)`` without building it: a 1- and a 2-layer model on the meta device (no
    memory), the difference times ``n_layer``. Instant for any ``n_layer``."""
    import torch

    from sifirdan.model import GPT

    def count(n_layer: int) -> int:
        with torch.device("meta"):
            return GPT(dataclasses.replace(config, n_layer=n_layer)).num_parameters()

    one = count(1)
    per_layer = count(2) - one
    return one + (config.n_layer - 1) * per_layer


def training_bytes(model_cfg, batch_size: int, eval_iters: int = 0) -> dict[str, int]:
    """A low estimate of a training run's peak memory, in bytes, by part.

    fp32 weights + gradients + AdamW's two moments (16 bytes a parameter); activations kept for backward
    (about 16 floats per token, channel and layer, plus the (T, T) attention scores per head where the explicit
    path builds them); logits, their softmax and gradient (3 floats per token and vocabulary entry); the fixed
    evaluation batches.
    """
    n_params = count_parameters(model_cfg)
    B, T, C, L, V, H = batch_size, model_cfg.block_size, model_cfg.n_embd, model_cfg.n_layer, model_cfg.vocab_size, model_cfg.n_head
    scores = H * T if model_cfg.attention == "explicit" else 0
    return {
        "weights + AdamW state": 16 * n_params,
        "activations": 4 * B * T * L * (16 * C + scores),
        "logits": 4 * 3 * B * T * V,
        "evaluation batches": 2 * eval_iters * B * T * 16,  # train + val, x and y as int64
    }


def check_fits(parts: dict[str, int], what: str, fix: str, device=None) -> None:
    """Refuse with one line when the estimate exceeds the memory available (nothing is allocated here)."""
    need = sum(parts.values())
    have = available_memory(device)
    if have is None or need <= have:
        return
    detail = ", ".join(f"{k} {_gib(v)}" for k, v in parts.items() if v >= need * 0.05)
    where = "GPU memory" if device is not None and getattr(device, "type", "cpu") == "cuda" else "memory"
    raise UserError(f"{what} needs about {_gib(need)} ({detail}) but only {_gib(have)} of {where} is available; {fix}")


def _gib(n: int) -> str:
    return f"{n / GiB:,.1f} GiB" if n >= GiB / 10 else f"{n / 2**20:,.0f} MiB"


__all__ = ["available_memory", "check_fits", "count_parameters", "training_bytes"]
