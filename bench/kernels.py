"""Benchmark: sifirdan's CPU kernels (sifirdan/kernels/_kernels.c) against the PyTorch ops they replace.

    python bench/kernels.py            # per-op times at the guide's shape, and a training step per ISA copy
    python bench/kernels.py --baseline-tree /tmp/before   # the step table for another checkout too (same run)

1. Each kernel, forward + backward, against its PyTorch twin on the same inputs, interleaved, median of
   rounds: causal attention (vs sdpa with its head transposes), bias+GELU (vs addmm-style bias add + GELU),
   cross-entropy (vs F.cross_entropy), dropout 0.1 (vs F.dropout), residual add + LayerNorm (vs the output
   projection's bias broadcast, the add and nn.LayerNorm); for the default block, residual add + RMSNorm (vs the
   add and F.rms_norm), SwiGLU's gate (vs F.silu and a multiply) and rotary positions on packed qkv (vs
   model/rope.py per head and re-packing q | k | v), at the default model's width.
2. A guide-shape training step (guide preset, dropout 0, B32 x T128) with the kernels on and off, once per
   instruction-set copy (avx512 / avx2 / generic, forced with SIFIRDAN_KERNELS_ISA in a fresh process): the
   reason the model uses the kernels on AVX-512 CPUs only.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_results, md_table  # noqa: E402

B, T, H, D, V = 32, 128, 4, 32, 500  # the guide's shape
C = H * D


def _time(fn, reps: int = 10) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1000


def ops(rounds: int = 7) -> list[list]:
    import torch
    import torch.nn.functional as F

    from sifirdan import kernels

    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, T, 3 * C, generator=g).requires_grad_()
    bqkv = torch.randn(3 * C, generator=g).requires_grad_()
    dy = torch.randn(B, T, C, generator=g)

    def attn_ours():
        kernels.causal_attention(qkv, H, bqkv).backward(dy)

    def attn_torch():
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (qkv + bqkv).split(C, dim=2))
        F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C).backward(dy)

    h = torch.randn(B * T, 4 * C, generator=g).requires_grad_()
    b = torch.randn(4 * C, generator=g).requires_grad_()
    dh = torch.randn(B * T, 4 * C, generator=g)

    def gelu_ours():
        kernels.bias_gelu(h, b).backward(dh)

    def gelu_torch():
        F.gelu(h + b).backward(dh)

    logits = torch.randn(B * T, V, generator=g).requires_grad_()
    targets = torch.randint(0, V, (B * T,), generator=g)

    def ce_ours():
        kernels.cross_entropy(logits, targets).backward()

    def ce_torch():
        F.cross_entropy(logits, targets).backward()

    x = torch.randn(B, T, C, generator=g).requires_grad_()

    def drop_ours():
        kernels.dropout(x, 0.1).backward(dy)

    def drop_torch():
        F.dropout(x, 0.1, True).backward(dy)

    xr = torch.randn(B, T, C, generator=g).requires_grad_()
    w_out = torch.randn(C, C, generator=g) * 0.05
    y_in = torch.randn(B, T, C, generator=g)
    b_out = torch.randn(C, generator=g).requires_grad_()
    norm = torch.nn.LayerNorm(C)
    dh_ln = torch.randn(B, T, C, generator=g)

    # both sides include the output projection (PyTorch's bias lives in its addmm), so the difference is the
    # bias broadcast, the add and the LayerNorm -- forward and backward, with the residual gradient flowing too
    def addln_ours():
        xo, hn = kernels.add_layernorm(xr, torch.nn.functional.linear(y_in, w_out), b_out, norm)
        torch.autograd.backward([xo, hn], [dy, dh_ln])

    def addln_torch():
        xo = xr + torch.nn.functional.linear(y_in, w_out, b_out)
        torch.autograd.backward([xo, norm(xo)], [dy, dh_ln])

    # the default block (RoPE, RMSNorm, SwiGLU) at the default width: n_embd 128, SwiGLU hidden 352
    from sifirdan.model.mlp_variants import swiglu_hidden
    from sifirdan.model.norms import RMSNorm
    from sifirdan.model.rope import RotaryEmbedding, apply_rotary

    rms = RMSNorm(C)
    y_res = torch.randn(B, T, C, generator=g).requires_grad_()

    def addrms_ours():
        xo, hn = kernels.add_rmsnorm(xr, y_res, None, rms)
        torch.autograd.backward([xo, hn], [dy, dh_ln])

    def addrms_torch():
        xo = xr + y_res
        torch.autograd.backward([xo, rms(xo)], [dy, dh_ln])

    hidden = swiglu_hidden(C)
    gate = torch.randn(B * T, hidden, generator=g).requires_grad_()
    up = torch.randn(B * T, hidden, generator=g).requires_grad_()
    d_hidden = torch.randn(B * T, hidden, generator=g)

    def silu_ours():
        kernels.silu_mul(gate, up).backward(d_hidden)

    def silu_torch():
        (F.silu(gate) * up).backward(d_hidden)

    cos, sin = RotaryEmbedding(D, T).tables(torch.arange(T), T, "cpu", torch.float32)
    dqkv = torch.randn(B, T, 3 * C, generator=g)

    def rope_ours():
        kernels.rope_qkv(qkv, cos, sin, H).backward(dqkv)

    def rope_torch():
        q, k, v = qkv.split(C, dim=2)
        q, k = (apply_rotary(t.view(B, T, H, D), cos[:, None], sin[:, None]).reshape(B, T, C) for t in (q, k))
        torch.cat([q, k, v], dim=2).backward(dqkv)

    pairs = [
        ("causal attention + qkv bias (B32 T128, 4 heads of 32)", attn_ours, attn_torch, "sdpa + head transposes"),
        ("bias + GELU (4096 x 512)", gelu_ours, gelu_torch, "h + b, F.gelu"),
        ("cross-entropy (4096 x 500)", ce_ours, ce_torch, "F.cross_entropy"),
        ("dropout 0.1 (4096 x 128)", drop_ours, drop_torch, "F.dropout"),
        ("output projection + residual add + LayerNorm (4096 x 128)", addln_ours, addln_torch,
         "addmm with bias, add, nn.LayerNorm"),
        ("residual add + RMSNorm (4096 x 128)", addrms_ours, addrms_torch, "add, F.rms_norm"),
        (f"SwiGLU gate silu(g) * u (4096 x {hidden})", silu_ours, silu_torch, "F.silu, mul"),
        ("rotary positions on packed qkv (B32 T128, 4 heads of 32)", rope_ours, rope_torch,
         "apply_rotary on q and k, cat of q, k, v"),
    ]
    rows = []
    for name, ours, ref, ref_name in pairs:
        for fn in (ours, ref):  # warm up
            _time(fn, 3)
        a, r = [], []
        for _ in range(rounds):  # interleaved, so load from elsewhere hits both alike
            a.append(_time(ours))
            r.append(_time(ref))
        ma, mr = statistics.median(a), statistics.median(r)
        rows.append([name, f"{ma:.2f}", f"{mr:.2f} ({ref_name})", f"{mr / ma:.2f}x"])
    return rows


_STEP = """
import json, sys, time, torch
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
from pretrain import RandomBatches
from sifirdan.model import GPT, GPTConfig
from sifirdan.train import Trainer, TrainConfig, TrainData
try:
    from sifirdan.kernels import ops as kernel_ops
except ImportError:  # a checkout from before issue 10: sifirdan/model/kernels.py, the switch in GPTConfig
    from sifirdan.model import kernels as kernel_ops
old_api = "cpu_kernels" in GPTConfig.__dataclass_fields__
out = {{"isa": kernel_ops._kernels.isa if kernel_ops._kernels else None}}
trainers = {{}}
for ck in (True, False):
    model = GPT(GPTConfig.from_preset("guide", dropout=0.0, **({{"cpu_kernels": ck}} if old_api else {{}})))
    cfg = TrainConfig(max_iters=10**6, final_eval=False, batch_size=32, **({{}} if old_api else {{"cpu_kernels": ck}}))
    trainers[ck] = Trainer(model, cfg, TrainData(train=[RandomBatches(500, 32, 128)]), verbose=False)
times = {{True: [], False: []}}
for rnd in range(6):
    for ck, tr in trainers.items():
        for _ in range(2):
            tr.train_step()[0].item()
        t = time.perf_counter()
        for _ in range(8):
            tr.train_step()[0].item()
        times[ck].append((time.perf_counter() - t) / 8 * 1000)
out["on"] = sorted(times[True])[3]
out["off"] = sorted(times[False])[3]
print(json.dumps(out))
"""


def steps(tree: Path = ROOT, label: str = "") -> list[list]:
    """One fresh process per ISA copy, running sifirdan from ``tree``; kernels on and off interleaved."""
    import importlib

    fast = importlib.import_module("sifirdan.kernels.ops").FAST_ISAS if tree == ROOT else ("avx512",)
    rows = []
    for isa in ("avx512", "avx2", "generic"):
        env = {**os.environ, "SIFIRDAN_KERNELS_ISA": isa}
        code = _STEP.format(root=str(tree), bench=str(Path(__file__).resolve().parent))
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
        name = isa + label
        if run.returncode != 0:
            rows.append([name, "failed", run.stderr.strip().splitlines()[-1][:80], "", ""])
            continue
        r = json.loads(run.stdout.strip().splitlines()[-1])
        if r["isa"] != isa:  # this CPU has no such copy (e.g. avx512 on an AVX2 laptop)
            rows.append([name, f"not available (got {r['isa']})", "", "", ""])
            continue
        rows.append([name, f"{r['on']:.1f}", f"{r['off']:.1f}", f"{r['off'] / r['on']:.2f}x",
                     "used" if isa in fast else "not used by default"])
    return rows


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-append", action="store_true", help="print only; do not append to bench/RESULTS.md")
    p.add_argument("--baseline-tree", metavar="DIR", help="also run the step table with the sifirdan of another "
                   "checkout (a built git worktree of an earlier commit), rows marked 'before'")
    p.add_argument("--skip-ops", action="store_true", help="only the step table")
    p.add_argument("--skip-steps", action="store_true", help="only the op table")
    args = p.parse_args()
    if args.skip_ops and args.skip_steps:
        p.error("--skip-ops and --skip-steps together leave nothing to measure")
    import torch

    from sifirdan import kernels
    from sifirdan.kernels import ops as kernel_ops

    if kernel_ops._kernels is None:
        sys.exit("sifirdan.kernels._kernels is not built: pip install -e . (needs a C compiler)")
    t1 = "" if args.skip_ops else md_table(["kernel, forward + backward", "sifirdan ms", "PyTorch ms", "speed-up"], ops())
    print(t1, flush=True)
    t2 = ""
    if not args.skip_steps:
        rows = steps()
        if args.baseline_tree:
            rows += steps(Path(args.baseline_tree).resolve(), " (before)")
        t2 = md_table(["ISA copy", "step ms, kernels on", "step ms, kernels off", "speed-up", "model default"], rows)
        print()
        print(t2)
    notes = (
        f"Op table: median of 7 interleaved rounds of 10 calls, {torch.get_num_threads()} threads, build "
        f"`{kernels.describe()}`."
    )
    if t2:
        notes += (
            " Step table: guide preset (dropout 0), batch 32 x block 128, vocab 500, median of 6 rounds of 8 steps, "
            "kernels on and off interleaved in one fresh process per copy (SIFIRDAN_KERNELS_ISA); the AVX2 and "
            "generic copies run here on an AVX-512 machine, as a stand-in for CPUs that have nothing wider."
        )
    if not args.no_append:
        append_results("CPU kernels vs PyTorch ops", "\n\n".join(t for t in (t1, t2) if t), notes)


if __name__ == "__main__":
    main()
