"""Where and in what precision training runs: device, autocast dtype, CPU threads."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

import torch

from sifirdan.configs import check_device
from sifirdan.errors import UserError
from sifirdan.train.config import CPU_DEFAULT_DTYPE

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: cuda > mps > cpu. Asking for a device that is not there is a user error, not a crash."""
    name = check_device(name or "auto")  # one list of names for the flags, config files and this
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
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


class CpuShare:
    """Threads for the CPU this run can actually have, re-decided while it trains.

    PyTorch starts one thread per core, and its OpenMP threads spin while they wait for each other. When
    another program keeps a core busy, the thread on that core gets a slice of it, every parallel region
    waits for that slow thread, and the spinning burns the time the other program could use: measured on 2
    cores beside one busy core, 2 threads ran at 0.36x their idle rate, 1 thread at 0.58x (bench/RESULTS.md,
    ``pretrain --busy``) -- more than a fair half. So: measure how many cores *other* processes use since the
    last look (``/proc/stat`` minus this process's own CPU time) and use the rest, at least one thread.
    Linux only; elsewhere, and with ``--threads N``, the thread count stays as it is. Changing the thread count
    changes the order of some float sums, so runs that must resume bit-exactly should pass ``--threads``.
    """

    def __init__(self, cores: int | None = None):
        self.cores = cores or _usable_cores()
        self.threads = torch.get_num_threads()
        self._last = _cpu_times()

    @property
    def available(self) -> bool:
        return self._last is not None

    def others_busy(self) -> float | None:
        """Cores' worth of CPU time that other processes used since the last call."""
        now = _cpu_times()
        if now is None or self._last is None:
            return None
        (t0, busy0, mine0), (t1, busy1, mine1) = self._last, now
        self._last = now
        if t1 - t0 < 0.05:
            return None
        return max(0.0, (busy1 - busy0) - (mine1 - mine0)) / (t1 - t0)

    def adjust(self) -> int | None:
        """Set the thread count to the cores left free; returns the new count when it changed."""
        others = self.others_busy()
        if others is None:
            return None
        want = max(1, min(self.cores, int(self.cores - others + 0.25)))
        if want == self.threads:
            return None
        torch.set_num_threads(want)
        self.threads = want
        return want


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times() -> tuple[float, float, float] | None:
    """(wall seconds, seconds of CPU all processes used, seconds of CPU this process used), or None."""
    import time

    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    own = os.times()
    return time.monotonic(), busy / hz, own.user + own.system


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
