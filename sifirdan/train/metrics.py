"""Training metrics: one JSON object per line in ``metrics.jsonl``, a loss-curve PNG at the end.

Records carry a ``kind``: ``"train"`` (every ``log_interval`` steps: loss, lr, grad_norm, tokens_per_s,
peak_mem_mb, mfu), ``"eval"`` (train/val loss, bits per byte/char) and ``"final"`` (the full validation pass).
JSONL, because a crashed run still leaves every line written before the crash readable.
"""

from __future__ import annotations

import json
import math
import resource
import sys
from pathlib import Path

import torch

# nats/token -> bits per byte or char: defined once, in the data package beside bytes/chars per token
from sifirdan.data import bits_per_unit  # noqa: F401  (re-exported: the trainer calls M.bits_per_unit)
from sifirdan.fileio import atomic_write_bytes, atomic_write_text


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: allocated CUDA memory on a GPU, the process's max RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


# peak dense bf16 tensor-core FLOP/s by device name (no sparsity)
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_FLOPS.items():
        if key in name:
            return flops
    return None


def flops_per_token(n_params: int, n_layer: int, block_size: int, n_embd: int) -> float:
    """Training FLOPs per token: 6N for the matmuls (forward + backward) + 12 L T C for attention (PaLM, App. B)."""
    return 6 * n_params + 12 * n_layer * block_size * n_embd


class MetricsLog:
    """Append-only ``metrics.jsonl``; ``truncate_after(step)`` drops records a resumed run will redo."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self.records: list[dict] = []

    def truncate_after(self, step: int) -> None:
        if self.path is None or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a half-written last line from a crash
            if rec.get("iter", 0) <= step:
                kept.append(rec)
        self.records = kept
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.records.append(record)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")


def plot_losses(records: list[dict], path: str | Path, title: str = "") -> Path | None:
    """Train/val loss vs iteration (the guide's §11 plot) as a PNG; None when there is nothing to draw."""
    evals = [r for r in records if r.get("kind") == "eval" and r.get("val_loss") is not None]
    steps = [r for r in records if r.get("kind") == "train" and r.get("loss") is not None]
    if not evals and not steps:
        return None
    import io

    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    if steps:
        ax.plot([r["iter"] for r in steps], [r["loss"] for r in steps], color="tab:blue", alpha=0.3, lw=1,
                label="train (per step)")
    if evals:
        ax.plot([r["iter"] for r in evals], [r["train_loss"] for r in evals], "o-", color="tab:blue", ms=3, label="train")
        ax.plot([r["iter"] for r in evals], [r["val_loss"] for r in evals], "o-", color="tab:orange", ms=3, label="val")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (nats/token)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
