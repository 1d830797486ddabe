"""The kernels of ``_kernels.c`` as autograd functions, and whether this machine should use them.

Seven steps of a small GPT's CPU training step, each the same function as the PyTorch code it replaces
(tests hold outputs and gradients to it), faster because they move less memory (see the top of
``_kernels.c``):

  * ``causal_attention(qkv, n_head, bias)`` -- softmax(Q K^T / sqrt(head_size) + causal mask) V straight from
    the packed (B, T, 3*n_embd) qkv projection (its bias added on the fly), returned as (B, T, n_embd);
  * ``bias_gelu(h, bias)`` -- GELU(h + bias), the bias gradient summed in GELU's backward pass;
  * ``cross_entropy(logits, targets)`` -- mean loss and its gradient in one pass over the logits;
  * ``dropout(x, p)`` -- inverted dropout whose mask is regenerated from a seed, never stored;
  * ``add_layernorm(x, y, bias, norm)`` -- the residual add (with the sub-layer's output bias) and the
    LayerNorm that reads it next, forward and backward each in one pass; ``add_rmsnorm`` the same with RMSNorm;
  * ``silu_mul(g, u)`` -- SwiGLU's gate silu(g) * u, forward and backward each one pass (PyTorch: silu, mul,
    and in backward two muls and a silu backward);
  * ``rope_qkv(qkv, cos, sin, n_head)`` -- rotary positions applied to the queries and keys of the packed
    (B, T, 3*n_embd) projection, in the packed layout the attention kernel reads (PyTorch: per-head views,
    four multiplies, a concatenation per tensor, then another to re-pack q | k | v).

Each function reads raw float32 CPU memory and refuses anything else (``_check``). Which of them a model's
forward pass uses, and when, is decided in ``fused.py``, not here.
"""

from __future__ import annotations

import math
import os
import platform

import torch

try:  # built by `pip install -e .` (setup.py); optional
    from sifirdan.kernels import _kernels
except ImportError:  # pragma: no cover - depends on the install
    _kernels = None


# Copies of the kernels that beat PyTorch's ops on a training step (bench/kernels.py, same run). AVX2 joined
# when its copy got native 8-float vectors (it was written with 16-float ones, which GCC lowers lane by lane
# on 8-float registers: 0.54x PyTorch's step before, 1.18x after, forced on this project's AMD EPYC). The
# generic copy (baseline SSE2) does not beat PyTorch. SIFIRDAN_KERNELS_ISA=generic|avx2 forces a copy (tests
# and benchmarks of the narrower copies on a wider machine); SIFIRDAN_KERNELS=0 turns them all off.
FAST_ISAS = ("avx512", "avx2")


def _switched_off() -> bool:
    return os.environ.get("SIFIRDAN_KERNELS", "").strip().lower() in ("0", "off", "false", "no")


def available() -> bool:
    """True when the C kernels are built, fast on this CPU, not switched off, and worth using with the
    current thread count.

    Built without OpenMP (e.g. Apple Clang) they run on one thread, which only beats PyTorch's
    multi-threaded kernels when PyTorch is on one thread too."""
    if _kernels is None or _switched_off():
        return False
    fast = _kernels.isa in FAST_ISAS or bool(os.environ.get("SIFIRDAN_KERNELS_ISA"))
    return fast and (bool(_kernels.openmp) or torch.get_num_threads() == 1)


def describe() -> str:
    """One line for logs, ``sifirdan --version`` and benchmark tables: which copy of the kernels runs here,
    or why none does (and then PyTorch's own ops run)."""
    if _kernels is None:
        return "not built (pip install -e . needs a C compiler): PyTorch's ops"
    threads = "OpenMP" if _kernels.openmp else "1 thread (no OpenMP)"
    if _switched_off():
        return f"{_kernels.isa}, {threads}; off (SIFIRDAN_KERNELS=0): PyTorch's ops"
    if available():
        return f"{_kernels.isa}, {threads}"
    if _kernels.isa not in FAST_ISAS:
        machine = platform.machine().lower()
        if machine in ("arm64", "aarch64") or machine.startswith("arm"):
            return f"{_kernels.isa}, {threads}; unused on ARM (no NEON copy; PyTorch's ops are faster)"
        return f"{_kernels.isa}, {threads}; unused: slower than PyTorch's ops on a CPU without AVX2"
    return f"{_kernels.isa}, {threads}; unused: PyTorch has more threads"


def applies(*tensors: torch.Tensor) -> bool:
    """True when the kernels are available and every tensor is a float32 CPU tensor."""
    return available() and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def _check(name: str, *tensors: torch.Tensor | None) -> None:
    """The C code reads raw float32 memory: refuse anything else rather than read past a buffer."""
    for t in tensors:
        if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu"):
            raise TypeError(f"sifirdan kernel {name}: needs float32 CPU tensors, got {t.dtype} on {t.device}")


class CausalAttention(torch.autograd.Function):
    """Causal multi-head attention on packed qkv (plus the qkv projection's bias, added as the kernel reads
    q, k and v); backward recomputes the probabilities from the saved log-sum-exp of each query's scores
    (O(T) memory, like FlashAttention) and sums the bias gradient as it writes d(qkv)."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, bias: torch.Tensor | None, n_head: int) -> torch.Tensor:
        _check("causal_attention", qkv, bias)
        qkv = qkv.contiguous()
        bias = bias.contiguous() if bias is not None else None
        B, T, C3 = qkv.shape
        if C3 % (3 * n_head) or (bias is not None and bias.shape != (C3,)):
            raise ValueError(f"causal_attention: qkv {tuple(qkv.shape)} / bias do not fit {n_head} heads")
        C = C3 // 3
        D = C // n_head
        out = qkv.new_empty(B, T, C)
        lse = qkv.new_empty(B, n_head, T)
        _kernels.attention_forward(
            qkv.data_ptr(), _ptr(bias), out.data_ptr(), lse.data_ptr(), B, T, n_head, D, 1.0 / math.sqrt(D)
        )
        ctx.save_for_backward(qkv, bias, lse)
        ctx.n_head = n_head
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout: torch.Tensor):
        qkv, bias, lse = ctx.saved_tensors
        _check("causal_attention backward", dout)
        dout = dout.contiguous()
        B, T, C3 = qkv.shape
        D = C3 // 3 // ctx.n_head
        dqkv = torch.empty_like(qkv)
        dbias = torch.empty_like(bias) if bias is not None and ctx.needs_input_grad[1] else None
        _kernels.attention_backward(
            qkv.data_ptr(), _ptr(bias), dout.data_ptr(), lse.data_ptr(), dqkv.data_ptr(), _ptr(dbias),
            B, T, ctx.n_head, D, 1.0 / math.sqrt(D),
        )
        return dqkv, dbias, None


def _ptr(t: torch.Tensor | None) -> int:
    return t.data_ptr() if t is not None else 0


def causal_attention(qkv: torch.Tensor, n_head: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, 3*n_embd) packed q|k|v (+ bias (3*n_embd,), if given) -> (B, T, n_embd) causal attention output,
    heads concatenated."""
    return CausalAttention.apply(qkv, bias, n_head)


class BiasGELU(torch.autograd.Function):
    """GELU(h + bias), the exact (erf) GELU of nn.GELU(); saves h, not h + bias, and sums the bias gradient
    in the same pass as GELU's backward."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        _check("bias_gelu", h, bias)
        h = h.contiguous()
        bias = bias.contiguous()
        N = h.shape[-1]
        if bias.shape != (N,):
            raise ValueError(f"bias_gelu: bias {tuple(bias.shape)} does not match the last dimension {N}")
        out = torch.empty_like(h)
        _kernels.bias_gelu_forward(h.data_ptr(), bias.data_ptr(), out.data_ptr(), h.numel() // N, N)
        ctx.save_for_backward(h, bias)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        h, bias = ctx.saved_tensors
        _check("bias_gelu backward", g)
        g = g.contiguous()
        N = h.shape[-1]
        dh = torch.empty_like(h)
        db = torch.empty_like(bias)
        _kernels.bias_gelu_backward(g.data_ptr(), h.data_ptr(), bias.data_ptr(), dh.data_ptr(), db.data_ptr(), h.numel() // N, N)
        return dh, db if ctx.needs_input_grad[1] else None


def bias_gelu(h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """GELU(h + bias) over the last dimension; h is (..., N), bias is (N,)."""
    return BiasGELU.apply(h, bias)


class AddLayerNorm(torch.autograd.Function):
    """The pre-LN block's seam: ``xo = x + y (+ bias)`` (the residual stream plus a sub-layer's output and that
    sub-layer's output bias), then ``h = LayerNorm(xo)`` for the next sub-layer, in one pass over the rows.
    Backward is one pass too: the residual gradient plus LayerNorm's, written once, with the column sums for
    the LayerNorm's weight and bias and the output bias. PyTorch would take an addmm bias broadcast, an add,
    a LayerNorm and, in backward, a LayerNorm backward, a gradient accumulation and a bias sum."""

    @staticmethod
    def forward(ctx, x, y, bias, weight, ln_bias, eps: float, rms: bool = False):
        _check("add_layernorm", x, y, bias, weight, ln_bias)
        x, y = x.contiguous(), y.contiguous()
        N = x.shape[-1]
        if y.shape != x.shape or weight.shape != (N,) or any(t is not None and t.shape != (N,) for t in (bias, ln_bias)):
            raise ValueError(f"add_layernorm: shapes {tuple(x.shape)} / {tuple(y.shape)} / parameters do not fit")
        M = x.numel() // N
        xo, h = torch.empty_like(x), torch.empty_like(x)
        mean, rstd = x.new_empty(M), x.new_empty(M)
        _kernels.add_layernorm_forward(
            x.data_ptr(), y.data_ptr(), _ptr(bias), weight.contiguous().data_ptr(), _ptr(ln_bias), xo.data_ptr(),
            h.data_ptr(), mean.data_ptr(), rstd.data_ptr(), float(eps), M, N, bool(rms),
        )
        ctx.save_for_backward(xo, mean, rstd, weight)
        ctx.has = (bias is not None, ln_bias is not None)
        ctx.rms = bool(rms)
        return xo, h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dxo, dh):
        xo, mean, rstd, weight = ctx.saved_tensors
        _check("add_layernorm backward", dxo, dh)
        N = xo.shape[-1]
        dh = torch.zeros_like(xo) if dh is None else dh.contiguous()
        dxo = dxo.contiguous() if dxo is not None else None
        dx = torch.empty_like(xo)
        need = ctx.needs_input_grad
        db = xo.new_empty(N) if ctx.has[0] and need[2] else None
        dweight = xo.new_empty(N) if need[3] else None
        dln_bias = xo.new_empty(N) if ctx.has[1] and need[4] else None
        _kernels.add_layernorm_backward(
            dh.data_ptr(), _ptr(dxo), xo.data_ptr(), mean.data_ptr(), rstd.data_ptr(), weight.contiguous().data_ptr(),
            dx.data_ptr(), _ptr(dweight), _ptr(dln_bias), _ptr(db), xo.numel() // N, N, ctx.rms,
        )
        # x and y get the same gradient; autograd never adds into a tensor it shares, so one tensor serves both
        return dx if need[0] else None, dx if need[1] else None, db, dweight, dln_bias, None, None


def add_layernorm(x: torch.Tensor, y: torch.Tensor, bias: torch.Tensor | None, norm: torch.nn.LayerNorm):
    """``xo = x + y (+ bias)``; returns ``(xo, norm(xo))``. ``norm`` is an nn.LayerNorm over the last dimension."""
    return AddLayerNorm.apply(x, y, bias, norm.weight, norm.bias, norm.eps)


def add_rmsnorm(x: torch.Tensor, y: torch.Tensor, bias: torch.Tensor | None, norm: torch.nn.Module):
    """``xo = x + y (+ bias)``; returns ``(xo, norm(xo))`` for sifirdan's ``RMSNorm`` (a ``weight`` and an ``eps``):
    ``weight * xo / sqrt(mean(xo^2) + eps)``, as ``F.rms_norm``. The same kernel as ``add_layernorm``, with the
    mean taken as zero."""
    return AddLayerNorm.apply(x, y, bias, norm.weight, None, norm.eps, True)


class SiluMul(torch.autograd.Function):
    """``silu(g) * u``, SwiGLU's gate (g and u the gate and up projections, same shape). Saves g and u, not the
    product: backward recomputes the sigmoid as it writes both gradients in one pass."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        _check("silu_mul", g, u)
        if g.shape != u.shape:
            raise ValueError(f"silu_mul: gate {tuple(g.shape)} and up {tuple(u.shape)} differ in shape")
        g, u = g.contiguous(), u.contiguous()
        out = torch.empty_like(g)
        _kernels.silu_mul_forward(g.data_ptr(), u.data_ptr(), out.data_ptr(), g.numel())
        ctx.save_for_backward(g, u)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d: torch.Tensor):
        g, u = ctx.saved_tensors
        _check("silu_mul backward", d)
        d = d.contiguous()
        dg, du = torch.empty_like(g), torch.empty_like(u)
        _kernels.silu_mul_backward(d.data_ptr(), g.data_ptr(), u.data_ptr(), dg.data_ptr(), du.data_ptr(), g.numel())
        return dg, du


def silu_mul(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``F.silu(g) * u`` for two tensors of the same shape."""
    return SiluMul.apply(g, u)


class RopeQKV(torch.autograd.Function):
    """Rotary positions on packed (B, T, 3*n_embd) q | k | v: each head's channel pairs (i, i + head_size/2)
    of q and k rotated by row t of the (T, head_size/2) cos / sin tables, v copied. Backward rotates the
    gradient back (a rotation's transpose is its inverse); nothing is saved but the tables."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_head: int) -> torch.Tensor:
        _check("rope_qkv", qkv, cos, sin)
        B, T, C3 = qkv.shape
        if C3 % (3 * n_head) or (C3 // 3 // n_head) % 2:
            raise ValueError(f"rope_qkv: qkv {tuple(qkv.shape)} does not fit {n_head} heads of an even size")
        D = C3 // 3 // n_head
        if cos.shape != (T, D // 2) or sin.shape != (T, D // 2):
            raise ValueError(f"rope_qkv: tables {tuple(cos.shape)} / {tuple(sin.shape)} are not ({T}, {D // 2})")
        qkv, cos, sin = qkv.contiguous(), cos.contiguous(), sin.contiguous()
        out = torch.empty_like(qkv)
        _kernels.rope(qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), out.data_ptr(), 1.0, B * T, T, n_head, D)
        ctx.save_for_backward(cos, sin)
        ctx.shape = (B, T, n_head, D)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout: torch.Tensor):
        cos, sin = ctx.saved_tensors
        _check("rope_qkv backward", dout)
        B, T, H, D = ctx.shape
        dout = dout.contiguous()
        dqkv = torch.empty_like(dout)
        _kernels.rope(dout.data_ptr(), cos.data_ptr(), sin.data_ptr(), dqkv.data_ptr(), -1.0, B * T, T, H, D)
        return dqkv, None, None, None


def rope_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, T, 3*n_embd) packed q|k|v -> the same with q and k rotated (``model/rope.py: apply_rotary`` per head,
    its "half split" pairs); cos / sin: (T, head_size / 2), row t for position t."""
    return RopeQKV.apply(qkv, cos, sin, n_head)


class CrossEntropy(torch.autograd.Function):
    """Mean cross-entropy over rows whose target is not ``ignore_index`` (F.cross_entropy's default
    reduction). Forward writes the gradient too, in the same pass over the logits, when one is needed."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
        _check("cross_entropy", logits)
        logits = logits.contiguous()
        targets = targets.contiguous().long()
        N, V = logits.shape
        if targets.shape != (N,):
            raise ValueError(f"cross_entropy: targets {tuple(targets.shape)} do not match logits {tuple(logits.shape)}")
        n_valid = int((targets != ignore_index).sum())
        grad = torch.empty_like(logits) if logits.requires_grad else None
        loss = _kernels.cross_entropy(
            logits.data_ptr(), targets.data_ptr(), grad.data_ptr() if grad is not None else 0, N, V, ignore_index,
            n_valid,
        )
        if grad is not None:
            ctx.save_for_backward(grad)
        return logits.new_tensor(loss)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        (grad,) = ctx.saved_tensors
        _check("cross_entropy backward", g)
        if not (g.numel() == 1 and float(g) == 1.0):  # usual case: loss.backward() straight on the mean
            grad = grad * g
        return grad, None, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """F.cross_entropy(logits (N, V), targets (N), ignore_index=...) with the default mean reduction."""
    return CrossEntropy.apply(logits, targets, ignore_index)


class Dropout(torch.autograd.Function):
    """Inverted dropout (keep with probability 1 - p, scale by 1 / (1 - p)) whose mask is a hash of a seed and
    the element index: backward regenerates it, so no mask is stored. The seed comes from PyTorch's default
    generator, so runs are reproducible and resume bit-exactly like PyTorch's own dropout (the random stream
    differs from PyTorch's; the distribution is the same)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        _check("dropout", x)
        x = x.contiguous()
        seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
        out = torch.empty_like(x)
        _kernels.dropout(x.data_ptr(), out.data_ptr(), x.numel(), p, seed)
        ctx.p, ctx.seed = p, seed
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        _check("dropout backward", g)
        g = g.contiguous()
        dx = torch.empty_like(g)
        _kernels.dropout(g.data_ptr(), dx.data_ptr(), g.numel(), ctx.p, ctx.seed)
        return dx, None


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """F.dropout(x, p, training=True) in distribution; see Dropout."""
    if x.numel() >= 2**32:  # the hash indexes elements with 32 bits
        return torch.nn.functional.dropout(x, p, True)
    return Dropout.apply(x, p)
