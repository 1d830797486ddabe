"""Where and in what precision training runs: device, autocast dtype, CPU threads."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

import torch

from sifirdan.errors import UserError
from sifirdan.train.config import CPU_DEFAULT_DTYPE

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: cuda > mps > cpu. Asking for a device that is not there is a user error, not a crash."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was requested but no CUDA GPU is available here; use --device cpu (or auto)")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        elif dev.index >= torch.cuda.device_count():
            raise UserError(f"{name} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise UserError("--device mps was requested but MPS is not available; use --device cpu (or auto)")
    elif dev.type != "cpu":
        raise UserError(f"unsupported device {name!r}; use auto, cpu, cuda or mps")
    return dev


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype (fp32 = no autocast). ``auto``: bf16 on GPUs that support it, else fp16."""
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif device.type == "cpu":
            name = CPU_DEFAULT_DTYPE
        else:
            name = "fp32"
    if name == "fp16" and device.type != "cuda":
        raise UserError("--dtype fp16 needs a CUDA GPU (it relies on loss scaling); use --dtype bf16 or fp32 on this device")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU has no bf16 support; use --dtype fp16 or fp32")
    return _DTYPES[name]


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision context: matmuls in ``dtype``, weights and optimizer state stay fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def setup_cpu(threads: int, local_world_size: int, flush_denormal: bool) -> None:
    """Pick CPU thread count (split between processes on one machine) and denormal handling."""
    if threads > 0:
        torch.set_num_threads(threads)
    elif local_world_size > 1:
        # N processes x all cores each would oversubscribe the CPU and thrash
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world_size))
    if flush_denormal:
        torch.set_flush_denormal(True)
    keep_freed_memory()


def keep_freed_memory() -> None:
    """Stop glibc from handing freed tensor memory back to the kernel between steps.

    Each op of a training step writes a fresh multi-MiB output. glibc returns large freed blocks to the kernel
    (mmap threshold / heap trim), so the next step's outputs land on fresh pages: ~5,000 page faults per step at
    the guide's shape, which made GELU 8x slower inside the step than timed alone. Keeping the memory makes
    the trainer's CPU step 167 -> 146 ms (guide shape, 2 cores) for ~5 % more peak RSS (537 -> 563 MiB).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)  # serve blocks < 1 GiB from the heap, not fresh mmaps
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)  # never shrink the heap top back to the kernel
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        pass
