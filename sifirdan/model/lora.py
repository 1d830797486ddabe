"""LoRA (Hu et al. 2021): fine-tune a frozen GPT through small low-rank adapters on its Linear layers.

    y = x W^T + b + (alpha / r) * (x A^T) B^T          A: (r, in_features), B: (out_features, r)

W and b stay frozen; only A and B learn. A starts kaiming-uniform (bound 1/sqrt(in_features), as the paper's
code and peft), B starts at zero, so at step 0 the adapted model computes exactly what the base model does.
The update B A has rank r, and ``alpha / r`` scales it (alpha = r: scale 1, the paper's choice).

    n_trained = apply_lora(model, rank=8, alpha=8, targets="qkv,proj,ffn")   # freezes everything else
    ... train ...
    plain = merged_copy(model)        # a deep copy with W + (alpha / r) B A folded in: an ordinary GPT
    merge_lora(model)                 # the same, in place

Targets name Linears of every block: ``qkv`` (attention.qkv: W_Q | W_K | W_V), ``proj`` (attention.proj: W_O),
``ffn`` (feed_forward.fc and feed_forward.proj: W_1, W_2). The embeddings, LayerNorms and LM head stay frozen.

A ``LoRALinear`` is not an ``nn.Linear``, so the C kernels' fused forward (``sifirdan.kernels``) calls it
instead of reading its weight: adapters work with the kernels on and off, and give the same gradients on both.
A merged model holds plain Linears again, so everything that loads a GPT (``checkpoint.load_model``, generate,
chat, eval) reads it with no knowledge of LoRA.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from sifirdan.errors import UserError

# target name -> the block's Linears it adapts (attribute paths inside a TransformerBlock)
TARGETS: dict[str, tuple[str, ...]] = {
    "qkv": ("attention.qkv",),
    "proj": ("attention.proj",),
    # the guide's MLP has fc + proj; a SwiGLU MLP (model/mlp_variants.py) gate + up + proj: each block has one kind
    "ffn": ("feed_forward.fc", "feed_forward.gate", "feed_forward.up", "feed_forward.proj"),
}
DEFAULT_TARGETS = ("qkv", "proj", "ffn")  # every Linear of every block (QLoRA: all layers match full fine-tuning best)


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * (x A^T) B^T`` around a frozen ``nn.Linear`` (no dropout on the adapter)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        if type(base) is not nn.Linear:
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.scale = self.alpha / self.rank
        w = base.weight
        bound = 1.0 / math.sqrt(self.in_features)  # kaiming_uniform_(a=sqrt(5)) on an (r, in) matrix
        a = torch.empty(self.rank, self.in_features).uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(a.to(device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.rank, device=w.device, dtype=w.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """W + (alpha / rank) B A, computed in float32 and returned in W's dtype."""
        w = self.base.weight
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scale
        return (w.float() + delta).to(w.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}"


# ------------------------------------------------------------------------------------------------ settings
def parse_targets(targets: str | Iterable[str]) -> list[str]:
    """``"qkv,proj"`` (or a list) -> the target names in canonical order; an unknown name is a UserError."""
    names = [t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets)]
    if not names or any(not n for n in names):
        raise UserError(f"--lora-targets {','.join(names)!r} has an empty name; give a comma-separated list of "
                        f"{', '.join(TARGETS)} (e.g. --lora-targets qkv,proj,ffn)")
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise UserError(f"--lora-targets: unknown target(s) {', '.join(map(repr, unknown))}; choose from "
                        f"{', '.join(TARGETS)} (qkv: attention Q/K/V, proj: attention output, ffn: both "
                        "feed-forward Linears), e.g. --lora-targets qkv,proj,ffn")
    return [t for t in TARGETS if t in names]


def check_settings(rank, alpha, targets, n_embd: int | None = None) -> tuple[int, float, list[str]]:
    """``(rank, alpha, targets)`` checked (one-line UserErrors naming the flag and the fix); alpha None -> rank."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise UserError(f"--lora-rank must be a positive integer, got {rank!r}; try --lora-rank 8")
    if n_embd is not None and rank > n_embd:
        raise UserError(f"--lora-rank {rank} is larger than the model's n_embd {n_embd} (a low-rank update has "
                        f"rank at most n_embd); pass --lora-rank {min(8, n_embd)} or another value <= {n_embd}")
    if alpha is None:
        alpha = float(rank)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise UserError(f"--lora-alpha must be a positive number, got {alpha!r}; try --lora-alpha {rank} "
                        "(the scale is alpha / rank; alpha = rank gives 1)")
    return rank, float(alpha), parse_targets(targets)


# ------------------------------------------------------------------------------------------------ apply / merge
def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def _split(block: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, attr = path.rpartition(".")
    return (block.get_submodule(parent_path) if parent_path else block), attr


def apply_lora(model: nn.Module, rank: int, alpha: float | None = None,
               targets: str | Iterable[str] = DEFAULT_TARGETS, generator: torch.Generator | None = None) -> int:
    """Freeze ``model`` and put a ``LoRALinear`` on each target Linear of every block; returns the number of
    trainable parameters (the adapters'). ``alpha`` defaults to ``rank``; ``generator`` seeds the A matrices
    (default: torch's global RNG, as ``nn.init`` uses)."""
    n_embd = getattr(getattr(model, "config", None), "n_embd", None)
    rank, alpha, names = check_settings(rank, alpha, targets, n_embd)
    if lora_layers(model):
        raise ValueError("the model has LoRA adapters already; merge_lora it first or start from the base model")
    model.requires_grad_(False)  # embeddings, LayerNorms, LM head, every base weight
    for block in model.blocks:
        for name in names:
            for path in TARGETS[name]:
                parent, attr = _split(block, path)
                if not hasattr(parent, attr):  # e.g. feed_forward.gate in the guide's GELU MLP
                    continue
                setattr(parent, attr, LoRALinear(getattr(parent, attr), rank, alpha, generator))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every ``LoRALinear`` in place with its base ``nn.Linear`` holding W + (alpha / rank) B A (the
    bias unchanged); every parameter is trainable again, as in a freshly loaded GPT. Returns ``model``."""
    for name, layer in lora_layers(model):
        parent, attr = _split(model, name)
        base = layer.base
        base.weight.copy_(layer.merged_weight())
        setattr(parent, attr, base)
    model.requires_grad_(True)
    return model


def merged_copy(model: nn.Module) -> nn.Module:
    """A merged deep copy (``merge_lora``); ``model`` and its training state are left untouched. What a
    LoRA run saves as ``model.safetensors`` (``Trainer(export_model=merged_copy)``)."""
    return merge_lora(copy.deepcopy(model))


def settings_of(model: nn.Module) -> dict | None:
    """``{"rank", "alpha", "targets"}`` of the adapters on ``model``, or None without any."""
    layers = lora_layers(model)
    if not layers:
        return None
    present = {name.split(".", 2)[2] for name, _ in layers if name.startswith("blocks.")}
    targets = [t for t, paths in TARGETS.items() if any(p in present for p in paths)]
    return {"rank": layers[0][1].rank, "alpha": layers[0][1].alpha, "targets": targets}
