"""sifirdan's C kernels (model/_kernels.c) against PyTorch: same outputs and gradients, same model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sifirdan.model import GPT, GPTConfig, kernels

pytestmark = pytest.mark.skipif(
    kernels._kernels is None, reason="sifirdan.model._kernels is not built (pip install -e . needs a C compiler)"
)


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


@pytest.mark.parametrize("M,N,with_bias,ln_bias", [(64, 128, True, True), (37, 40, False, True), (5, 7, True, False)])
def test_add_layernorm_matches_pytorch(M, N, with_bias, ln_bias):
    """x + y (+ b) and its LayerNorm, with gradients for both outputs used (residual stream and next layer)."""
    g = torch.Generator().manual_seed(M + N)
    x, y = torch.randn(M, N, generator=g, dtype=torch.float64), torch.randn(M, N, generator=g, dtype=torch.float64) * 3 + 1
    b = torch.randn(N, generator=g, dtype=torch.float64)
    ref_ln = torch.nn.LayerNorm(N, bias=ln_bias, dtype=torch.float64)
    with torch.no_grad():
        ref_ln.weight.normal_(generator=g)
        if ln_bias:
            ref_ln.bias.normal_(generator=g)
    ln = torch.nn.LayerNorm(N, bias=ln_bias)
    ln.load_state_dict({k: v.float() for k, v in ref_ln.state_dict().items()})
    xr, yr, br = (t.clone().requires_grad_() for t in (x, y, b))
    xf, yf, bf = (t.float().requires_grad_() for t in (x, y, b))
    out_ref = xr + yr + br if with_bias else xr + yr
    h_ref = ref_ln(out_ref)
    out, h = kernels.add_layernorm(xf, yf, bf if with_bias else None, ln)
    g1, g2 = torch.randn(M, N, generator=g, dtype=torch.float64), torch.randn(M, N, generator=g, dtype=torch.float64)
    ((out_ref * g1).sum() + (h_ref * g2).sum()).backward()
    ((out * g1.float()).sum() + (h * g2.float()).sum()).backward()
    close = torch.testing.assert_close
    close(out.double(), out_ref, atol=1e-5, rtol=1e-5)
    close(h.double(), h_ref, atol=1e-5, rtol=1e-5)
    close(xf.grad.double(), xr.grad, atol=1e-4, rtol=1e-4)
    close(yf.grad.double(), yr.grad, atol=1e-4, rtol=1e-4)
    close(ln.weight.grad.double(), ref_ln.weight.grad, atol=1e-3, rtol=1e-4)
    if with_bias:
        close(bf.grad.double(), br.grad, atol=1e-3, rtol=1e-4)
    else:
        assert bf.grad is None
    if ln_bias:
        close(ln.bias.grad.double(), ref_ln.bias.grad, atol=1e-3, rtol=1e-4)
    # only h used (the last block's output goes to ln_f alone): the residual gradient is absent, not zero-filled
    xf.grad = None
    kernels.add_layernorm(xf, yf, None, ln)[1].sum().backward()
    xr.grad = None
    ref_ln(xr + yr).sum().backward()
    close(xf.grad.double(), xr.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kw", [{}, {"bias": False}, {"dropout": 0.2}])
def test_model_with_kernels_trains_like_model_without(kw):
    """Training mode, where the blocks take the fused residual + LayerNorm path; dropout's mask differs
    between the two (a hashed mask vs torch's RNG), so with dropout only the shapes and finiteness are compared."""
    ours, torch_only = _model_pair(**kw)
    ours.train(), torch_only.train()
    idx = torch.randint(0, 97, (3, 40))
    (la := ours(idx, idx)[1]).backward()
    (lb := torch_only(idx, idx)[1]).backward()
    if kw.get("dropout"):
        assert torch.isfinite(la) and all(torch.isfinite(p.grad).all() for p in ours.parameters())
        return
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-5)
    for (name, p), q in zip(ours.named_parameters(), torch_only.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


def _model_pair(**kw):
    torch.manual_seed(0)
    a = GPT(GPTConfig(vocab_size=97, block_size=40, n_embd=48, n_head=3, n_layer=2, **kw))
    b = GPT(GPTConfig(vocab_size=97, block_size=40, n_embd=48, n_head=3, n_layer=2, cpu_kernels=False, **kw))
    b.load_state_dict(a.state_dict())
    return a, b


def test_model_with_kernels_equals_model_without():
    ours, torch_only = _model_pair()
    idx = torch.randint(0, 97, (3, 40))
    logits_a, loss_a = ours(idx, idx)
    logits_b, loss_b = torch_only(idx, idx)
    torch.testing.assert_close(logits_a, logits_b, atol=1e-5, rtol=1e-5)
    loss_a.backward()
    loss_b.backward()
    for (name, p), q in zip(ours.named_parameters(), torch_only.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_kernels_step_aside_where_they_do_not_apply():
    assert kernels.applies(torch.zeros(2, dtype=torch.float32))
    assert not kernels.applies(torch.zeros(2, dtype=torch.bfloat16))
    assert not kernels.applies(torch.zeros(2, dtype=torch.float64))
    ours, torch_only = _model_pair(bias=False)  # no fc bias: the FFN takes PyTorch's path
    idx = torch.randint(0, 97, (2, 17))
    torch.testing.assert_close(ours(idx)[0], torch_only(idx)[0], atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 activations: PyTorch's sdpa and GELU
        a, b = ours(idx)[0], torch_only(idx)[0]
    torch.testing.assert_close(a.float(), b.float())


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


def test_model_dropout_uses_the_kernel_in_training_only():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_embd=32, n_head=2, n_layer=1, dropout=0.5))
    idx = torch.randint(0, 50, (2, 16))
    model.eval()
    a, b = model(idx)[0], model(idx)[0]
    assert torch.equal(a, b)  # no dropout in eval mode
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0])  # dropout in training


CHECK_OTHER_ISA = """
import math, torch, torch.nn.functional as F
from sifirdan.model import kernels
import sys
assert kernels._kernels.isa == sys.argv[1], kernels._kernels.isa
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
print("ok")
"""


@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_narrower_copies_of_the_kernels_compute_the_same(isa):
    import os
    import platform
    import subprocess
    import sys

    if isa == "avx2" and (platform.machine() not in ("x86_64", "AMD64") or kernels._kernels.isa == "generic"):
        pytest.skip("no AVX2 copy on this machine")
    env = {**os.environ, "SIFIRDAN_KERNELS_ISA": isa}
    run = subprocess.run([sys.executable, "-c", CHECK_OTHER_ISA, isa], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-2000:]
