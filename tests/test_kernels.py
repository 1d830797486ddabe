"""sifirdan's C kernels (sifirdan/kernels) against PyTorch: each op, and the fused GPT forward pass, give the
same outputs and gradients as the readable model; wrappers (adapters, hooks) apply on both paths; the kernels
that should run do run.

The op tests and the model tests run on any CPU with the extension built: the model tests force the fused path
on (``force_kernels``) even where ``kernels.available()`` would leave PyTorch's ops in charge (an AVX2 or generic
copy computes the same, slower). Only tests about the *default choice* need the fast copy, and skip elsewhere."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sifirdan import kernels
from sifirdan.kernels import ops
from sifirdan.model import GPT, GPTConfig
from sifirdan.model.config import GUIDE_BLOCK

# the guide's (GPT-2's) block, which most models here have; MODERN (further down) is the default block
GUIDE = dict(GUIDE_BLOCK, bias=True, lm_head_bias=True, init="guide")

pytestmark = pytest.mark.skipif(
    ops._kernels is None, reason="sifirdan.kernels._kernels is not built (pip install -e . needs a C compiler)"
)
needs_fast_copy = pytest.mark.skipif(
    not kernels.available(), reason=f"the default choice of the kernels needs their fast copy (AVX-512); here: {kernels.describe()}"
)


@pytest.fixture
def force_kernels(monkeypatch):
    """The fused path on, whichever copy of the kernels this CPU runs (they all compute the same)."""
    monkeypatch.setattr(ops, "available", lambda: True)


def reference_attention(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    """The guide's explicit causal attention on packed qkv (float64 in, float64 out)."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    D = C // n_head
    q, k, v = (t.view(B, T, n_head, D).transpose(1, 2) for t in qkv.split(C, dim=2))
    att = (q @ k.transpose(-2, -1)) / math.sqrt(D)
    att = att.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool)), float("-inf")).softmax(-1)
    return (att @ v).transpose(1, 2).reshape(B, T, C)


# T not a multiple of 8 or 16, head sizes not a multiple of 16, a single token, more than one 128-key block,
# more query rows than one backward chunk (256)
SHAPES = [(2, 128, 4, 32), (3, 37, 3, 24), (1, 1, 2, 16), (2, 200, 2, 40), (1, 9, 1, 8), (2, 64, 8, 64), (1, 300, 2, 48)]


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("B,T,H,D", SHAPES)
def test_attention_matches_reference_in_outputs_and_gradients(B, T, H, D, with_bias):
    g = torch.Generator().manual_seed(B * 1000 + T)
    x = torch.randn(B, T, 3 * H * D, generator=g, dtype=torch.float64)
    b = torch.randn(3 * H * D, generator=g, dtype=torch.float64)
    ours, ours_b = x.float().requires_grad_(), b.float().requires_grad_()
    ref, ref_b = x.clone().requires_grad_(), b.clone().requires_grad_()
    y = kernels.causal_attention(ours, H, ours_b if with_bias else None)
    y_ref = reference_attention(ref + ref_b if with_bias else ref, H)
    grad = torch.randn(y_ref.shape, generator=g, dtype=torch.float64)
    y.backward(grad.float())
    y_ref.backward(grad)
    assert y.shape == (B, T, H * D)
    torch.testing.assert_close(y.double(), y_ref, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(ours.grad.double(), ref.grad, atol=2e-5, rtol=1e-4)
    if with_bias:
        torch.testing.assert_close(ours_b.grad.double(), ref_b.grad, atol=1e-4, rtol=1e-4)


def test_attention_is_stable_for_large_scores_and_propagates_nan():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 50, 3 * 64, generator=g, dtype=torch.float64) * 30  # scores in the thousands
    torch.testing.assert_close(kernels.causal_attention(x.float(), 2).double(), reference_attention(x, 2),
                               atol=1e-4, rtol=1e-4)
    bad = x.float().clone()
    bad[1, 10, 5] = float("nan")  # a query of batch row 1 at position 10
    y = kernels.causal_attention(bad, 2)
    assert torch.isnan(y[1, 10]).any() and not torch.isnan(y[0]).any()


def test_attention_result_does_not_depend_on_thread_count():
    x = torch.randn(4, 70, 3 * 96, requires_grad=True)
    g = torch.randn(4, 70, 96)
    before = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            x.grad = None
            y = kernels.causal_attention(x, 3)
            y.backward(g)
            results.append((y.detach().clone(), x.grad.clone()))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("shape", [(4, 33, 512), (7, 100), (1, 1, 16)])
def test_bias_gelu_matches_pytorch(shape):
    g = torch.Generator().manual_seed(len(shape))
    h = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    b = torch.randn(shape[-1], generator=g, dtype=torch.float64)
    h1, b1 = h.float().requires_grad_(), b.float().requires_grad_()
    h2, b2 = h.clone().requires_grad_(), b.clone().requires_grad_()
    y1 = kernels.bias_gelu(h1, b1)
    y2 = F.gelu(h2 + b2)
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    y1.backward(grad.float())
    y2.backward(grad)
    torch.testing.assert_close(y1.double(), y2, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(h1.grad.double(), h2.grad, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(b1.grad.double(), b2.grad, atol=1e-4, rtol=1e-5)


def test_bias_gelu_edge_values():
    h = torch.tensor([[-1e4, -30.0, -13.5, -5.0, -1e-8, 0.0, 1e-8, 5.0, 30.0, 1e4, float("inf"), float("-inf"),
                       float("nan"), 1.0, -1.0, 2.0]])
    b = torch.zeros(16)
    y = kernels.bias_gelu(h, b)
    ref = F.gelu(h)
    finite = torch.isfinite(ref)
    torch.testing.assert_close(y[finite], ref[finite], atol=1e-6, rtol=1e-5)
    assert torch.isnan(y[0, 12])


# the kernel the default block uses (RMSNorm) and the guide block's (LayerNorm), each with and without the output
# bias and (LayerNorm) the norm's own bias; N not a multiple of the vector width in some
ADD_NORM_CASES = [("layernorm", 64, 128, True, True), ("layernorm", 37, 40, False, True), ("layernorm", 5, 7, True, False),
                  ("rmsnorm", 64, 128, False, False), ("rmsnorm", 37, 40, True, False), ("rmsnorm", 5, 7, False, False)]


@pytest.mark.parametrize("kind,M,N,with_bias,norm_bias", ADD_NORM_CASES)
def test_add_norm_matches_pytorch(kind, M, N, with_bias, norm_bias):
    """x + y (+ b) and the norm of it (nn.LayerNorm / sifirdan's RMSNorm = F.rms_norm), with gradients for both
    outputs used (residual stream and next layer)."""
    from sifirdan.model.norms import RMSNorm

    g = torch.Generator().manual_seed(M + N)
    x, y = torch.randn(M, N, generator=g, dtype=torch.float64), torch.randn(M, N, generator=g, dtype=torch.float64) * 3 + 1
    b = torch.randn(N, generator=g, dtype=torch.float64)
    params = [torch.randn(N, generator=g, dtype=torch.float64) for _ in range(2 if norm_bias else 1)]  # weight (, bias)
    if kind == "layernorm":
        norm, add_norm = torch.nn.LayerNorm(N, bias=norm_bias), kernels.add_layernorm

        def reference(t, *p):
            return F.layer_norm(t, (N,), *p, eps=norm.eps)
    else:
        norm, add_norm = RMSNorm(N), kernels.add_rmsnorm

        def reference(t, weight):
            return F.rms_norm(t, (N,), weight, norm.eps)
    with torch.no_grad():
        for mine, value in zip((norm.weight, norm.bias if norm_bias else None), params):
            mine.copy_(value)
    pr = [t.clone().requires_grad_() for t in params]
    xr, yr, br = (t.clone().requires_grad_() for t in (x, y, b))
    xf, yf, bf = (t.float().requires_grad_() for t in (x, y, b))
    out_ref = xr + yr + br if with_bias else xr + yr
    h_ref = reference(out_ref, *pr)
    out, h = add_norm(xf, yf, bf if with_bias else None, norm)
    g1, g2 = torch.randn(M, N, generator=g, dtype=torch.float64), torch.randn(M, N, generator=g, dtype=torch.float64)
    ((out_ref * g1).sum() + (h_ref * g2).sum()).backward()
    ((out * g1.float()).sum() + (h * g2.float()).sum()).backward()
    close = torch.testing.assert_close
    close(out.double(), out_ref, atol=1e-5, rtol=1e-5)
    close(h.double(), h_ref, atol=1e-5, rtol=1e-5)
    close(xf.grad.double(), xr.grad, atol=1e-4, rtol=1e-4)
    close(yf.grad.double(), yr.grad, atol=1e-4, rtol=1e-4)
    close(norm.weight.grad.double(), pr[0].grad, atol=1e-3, rtol=1e-4)
    if with_bias:
        close(bf.grad.double(), br.grad, atol=1e-3, rtol=1e-4)
    else:
        assert bf.grad is None
    if norm_bias:
        close(norm.bias.grad.double(), pr[1].grad, atol=1e-3, rtol=1e-4)
    # only h used (the last block's output goes to ln_f alone): the residual gradient is absent, not zero-filled
    xf.grad, xr.grad = None, None
    add_norm(xf, yf, None, norm)[1].sum().backward()
    reference(xr + yr, *pr).sum().backward()
    close(xf.grad.double(), xr.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", [(2, 16, 352), (3, 7, 5), (1, 1, 1), (4, 33)])
def test_silu_mul_matches_pytorch(shape):
    """silu(g) * u and both gradients; sizes that leave a partial vector at the end of a thread's range."""
    gen = torch.Generator().manual_seed(sum(shape))
    gate, up = torch.randn(shape, generator=gen, dtype=torch.float64) * 4, torch.randn(shape, generator=gen, dtype=torch.float64)
    gr, ur = gate.clone().requires_grad_(), up.clone().requires_grad_()
    gf, uf = gate.float().requires_grad_(), up.float().requires_grad_()
    ref = F.silu(gr) * ur
    out = kernels.silu_mul(gf, uf)
    d = torch.randn(shape, generator=gen, dtype=torch.float64)
    ref.backward(d)
    out.backward(d.float())
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gf.grad.double(), gr.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(uf.grad.double(), ur.grad, atol=1e-5, rtol=1e-4)


def test_silu_mul_edge_values():
    """Saturated gates (exp overflows or underflows), zeros, infinities and NaN, as PyTorch gives them."""
    gate = torch.tensor([-1000.0, -100.0, -88.5, -20.0, 0.0, 20.0, 100.0, 1000.0, float("inf"), float("-inf"), float("nan")] * 2)
    up = torch.linspace(-2, 2, gate.numel())
    out = kernels.silu_mul(gate, up)
    ref = F.silu(gate) * up
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("B,T,H,D", [(2, 40, 3, 16), (1, 7, 2, 6), (3, 1, 1, 2), (2, 128, 4, 32)])
def test_rope_qkv_matches_apply_rotary(B, T, H, D):
    """Rotary positions on packed q|k|v equal model/rope.py's apply_rotary per head (v untouched), and the
    gradient rotates back."""
    from sifirdan.model.rope import RotaryEmbedding, apply_rotary

    gen = torch.Generator().manual_seed(B * T + D)
    C = H * D
    qkv = torch.randn(B, T, 3 * C, generator=gen, dtype=torch.float64)
    rotary = RotaryEmbedding(D, max(T, 4))
    cos, sin = rotary.tables(torch.arange(T), T, "cpu", torch.float32)  # (T, D/2)
    ref_in = qkv.clone().requires_grad_()
    q, k, v = ref_in.split(C, dim=2)
    c64, s64 = cos.double()[:, None], sin.double()[:, None]
    q, k = (apply_rotary(t.view(B, T, H, D), c64, s64).reshape(B, T, C) for t in (q, k))
    ref = torch.cat([q, k, v], dim=2)
    xf = qkv.float().requires_grad_()
    out = kernels.rope_qkv(xf, cos, sin, H)
    d = torch.randn(B, T, 3 * C, generator=gen, dtype=torch.float64)
    ref.backward(d)
    out.backward(d.float())
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(out[..., 2 * C:], xf[..., 2 * C:])
    torch.testing.assert_close(xf.grad.double(), ref_in.grad, atol=1e-5, rtol=1e-5)


def test_the_new_ops_refuse_what_they_cannot_read():
    with pytest.raises(TypeError, match="float32"):
        kernels.silu_mul(torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        kernels.silu_mul(torch.zeros(4), torch.zeros(5))
    with pytest.raises(ValueError, match="even size"):
        kernels.rope_qkv(torch.zeros(1, 2, 9), torch.zeros(2, 1), torch.zeros(2, 1), 1)
    with pytest.raises(ValueError, match="tables"):
        kernels.rope_qkv(torch.zeros(1, 2, 12), torch.zeros(3, 2), torch.zeros(3, 2), 1)


def _model(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**dict(vocab_size=97, block_size=40, n_embd=48, n_head=3, n_layer=2), **GUIDE, **kw}))


def _grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _both_paths(model, idx, targets=None):
    """(logits, loss, grads) of GPT.forward and of the fused forward, on the same weights."""
    out = []
    for net in (model, kernels.FusedGPT(model)):
        model.zero_grad(set_to_none=True)
        logits, loss = net(idx, targets)
        if loss is not None:
            loss.backward()
        out.append((logits.detach(), None if loss is None else loss.detach(), _grads(model) if loss is not None else {}))
    return out


def _assert_same(a, b):
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)
    if a[1] is not None:
        torch.testing.assert_close(a[1], b[1], atol=1e-5, rtol=1e-5)
    for name in a[2]:
        torch.testing.assert_close(a[2][name], b[2][name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("kw", [{}, {"bias": False}, {"tie_weights": False}, {"dropout": 0.2}])
def test_fused_forward_equals_gpt_forward(force_kernels, kw):
    """Outputs and every gradient. In eval mode (dropout off) for all configs; see the dropout test below."""
    model = _model(**kw).eval()
    assert kernels.why_not(model) is None
    idx = torch.randint(0, 97, (3, 40))
    _assert_same(*_both_paths(model, idx, idx))
    _assert_same(*_both_paths(model, idx[:, :17]))  # no targets, a shorter sequence


def test_fused_training_with_dropout_is_finite_and_uses_the_dropout_kernel(force_kernels, monkeypatch):
    """The hashed mask differs from torch's RNG stream, so only finiteness is compared -- and the kernel must run."""
    calls = _count_calls(monkeypatch)
    model = _model(dropout=0.2).train()
    idx = torch.randint(0, 97, (3, 40))
    logits, loss = kernels.FusedGPT(model)(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert calls["dropout"] == 2  # one per block (n_layer 2)


KERNEL_OPS = ("causal_attention", "bias_gelu", "add_layernorm", "cross_entropy", "dropout", "add_rmsnorm", "silu_mul",
              "rope_qkv")


def _count_calls(monkeypatch) -> dict[str, int]:
    """Count calls of each op that fused.py makes (it calls them as ``ops.name``)."""
    calls = dict.fromkeys(KERNEL_OPS, 0)
    for name in KERNEL_OPS:
        real = getattr(ops, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(ops, name, counted)
    return calls


def test_every_kernel_that_should_run_runs(force_kernels, monkeypatch):
    """Routing: a fused forward of an n_layer model calls each kernel the expected number of times, and its
    loss comes from the kernel's autograd node (a silent fallback to PyTorch's ops would fail here)."""
    calls = _count_calls(monkeypatch)
    model = _model(n_layer=3).eval()
    idx = torch.randint(0, 97, (2, 40))
    _, loss = kernels.FusedGPT(model)(idx, idx)
    assert calls == {"causal_attention": 3, "bias_gelu": 3, "add_layernorm": 6, "cross_entropy": 1, "dropout": 0,
                     "add_rmsnorm": 0, "silu_mul": 0, "rope_qkv": 0}
    assert "CrossEntropy" in type(loss.grad_fn).__name__  # ops.CrossEntropy's node, not NllLossBackward
    calls.update(dict.fromkeys(calls, 0))
    model(idx, idx)  # GPT.forward itself never calls them
    assert sum(calls.values()) == 0


# the beyond-the-guide default block (model/rope.py, norms.py, mlp_variants.py)
MODERN = dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False, lm_head_bias=False, init="scaled")


def test_every_kernel_of_the_new_block_runs(force_kernels, monkeypatch):
    """The default block's fused pass: rotary positions, attention, SwiGLU's gate and add + RMSNorm on the
    kernels, each once per block (add + RMSNorm twice), and the same outputs and gradients as GPT.forward."""
    calls = _count_calls(monkeypatch)
    model = _model(n_layer=3, **MODERN).eval()
    idx = torch.randint(0, 97, (2, 40))
    _, loss = kernels.FusedGPT(model)(idx, idx)
    assert calls == {"causal_attention": 3, "bias_gelu": 0, "add_layernorm": 0, "cross_entropy": 1, "dropout": 0,
                     "add_rmsnorm": 6, "silu_mul": 3, "rope_qkv": 3}
    _assert_same(*_both_paths(model, idx, idx))


@pytest.mark.parametrize("kw", [{"bias": True}, {"tie_weights": False}, {"mlp": "relu2"}, {"mlp": "gelu"},
                                {"norm": "layernorm"}, {"position": "learned"}, {"qk_norm": True, "logit_softcap": 15.0}])
def test_fused_forward_of_the_new_block_equals_gpt_forward(force_kernels, kw):
    """Each piece of the new block switched on its own: the fused pass follows, with the same outputs and
    gradients (the qkv bias before the rotation, the guide's MLP or LayerNorm inside a rotary block, ...)."""
    model = _model(**{**MODERN, **kw}).eval()
    assert kernels.why_not(model) is None
    idx = torch.randint(0, 97, (3, 40))
    _assert_same(*_both_paths(model, idx, idx))
    _assert_same(*_both_paths(model, idx[:, :17]))


def test_new_block_training_with_dropout_uses_the_dropout_kernel(force_kernels, monkeypatch):
    calls = _count_calls(monkeypatch)
    model = _model(dropout=0.2, **MODERN).train()
    idx = torch.randint(0, 97, (3, 40))
    _, loss = kernels.FusedGPT(model)(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert calls["dropout"] == 2 and calls["silu_mul"] == 2


def test_the_trainer_runs_the_kernels_only_when_asked(force_kernels, monkeypatch):
    from sifirdan.train import Trainer, TrainConfig, TrainData

    class Batches:
        def next_batch(self):
            x = torch.randint(0, 97, (2, 41), generator=torch.Generator().manual_seed(0))
            return x[:, :-1], x[:, 1:]

    for on in (True, False):
        calls = _count_calls(monkeypatch)
        cfg = TrainConfig(max_iters=10, final_eval=False, device="cpu", threads=1, cpu_kernels=on)
        trainer = Trainer(_model(), cfg, TrainData(train=[Batches()]), verbose=False)
        trainer.train_step()
        assert (calls["causal_attention"] == 2) is on, (on, calls)
        assert isinstance(trainer.model, kernels.FusedGPT) is on
        assert ("C kernels: off" in trainer.kernels_note) is (not on)


class LowRank(torch.nn.Module):
    """A LoRA-style wrapper: effective weight W + B A (B nonzero, so the adapter changes the output)."""

    def __init__(self, base: torch.nn.Linear, rank: int = 2):
        super().__init__()
        self.base = base
        self.A = torch.nn.Parameter(torch.randn(rank, base.in_features) * 0.1)
        self.B = torch.nn.Parameter(torch.randn(base.out_features, rank) * 0.1)

    def forward(self, x):
        return self.base(x) + (x @ self.A.t()) @ self.B.t()


def test_adapters_change_the_fused_path_exactly_as_the_pytorch_path(force_kernels):
    model = _model().eval()
    idx = torch.randint(0, 97, (3, 40))
    plain = model(idx, idx)[0].detach()
    for block in model.blocks:  # every Linear of every block
        block.attention.qkv = LowRank(block.attention.qkv)
        block.attention.proj = LowRank(block.attention.proj)
        block.feed_forward.fc = LowRank(block.feed_forward.fc)
        block.feed_forward.proj = LowRank(block.feed_forward.proj)
    assert kernels.why_not(model) is None  # still fused: the wrappers are called, not bypassed
    torch_path, fused_path = _both_paths(model, idx, idx)
    assert (torch_path[0] - plain).abs().max() > 1e-3  # the adapters do change the output
    _assert_same(torch_path, fused_path)
    assert fused_path[2]["blocks.0.attention.qkv.A"].abs().sum() > 0  # adapter weights get gradients


def test_adapters_on_the_new_block_change_the_fused_path_exactly_as_the_pytorch_path(force_kernels):
    model = _model(**MODERN).eval()
    idx = torch.randint(0, 97, (3, 40))
    plain = model(idx, idx)[0].detach()
    for block in model.blocks:
        for parent, name in ((block.attention, "qkv"), (block.attention, "proj"), (block.feed_forward, "gate"),
                             (block.feed_forward, "up"), (block.feed_forward, "proj")):
            setattr(parent, name, LowRank(getattr(parent, name)))
    assert kernels.why_not(model) is None
    torch_path, fused_path = _both_paths(model, idx, idx)
    assert (torch_path[0] - plain).abs().max() > 1e-3
    _assert_same(torch_path, fused_path)
    assert fused_path[2]["blocks.1.feed_forward.gate.A"].abs().sum() > 0


def test_hooks_on_the_new_block_apply_on_the_fused_path(force_kernels, monkeypatch):
    calls = _count_calls(monkeypatch)
    model = _model(**MODERN).eval()
    idx = torch.randint(0, 97, (2, 40))
    plain = model(idx)[0].detach()
    model.blocks[1].feed_forward.register_forward_hook(lambda m, inp, out: out * 0.5)
    model.blocks[0].ln2.register_forward_pre_hook(lambda m, inp: (inp[0] + 1.0,))
    a, b = _both_paths(model, idx, idx)
    assert (a[0] - plain).abs().max() > 1e-3
    _assert_same(a, b)
    assert calls["silu_mul"] == 1  # the hooked feed-forward network was called as a module


def test_hooks_apply_on_the_fused_path(force_kernels):
    model = _model().eval()
    idx = torch.randint(0, 97, (2, 40))
    plain = model(idx)[0].detach()
    model.blocks[1].feed_forward.fc.register_forward_hook(lambda m, inp, out: out * 0.5)
    model.blocks[0].ln2.register_forward_pre_hook(lambda m, inp: (inp[0] + 1.0,))
    a, b = _both_paths(model, idx, idx)
    assert (a[0] - plain).abs().max() > 1e-3
    _assert_same(a, b)


def test_structures_the_fused_path_cannot_represent_run_gpt_forward(force_kernels, monkeypatch):
    from sifirdan.model.block import TransformerBlock

    calls = _count_calls(monkeypatch)

    class MyBlock(TransformerBlock):
        def forward(self, x, *args, **kwargs):  # whatever GPT.forward passes (positions, for rotary attention)
            return super().forward(x, *args, **kwargs) * 0.9

    model = _model().eval()
    idx = torch.randint(0, 97, (2, 40))
    model.blocks[1].__class__ = MyBlock
    assert "MyBlock" in kernels.why_not(model)
    _assert_same(*_both_paths(model, idx, idx))
    assert sum(calls.values()) == 0

    explicit = _model(attention="explicit")
    assert "guide" in kernels.why_not(explicit) and kernels.accelerate(explicit) is explicit
    hooked = _model()
    hooked.blocks[0].attention.register_forward_hook(lambda m, i, o: o)
    assert "hooks" in kernels.why_not(hooked)


def test_the_guide_path_runs_the_guides_code(force_kernels, monkeypatch):
    """attention="explicit" (the guide's code): TransformerBlock.forward runs for every block, no kernel does."""
    from sifirdan.model.block import TransformerBlock

    calls = _count_calls(monkeypatch)
    seen = []
    real = TransformerBlock.forward
    monkeypatch.setattr(TransformerBlock, "forward", lambda self, *a, **k: seen.append(1) or real(self, *a, **k))
    model = GPT(GPTConfig.from_preset("guide", attention="explicit", vocab_size=97, block_size=16))
    idx = torch.randint(0, 97, (2, 16))
    kernels.accelerate(model)(idx, idx)[1].backward()
    assert len(seen) == 4 and sum(calls.values()) == 0


def test_fused_path_steps_aside_where_it_does_not_apply(force_kernels, monkeypatch):
    calls = _count_calls(monkeypatch)
    model = _model(bias=False).eval()
    fused = kernels.FusedGPT(model)
    idx = torch.randint(0, 97, (2, 17))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 activations: GPT.forward, PyTorch's ops
        a, b = fused(idx)[0], model(idx)[0]
    torch.testing.assert_close(a.float(), b.float())
    from sifirdan.model import KVCache

    cache = KVCache.for_model(model, 2)
    fused(idx, kv_cache=cache)  # a generation extra: GPT.forward
    assert cache.pos == 17 and sum(calls.values()) == 0
    assert not kernels.applies(torch.zeros(2, dtype=torch.bfloat16))
    assert not kernels.applies(torch.zeros(2, dtype=torch.float64))


@needs_fast_copy
def test_the_default_uses_the_kernels_where_they_are_fast():
    assert kernels.applies(torch.zeros(2, dtype=torch.float32))
    assert isinstance(kernels.accelerate(_model()), kernels.FusedGPT)


def test_switching_the_kernels_off(monkeypatch):
    monkeypatch.setenv("SIFIRDAN_KERNELS", "0")
    assert not kernels.available() and "SIFIRDAN_KERNELS=0" in kernels.describe()
    model = _model()
    assert kernels.accelerate(model) is model


def test_old_configs_with_cpu_kernels_still_load():
    cfg = GPTConfig.from_dict({**_model().config.to_dict(), "cpu_kernels": False})
    assert "cpu_kernels" not in cfg.to_dict()


@pytest.mark.parametrize("N,V", [(300, 500), (37, 33), (5, 4096), (3, 1)])
def test_cross_entropy_matches_pytorch_with_ignored_rows(N, V):
    g = torch.Generator().manual_seed(N + V)
    x = torch.randn(N, V, generator=g, dtype=torch.float64) * 4
    t = torch.randint(0, V, (N,), generator=g)
    t[::4] = -100  # ignored rows (response-only loss masks prompts this way)
    ours, ref = x.float().requires_grad_(), x.clone().requires_grad_()
    loss = kernels.cross_entropy(ours, t)
    loss_ref = F.cross_entropy(ref, t, ignore_index=-100)
    (loss * 0.5).backward()  # a scale other than 1 takes the multiply in backward
    (loss_ref * 0.5).backward()
    torch.testing.assert_close(loss.double(), loss_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours.grad.double(), ref.grad, atol=1e-7, rtol=1e-5)


def test_cross_entropy_rejects_out_of_range_targets_and_needs_no_grad_in_eval():
    x = torch.randn(4, 10)
    with pytest.raises(IndexError, match="out of bounds"):
        kernels.cross_entropy(x, torch.tensor([1, 2, 10, 3]))
    with torch.no_grad():
        loss = kernels.cross_entropy(x.requires_grad_(), torch.tensor([1, 2, 9, 3]))
    torch.testing.assert_close(loss, F.cross_entropy(x.detach(), torch.tensor([1, 2, 9, 3])))
    assert torch.isnan(kernels.cross_entropy(torch.randn(2, 5), torch.tensor([-100, -100])))


def test_kernels_refuse_tensors_they_cannot_read():
    # the C code reads raw float32 memory: anything else must be refused, not read past its buffer
    with pytest.raises(TypeError, match="float32"):
        kernels.causal_attention(torch.zeros(1, 4, 12, dtype=torch.bfloat16), 2)
    with pytest.raises(TypeError, match="float32"):
        kernels.bias_gelu(torch.zeros(3, 8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64))
    with pytest.raises(TypeError, match="float32"):
        kernels.cross_entropy(torch.zeros(3, 8, dtype=torch.float16), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="bias"):
        kernels.bias_gelu(torch.zeros(3, 8), torch.zeros(7))


def test_dropout_kernel_is_inverted_dropout_with_a_reproducible_mask():
    x = torch.randn(64, 1000) + 3.0  # no exact zeros in x: a zero in the output means "dropped"
    x.requires_grad_()
    torch.manual_seed(7)
    y = kernels.dropout(x, 0.1)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.01  # 64,000 draws: ~0.0012 standard deviation
    torch.testing.assert_close(y[kept], x.detach()[kept] / 0.9)
    g = torch.randn_like(y)
    y.backward(g)
    # backward regenerates the same mask from the seed
    torch.testing.assert_close(x.grad, torch.where(kept, g / 0.9, torch.zeros_like(g)))
    torch.manual_seed(7)
    assert torch.equal(kernels.dropout(x.detach(), 0.1), y.detach())  # the seed comes from torch's RNG
    assert not torch.equal(kernels.dropout(x.detach(), 0.1), y.detach())  # ... which moved on
    # rows of the mask are not copies of each other (the hash mixes the whole index)
    assert not torch.equal(kept[0], kept[1])
    assert torch.equal(kernels.dropout(x.detach(), 0.0), x.detach())


def test_model_dropout_runs_in_training_only(force_kernels):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_embd=32, n_head=2, n_layer=1, dropout=0.5, **GUIDE))
    fused = kernels.FusedGPT(model)
    idx = torch.randint(0, 50, (2, 16))
    model.eval()
    assert torch.equal(fused(idx)[0], fused(idx)[0])  # no dropout in eval mode
    model.train()
    assert not torch.equal(fused(idx)[0], fused(idx)[0])  # dropout in training


CHECK_OTHER_ISA = """
import math, torch, torch.nn.functional as F
from sifirdan import kernels
from sifirdan.kernels import ops
import sys
assert ops._kernels.isa == sys.argv[1], ops._kernels.isa
g = torch.Generator().manual_seed(0)
x = torch.randn(2, 37, 3 * 3 * 24, generator=g, dtype=torch.float64)
b = torch.randn(3 * 3 * 24, generator=g, dtype=torch.float64)
x.requires_grad_()
q, k, v = (t.view(2, 37, 3, 24).transpose(1, 2) for t in (x + b).split(72, dim=2))
ref = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 37, 72)
xf = x.detach().float().requires_grad_()
out = kernels.causal_attention(xf, 3, b.float())
assert (out.double() - ref).abs().max() < 1e-5
gy = torch.randn(ref.shape, generator=g, dtype=torch.float64)
ref.backward(gy)
out.backward(gy.float())
assert (xf.grad.double() - x.grad).abs().max() < 1e-4
ln = torch.nn.LayerNorm(72)
r0, r1 = torch.randn(2, 37, 72, generator=g), torch.randn(2, 37, 72, generator=g)
xo, hn = kernels.add_layernorm(r0, r1, b[:72].float(), ln)
assert (hn - ln(r0 + r1 + b[:72].float())).abs().max() < 1e-5
h = torch.randn(5, 100, generator=g) * 3
assert (kernels.bias_gelu(h, b[:100].float()) - F.gelu(h + b[:100].float())).abs().max() < 1e-5
t = torch.randint(0, 100, (5,), generator=g)
assert abs(kernels.cross_entropy(h, t).item() - F.cross_entropy(h, t).item()) < 1e-5
y = kernels.dropout(h + 10, 0.5)
assert ((y == 0) | ((y - (h + 10) * 2).abs() < 1e-4)).all() and 0 < (y == 0).sum() < 500
from sifirdan.model.norms import RMSNorm
rn = RMSNorm(72)
xo, hn = kernels.add_rmsnorm(r0, r1, None, rn)
assert (hn - rn(r0 + r1)).abs().max() < 1e-5
gt, ut = torch.randn(3, 37, generator=g) * 5, torch.randn(3, 37, generator=g)
assert (kernels.silu_mul(gt, ut) - F.silu(gt) * ut).abs().max() < 1e-5
from sifirdan.model.rope import RotaryEmbedding, apply_rotary
qkv = torch.randn(2, 9, 3 * 2 * 8, generator=g)
cos, sin = RotaryEmbedding(8, 9).tables(torch.arange(9), 9, "cpu", torch.float32)
q = apply_rotary(qkv[..., :16].view(2, 9, 2, 8), cos[:, None], sin[:, None]).reshape(2, 9, 16)
assert (kernels.rope_qkv(qkv, cos, sin, 2)[..., :16] - q).abs().max() < 1e-5
print("ok")
"""


@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_narrower_copies_of_the_kernels_compute_the_same(isa):
    import os
    import platform
    import subprocess
    import sys

    if isa == "avx2" and (platform.machine() not in ("x86_64", "AMD64") or ops._kernels.isa == "generic"):
        pytest.skip("no AVX2 copy on this machine")
    env = {**os.environ, "SIFIRDAN_KERNELS_ISA": isa}
    run = subprocess.run([sys.executable, "-c", CHECK_OTHER_ISA, isa], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-2000:]
