"""``GPT.forward``, computed with the C kernels: one function that knows the model's structure.

``fused_forward(model, idx, targets)`` returns what ``model(idx, targets)`` returns -- the same logits and
loss, the same gradients (tests hold it to within float rounding) -- in fewer passes over memory:

    x = embeddings(idx);  h = ln1(x)                                      (PyTorch modules, as in GPT.forward)
    per block:
        qkv = h W_qkv                          the qkv bias is added inside the attention kernel
        y   = causal_attention(qkv)            ops.causal_attention: softmax(Q K^T / sqrt(d) + mask) V
        x, h = x + y W_O (+ b_O), ln2(...)     ops.add_layernorm: the residual add, W_O's bias and the next
                                               LayerNorm in one pass
        f   = GELU(h W_1 + b_1) W_2            ops.bias_gelu
        x, h = x + f (+ b_2), next_norm(...)   ops.add_layernorm again; next_norm is the next block's ln1 or ln_f
                                               (with dropout on: f = ops.dropout(f W_2 + b_2), no bias to fuse)
    logits = lm_head(h);  loss = ops.cross_entropy(logits, targets)

The beyond-the-guide block (rotary positions, RMSNorm, a SwiGLU or squared-ReLU MLP, QK-norm, a logit cap:
``GPTConfig.gpt2_block`` is False; the default) takes ``_modern_forward``, laid out the same way:

    x = embeddings(idx);  h = ln1(x)
    per block:
        qkv = h W_qkv (+ b)                    PyTorch's matmul; the bias added before the rotation
        qkv = rotate q and k                   ops.rope_qkv, in the packed layout (QK-norm: PyTorch per head)
        y   = causal_attention(qkv)
        x, h = x + y W_O, ln2(...)             ops.add_rmsnorm (ops.add_layernorm for a LayerNorm)
        f   = (silu(h W_gate) * h W_up) W_2    ops.silu_mul for SwiGLU; another MLP is called as a module
        x, h = x + f, next_norm(...)           ops.add_rmsnorm again
    logits = lm_head(h) (soft-capped if asked);  loss = ops.cross_entropy(logits, targets)

With RoPE, RMSNorm and SwiGLU in PyTorch's ops this block trained at 0.88x the guide block's tokens/s on the
kernels; with them on the kernels, at 0.99-1.05x over two runs (1.01x through ``sifirdan pretrain``;
bench/block_speed.py, both blocks in the same run).

Wrappers stay in force. A layer is read directly (its ``weight`` and ``bias``) only when it is exactly the
class ``GPT`` builds it as (``nn.Linear``, ``nn.LayerNorm``, ``RMSNorm``, ``nn.GELU``, ``nn.Dropout``, and
``SwiGLUFeedForward`` for its gate) with no hooks;
anything else in its place -- a LoRA Linear whose effective weight is ``W + B A``, a quantised Linear, a module
with a forward hook -- is *called*, and only the steps around it are fused. Where the structure itself differs
(a block or attention class that is not sifirdan's -- in the guide block a feed-forward class too --, hooks on
those, global module hooks, the
``explicit`` guide attention, recorded attention maps) the fused path does not apply and ``FusedGPT`` runs
``GPT.forward`` unchanged: ``why_not(model)`` says why.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module_globals

from sifirdan.kernels import ops
from sifirdan.model.attention import MultiHeadAttention
from sifirdan.model.block import TransformerBlock
from sifirdan.model.feedforward import FeedForward
from sifirdan.model.gpt import GPT, IGNORE_INDEX
from sifirdan.model.mlp_variants import SwiGLUFeedForward
from sifirdan.model.norms import RMSNorm


# ------------------------------------------------------------------------------------------------ checks
def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _global_hooks() -> bool:
    """``nn.modules.module.register_module_forward_hook`` and friends apply to every module call; the fused
    path skips some calls, so with any of them registered it steps aside."""
    names = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
             "_global_backward_pre_hooks")
    return any(getattr(_module_globals, n, None) for n in names)


def _plain(m: nn.Module, cls: type) -> bool:
    """True when ``m`` is exactly ``cls`` with no hooks: then its parameters may be read instead of calling it."""
    return type(m) is cls and not _hooked(m)


def why_not(model: nn.Module) -> str | None:
    """None when ``fused_forward`` can stand in for this model's forward pass, else the reason it cannot.

    Checks the structure only; ``FusedGPT`` also checks each call (float32 CPU tensors, no autocast, no
    generation extras)."""
    if not ops.available():
        return f"kernels unavailable ({ops.describe()})"
    if type(model) is not GPT:
        return f"{type(model).__name__} is not sifirdan's GPT"
    if _global_hooks():
        return "global module hooks are registered"
    if _hooked(model):
        return "the GPT has hooks"
    modern = not model.config.gpt2_block  # _modern_forward: only block and attention are read directly
    for i, block in enumerate(model.blocks):
        parts = {"block": (block, TransformerBlock), "attention": (getattr(block, "attention", None), MultiHeadAttention)}
        if not modern:
            parts["feed_forward"] = (getattr(block, "feed_forward", None), FeedForward)
        for name, (m, cls) in parts.items():
            if not _plain(m, cls):
                return f"blocks[{i}].{name} is a {type(m).__name__}{' with hooks' if type(m) is cls else ''}, not sifirdan's {cls.__name__}"
        if block.attention.kind != "sdpa":
            return f"attention={block.attention.kind!r} runs the guide's own code"
        if block.attention.record_attention:
            return "attention maps are being recorded"
    return None


# ------------------------------------------------------------------------------------------------ pieces
def _linear_parts(linear: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x W^T, b)`` for a plain nn.Linear, so a kernel can add ``b`` inside its own pass; for anything else
    ``(linear(x), None)``: the module computes its whole output, bias included."""
    if _plain(linear, nn.Linear):
        return F.linear(x, linear.weight), linear.bias
    return linear(x), None


def _add_norm(x: torch.Tensor, y: torch.Tensor, bias: torch.Tensor | None, norm: nn.Module):
    """``x + y (+ bias)`` and ``norm`` of it: one C pass for a plain nn.LayerNorm or RMSNorm, PyTorch ops
    otherwise."""
    if _plain(norm, nn.LayerNorm) and len(norm.normalized_shape) == 1 and norm.weight is not None:
        return ops.add_layernorm(x, y, bias, norm)
    if _plain(norm, RMSNorm):
        return ops.add_rmsnorm(x, y, bias, norm)
    x = x + y if bias is None else x + (y + bias)
    return x, norm(x)


def _feed_forward(ffn: FeedForward, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """FFN(h) = GELU(h W_1 + b_1) W_2 (+ b_2), returning ``(output, bias still to add)``."""
    hidden, b1 = _linear_parts(ffn.fc, h)
    if b1 is not None and _plain(ffn.gelu, nn.GELU) and ffn.gelu.approximate == "none":
        hidden = ops.bias_gelu(hidden, b1)  # the bias rides along GELU's pass (and its gradient along backward's)
    else:
        hidden = ffn.gelu(hidden if b1 is None else hidden + b1)
    return _project_out(ffn, hidden)


def _project_out(ffn: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An MLP's last step, ``dropout(hidden W_2 + b_2)``, returning ``(output, bias still to add)``: the bias is
    left to the add + norm kernel unless a dropout comes after it."""
    drop = ffn.dropout
    if not _plain(drop, nn.Dropout):
        return drop(ffn.proj(hidden)), None
    if ffn.training and drop.p > 0:
        # the bias comes before the dropout, so it cannot wait for the add + norm kernel
        return ops.dropout(ffn.proj(hidden), drop.p), None
    return _linear_parts(ffn.proj, hidden)


# ------------------------------------------------------------------------------------------------ forward
def _modern_attention(a: MultiHeadAttention, h: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Attention(h) before W_O for the beyond-the-guide block: (B, T, n_embd), heads concatenated."""
    from sifirdan.model.rope import apply_rotary

    B, T, C = h.shape
    H = a.n_head
    qkv, qkv_bias = _linear_parts(a.qkv, h)  # (B, T, 3 * n_embd)
    if a.q_norm is None:
        if a.rotary is None:
            return ops.causal_attention(qkv, H, qkv_bias)  # the bias rides along the kernel's reads
        if qkv_bias is not None:
            qkv = qkv + qkv_bias  # rotation comes after the bias
        cos, sin = a.rotary.tables(positions, T, h.device, h.dtype)  # (T, head_size / 2)
        return ops.causal_attention(ops.rope_qkv(qkv, cos, sin, H), H)
    # QK-norm: normalise and rotate per head in PyTorch, in the (B, T, H, head_size) layout the kernel reads
    if qkv_bias is not None:
        qkv = qkv + qkv_bias
    q, k, v = qkv.split(C, dim=2)
    q, k = a.q_norm(q.view(B, T, H, C // H)), a.k_norm(k.view(B, T, H, C // H))
    if a.rotary is not None:
        cos, sin = a.rotary.tables(positions, T, h.device, h.dtype)
        q, k = apply_rotary(q, cos[:, None], sin[:, None]), apply_rotary(k, cos[:, None], sin[:, None])
    return ops.causal_attention(torch.cat([q.reshape(B, T, C), k.reshape(B, T, C), v], dim=2), H)


def _modern_feed_forward(ffn: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """FFN(h), returning ``(output, bias still to add)``: SwiGLU's gate on the kernel, the guide's GELU MLP as in
    the guide's block, any other MLP (squared ReLU, a wrapper) called as a module."""
    if type(ffn) is FeedForward:
        return _feed_forward(ffn, h)
    if type(ffn) is not SwiGLUFeedForward or _hooked(ffn):
        return ffn(h), None
    hidden = ops.silu_mul(ffn.gate(h), ffn.up(h))  # (B, T, hidden): silu(h W_gate) * (h W_up)
    return _project_out(ffn, hidden)


def _modern_forward(model: GPT, idx: torch.Tensor, targets: torch.Tensor | None):
    """``GPT.forward`` for the beyond-the-guide block, laid out as ``fused_forward`` lays out the guide's: the
    residual add and the next RMSNorm in one kernel, rotary positions on the packed qkv, attention, SwiGLU's
    gate and the loss on the kernels (see the module docstring)."""
    B, T = idx.shape
    blocks = model.blocks
    x = model.embeddings(idx)  # (B, T, n_embd); adds the position table when the model has one
    positions = torch.arange(T, device=idx.device)
    h = blocks[0].ln1(x)
    for i, block in enumerate(blocks):
        next_norm = blocks[i + 1].ln1 if i + 1 < len(blocks) else model.ln_f
        y, out_bias = _linear_parts(block.attention.proj, _modern_attention(block.attention, h, positions))
        x, h = _add_norm(x, y, out_bias, block.ln2)  # x = x + Attention(ln1(x)); h = ln2(x)
        f, f_bias = _modern_feed_forward(block.feed_forward, h)
        x, h = _add_norm(x, f, f_bias, next_norm)  # x = x + FFN(ln2(x)); h = next_norm(x)
    logits = model.lm_head(h)  # h is ln_f(x) after the last block: (B, T, vocab_size)
    if model.config.logit_softcap > 0:
        cap = model.config.logit_softcap
        logits = cap * torch.tanh(logits / cap)
    loss = None
    if targets is not None:
        loss = ops.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), IGNORE_INDEX)
    return logits, loss


def fused_forward(model: GPT, idx: torch.Tensor, targets: torch.Tensor | None = None):
    """``model(idx, targets)`` for a model ``why_not`` accepts, with float32 CPU activations."""
    if idx.shape[1] > model.config.block_size:
        return model(idx, targets)  # GPT.forward's own error message
    if not model.config.gpt2_block:
        return _modern_forward(model, idx, targets)
    blocks = model.blocks
    x = model.embeddings(idx)  # (B, T, n_embd)
    h = blocks[0].ln1(x)  # n_layer >= 1 (GPTConfig.validate)
    for i, block in enumerate(blocks):
        next_norm = blocks[i + 1].ln1 if i + 1 < len(blocks) else model.ln_f
        attention = block.attention
        qkv, qkv_bias = _linear_parts(attention.qkv, h)  # (B, T, 3 * n_embd)
        y = ops.causal_attention(qkv, attention.n_head, qkv_bias)  # (B, T, n_embd), heads concatenated
        y, out_bias = _linear_parts(attention.proj, y)
        x, h = _add_norm(x, y, out_bias, block.ln2)  # x = x + Attention(ln1(x)); h = ln2(x)
        f, f_bias = _feed_forward(block.feed_forward, h)
        x, h = _add_norm(x, f, f_bias, next_norm)  # x = x + FFN(ln2(x)); h = next_norm(x)
    logits = model.lm_head(h)  # h is ln_f(x) after the last block: (B, T, vocab_size)
    loss = None
    if targets is not None:
        loss = ops.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), IGNORE_INDEX)
    return logits, loss


class FusedGPT(nn.Module):
    """A GPT whose training/evaluation forward pass runs on the C kernels where they apply.

    ``FusedGPT(model)(idx, targets)`` equals ``model(idx, targets)``. It owns no parameters of its own (the
    GPT's are its only ones, under ``model.``), so optimizers, DDP and ``torch.compile`` see the same tensors;
    save ``fused.model``, not the wrapper. Calls with generation extras (a KV cache, padding masks,
    positions), bf16/fp16 autocast, or tensors that are not float32 on the CPU go to ``GPT.forward``.
    """

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    @property
    def config(self):
        return self.model.config

    def applies(self, idx: torch.Tensor) -> bool:
        """Whether this call takes the fused path (the structure is re-checked: a wrapper may arrive later)."""
        if idx.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
            return False
        weight = self.model.ln_f.weight if self.model.ln_f.weight is not None else next(self.model.parameters())
        return weight.dtype == torch.float32 and weight.device.type == "cpu" and why_not(self.model) is None

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, **generation_extras):
        if generation_extras or not self.applies(idx):
            return self.model(idx, targets, **generation_extras)
        return fused_forward(self.model, idx, targets)


def accelerate(model: nn.Module, enabled: bool = True) -> nn.Module:
    """``FusedGPT(model)`` when ``enabled`` and the fused path can represent ``model`` on this machine, else
    ``model`` itself. The one place sifirdan decides to use the kernels (the trainer and ``sifirdan eval``
    call it)."""
    if enabled and why_not(model) is None:
        return FusedGPT(model)
    return model
