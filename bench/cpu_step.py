"""Benchmark: what a CPU training step at the guide's shape is made of (the numbers behind docs/benchmarks.md).

    python bench/cpu_step.py            # ~1-2 min on 2 cores; appends one section to bench/RESULTS.md

At the guide's shape (guide preset, dropout 0, batch 32 x block 128, vocab 500), measured here rather than
quoted:

1. Matrix-multiply work per training step: every mm / addmm / bmm / attention op that one forward + backward
   of sifirdan's GPT dispatches (PyTorch's ops, kernels off, so nothing is hidden inside a C kernel), counted
   with ``torch.utils.flop_counter.FlopCounterMode``; attention computed from its shape (no CPU formula there).
2. How fast this CPU runs those multiplies: the step's own linear-layer matmuls (shapes recorded from the step)
   replayed alone in fp32, bf16 and fp16, and one large square GEMM per dtype (the best rate seen here).
   The matmul time of a step at that best rate is the floor no fp32 CPU step can go below.
3. Whole training steps, each kind in a fresh process (its own allocator state): the guide's code
   (bench/guide_reference.py), sifirdan's Trainer step with the C kernels, without them, without
   ``keep_freed_memory`` (glibc gives freed blocks back to the kernel, as a plain PyTorch program does), and
   under bf16 autocast. Reported: ms/step (median of chunks) and minor page faults per step (getrusage).
"""

from __future__ import annotations

import argparse
import json
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

B, T, VOCAB = 32, 128, 500

STEP_KINDS = {
    "guide": "the guide's code (bench/guide_reference.py: fp32, explicit attention, separate q/k/v, AdamW), dropout 0",
    "kernels": "sifirdan Trainer, default CPU path (fp32, sdpa, the C kernels, keep_freed_memory)",
    "no-kernels": "sifirdan Trainer, fp32, PyTorch's ops only (--no-cpu-kernels)",
    "no-keep": "as no-kernels, without keep_freed_memory (glibc returns freed blocks to the kernel)",
    "bf16": "sifirdan Trainer, --dtype bf16 (autocast; the C kernels do not run under autocast)",
}


# ------------------------------------------------------------------------------------------------ 1. flops
def _model(dropout: float = 0.0):
    from sifirdan.model import GPT, GPTConfig

    return GPT(GPTConfig.from_preset("guide", dropout=dropout))


def count_step_flops() -> tuple[dict, list]:
    """FLOPs per op family of one forward + backward at the guide shape, and the linear matmuls' shapes."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = _model()
    x = torch.randint(0, VOCAB, (B, T))
    y = torch.randint(0, VOCAB, (B, T))
    shapes = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.ops.aten.mm.default:
                shapes.append((tuple(args[0].shape), tuple(args[1].shape)))
            elif func is torch.ops.aten.addmm.default:
                shapes.append((tuple(args[1].shape), tuple(args[2].shape)))
            return func(*args, **kwargs)

    counter = FlopCounterMode(display=False)
    with counter, Record():
        _, loss = model(x, y)  # plain GPT.forward: PyTorch's ops, no C kernel
        loss.backward()
    per_op = {str(k).split(".", 1)[-1]: v for k, v in counter.get_flop_counts()["Global"].items()}
    # the CPU's fused attention op (sdpa's flash kernel for CPU) has no FLOP formula in FlopCounterMode: its
    # two batched products, computed -- 2 x 2*B*T*T*C forward (full T x T, as the flash kernel does at T = 128),
    # twice that backward
    c = model.config
    per_op.setdefault("attention (q k^T and att v, computed)", 3 * 2 * 2 * B * T * T * c.n_embd)
    return per_op, shapes


# ------------------------------------------------------------------------------------------------ 2. GEMM rates
def _rate(fn, flops: float, min_s: float = 0.4) -> float:
    fn()
    best = float("inf")
    t_end = time.perf_counter() + min_s
    while True:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() > t_end:
            break
    return flops / best / 1e9


def gemm_rates(shapes: list) -> list[list]:
    import torch

    rows = []
    step_flops = sum(2 * a[0] * a[1] * b[1] for a, b in shapes)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        # a dtype without a fast CPU path (fp16 on most CPUs) runs at a few GF/s: probe small first, so that it
        # costs seconds, not minutes, and is reported as what it is
        probe = torch.randn(256, 256).to(dtype)
        if _rate(lambda: torch.mm(probe, probe), 2 * 256**3, min_s=0.1) < 20:
            n = 512
            a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
            square = _rate(lambda: torch.mm(a, b), 2 * n**3, min_s=0.1)
            rows.append([name, "(no fast path: not replayed)", f"{square:.1f} (512x512)",
                         f"{1000 * step_flops / 1e9 / square:,.0f}"])
            continue
        mats = [(torch.randn(*a).to(dtype), torch.randn(*b).to(dtype)) for a, b in shapes]

        def replay():
            for a, b in mats:
                torch.mm(a, b)

        step_rate = _rate(replay, step_flops)
        n = 2048
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        square = _rate(lambda: torch.mm(a, b), 2 * n**3)
        rows.append([name, f"{step_rate:.0f}", f"{square:.0f}", f"{1000 * step_flops / 1e9 / square:.1f}"])
    return rows


# ------------------------------------------------------------------------------------------------ 3. steps
def _worker(kind: str, warmup: int, chunks: int, chunk: int) -> None:
    """Child: ``chunks`` x ``chunk`` timed steps of ``kind``; prints JSON (median ms/step, faults/step)."""
    import resource

    import torch

    if kind == "guide":
        from guide_reference import GuideConfig, guide_step, make_guide

        model, opt = make_guide(GuideConfig(dropout=0.0))
        g = torch.Generator().manual_seed(0)
        batches = [torch.randint(0, VOCAB, (B, T + 1), generator=g) for _ in range(8)]
        i = [0]

        def step():
            buf = batches[i[0] % 8]
            i[0] += 1
            guide_step(model, opt, buf[:, :-1].clone(), buf[:, 1:].clone())  # contiguous, as a batch loader gives
    else:
        if kind == "no-keep":
            from sifirdan.train import runtime

            runtime.keep_freed_memory = lambda: None  # setup_cpu looks it up here
        from pretrain import RandomBatches
        from sifirdan.train import Trainer, TrainConfig, TrainData

        cfg = TrainConfig(max_iters=1_000_000, final_eval=False, device="cpu",
                          cpu_kernels=(kind == "kernels"), dtype=("bf16" if kind == "bf16" else "fp32"))
        trainer = Trainer(_model(), cfg, TrainData(train=[RandomBatches(VOCAB, B, T)]), verbose=False)

        def step():
            trainer.train_step()[0].item()

    for _ in range(warmup):
        step()
    times, faults = [], []
    for _ in range(chunks):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        for _ in range(chunk):
            step()
        times.append((time.perf_counter() - t0) / chunk)
        faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / chunk)
    print(json.dumps({"ms": 1000 * statistics.median(times), "faults": statistics.median(faults)}))


def steps(args) -> dict:
    out = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for kind in STEP_KINDS:
        proc = subprocess.run([sys.executable, __file__, "--_worker", kind, "--warmup", str(args.warmup),
                               "--chunks", str(args.chunks), "--chunk", str(args.chunk)],
                              capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            sys.exit(f"{kind}: worker failed:\n{proc.stderr[-3000:]}")
        out[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{kind:10s} {out[kind]['ms']:.1f} ms/step, {out[kind]['faults']:,.0f} page faults/step", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--_worker", metavar="KIND", help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--chunks", type=int, default=5)
    p.add_argument("--chunk", type=int, default=6)
    p.add_argument("--no-append", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = p.parse_args()
    if args._worker:
        return _worker(args._worker, args.warmup, args.chunks, args.chunk)
    import torch

    per_op, shapes = count_step_flops()
    total = sum(per_op.values())
    linear = sum(v for k, v in per_op.items() if k in ("mm", "addmm"))
    print(f"flops per step: {total / 1e9:.2f} GFLOP ({', '.join(f'{k} {v / 1e9:.2f}' for k, v in per_op.items())})")
    rates = gemm_rates(shapes)
    for r in rates:
        print("gemm", r, flush=True)
    st = steps(args)
    fp32_best = float(rates[0][2].split()[0])
    floor_ms = 1000 * linear / 1e9 / fp32_best
    t1 = md_table(["op family (forward + backward)", "GFLOP per step"],
                  [[k, f"{v / 1e9:.2f}"] for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])]
                  + [["total", f"{total / 1e9:.2f}"]])
    t2 = md_table(["dtype", "GF/s, the step's linear matmuls replayed alone", "GF/s, 2048x2048 GEMM (best here)",
                   "ms for the step's linear matmuls at that rate"], rates)
    t3 = md_table(["step", "ms/step (median chunk)", "vs fp32 kernels", "minor page faults per step"],
                  [[f"{k}: {STEP_KINDS[k]}", f"{v['ms']:.1f}", f"{v['ms'] / st['kernels']['ms']:.2f}x",
                    f"{v['faults']:,.0f}"] for k, v in st.items()])
    guide_ms = st["guide"]["ms"]
    notes = (
        f"Guide shape: guide preset, dropout 0, batch {B} x block {T}, vocab {VOCAB}, {torch.get_num_threads()} torch "
        f"threads. FLOPs: FlopCounterMode over one forward + backward of GPT.forward (PyTorch's ops; the "
        f"{len(shapes)} mm/addmm calls are the linear layers, the LM head included; attention's row is computed "
        f"from the shape, as FlopCounterMode has no formula for the CPU attention op). Rates: best of repeated calls for at least 0.4 s each. Steps: each "
        f"kind in a fresh process, {args.warmup} warm-up steps, then the median of {args.chunks} chunks of "
        f"{args.chunk} steps; the kinds run one after another, not interleaved, so machine load hits them "
        f"unevenly. At the best fp32 rate the step's linear matmuls alone take {floor_ms:.0f} ms, against "
        f"{guide_ms:.0f} ms for the whole step of the guide's code here: a 3x speed-up in fp32 would need a step "
        f"of {guide_ms / 3:.0f} ms. bf16 autocast against fp32 on the same PyTorch ops (no-kernels): "
        f"{st['bf16']['ms'] / st['no-kernels']['ms']:.2f}x the time; against the default CPU path: "
        f"{st['bf16']['ms'] / st['kernels']['ms']:.2f}x."
    )
    print()
    print(t1, t2, t3, notes, sep="\n\n")
    if not args.no_append:
        append_results("CPU training step anatomy (guide shape): FLOPs, GEMM rates, page faults, bf16",
                       f"{t1}\n\n{t2}\n\n{t3}", notes)


if __name__ == "__main__":
    main()
