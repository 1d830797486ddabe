"""Training speed of the new default block against the old one, at the same shape (issue 21, goal 5).

    python bench/block_speed.py [--iters 60] [--chunk 10] [--cli-steps 150]

Inner loop: one worker process per variant runs ``Trainer.train_step`` (the default TrainConfig: fp32 on a CPU,
fused AdamW, clipping) on random batches of the default shape (batch 16 x block 128, vocab 4096, 128/4/4); the
workers take turns in short chunks, so load from other programs hits every variant alike. Ratio = median chunk
rate / the old default's (guide block with sifirdan's C kernels).

Through the CLI: ``sifirdan pretrain`` on the bundled Nutuk for ``--cli-steps`` steps with each block, one after
the other, twice in alternating order; tokens/s = steps x tokens per step / the trainer's own training time
(metrics.jsonl), so tokenization and the final evaluation are not in it.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_results, md_table  # noqa: E402

B, T, VOCAB = 16, 128, 4096


def _old_block() -> dict:
    from sifirdan.model.config import GUIDE_BLOCK

    return {**GUIDE_BLOCK, "bias": True, "lm_head_bias": True, "init": "guide"}


VARIANTS = {
    # key: (label, model overrides, TrainConfig overrides)
    "old": ("old default: guide block (learned positions, LayerNorm, GELU, biases, head bias), C kernels", "old", {}),
    "old-torch": ("old default block, PyTorch's ops only (--no-cpu-kernels)", "old", {"cpu_kernels": False}),
    "new": ("new default: RoPE, RMSNorm, SwiGLU, no biases, C kernels (RoPE, add + RMSNorm, SwiGLU's gate, attention, loss)", "new", {}),
    "new-torch": ("new default block, PyTorch's ops only (--no-cpu-kernels)", "new", {"cpu_kernels": False}),
}


def _model_overrides(which: str) -> dict:
    return _old_block() if which == "old" else {}


class RandomBatches:
    def __init__(self, seed: int = 0, n: int = 8):
        import torch

        g = torch.Generator().manual_seed(seed)
        self.pool = [torch.randint(0, VOCAB, (B, T + 1), generator=g) for _ in range(n)]
        self.i = 0

    def next_batch(self):
        buf = self.pool[self.i % len(self.pool)]
        self.i += 1
        return buf[:, :-1].clone(), buf[:, 1:].clone()

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, s):
        self.i = s["i"]


def _worker(key: str, warmup: int, conn) -> None:
    import torch

    from sifirdan.model import GPT, GPTConfig
    from sifirdan.train import Trainer, TrainConfig, TrainData

    _, which, train = VARIANTS[key]
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, **_model_overrides(which)))
    cfg = TrainConfig(max_iters=1_000_000, final_eval=False, threads=int(os.environ.get("BENCH_THREADS", "0")), **train)
    trainer = Trainer(model, cfg, TrainData(train=[RandomBatches()]), verbose=False)
    for _ in range(warmup):
        trainer.train_step()[0].item()
    conn.send(("ready", trainer.kernels_note))
    while True:
        cmd, arg = conn.recv()
        if cmd != "run":
            return
        t0 = time.perf_counter()
        for _ in range(arg):
            trainer.train_step()[0].item()
        conn.send(("time", time.perf_counter() - t0))


def inner(args) -> list[list]:
    ctx = mp.get_context("spawn")
    workers = []
    for key in VARIANTS:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(key, args.warmup, child), daemon=True)
        proc.start()
        workers.append((key, parent, proc))
    notes = {key: conn.recv()[1] for key, conn, _ in workers}
    chunks = {key: [] for key, *_ in workers}
    n_chunks = math.ceil(args.iters / args.chunk)
    for r in range(n_chunks):
        order = workers if r % 2 == 0 else workers[::-1]
        for key, conn, _ in order:
            conn.send(("run", args.chunk))
            chunks[key].append(B * T * args.chunk / conn.recv()[1])
        print(f"chunk {r + 1}/{n_chunks}: " + "  ".join(f"{k} {chunks[k][-1]:,.0f} tok/s" for k in chunks), flush=True)
    for _, conn, proc in workers:
        conn.send(("stop", None))
        proc.join(timeout=30)
    rate = {k: statistics.median(v) for k, v in chunks.items()}
    return [[k, VARIANTS[k][0] + f" [{notes[k]}]", "Trainer.train_step", f"{rate[k]:,.0f}", f"{rate[k] / rate['old']:.2f}x"]
            for k in VARIANTS]


def _cli_run(which: str, steps: int, out: Path) -> float:
    flags = ["--max-iters", str(steps), "--eval-interval", str(steps), "--eval-iters", "2", "--log-interval", "10",
             "--no-final-eval", "--sample-interval", "0", "--out", str(out)]
    if which == "old":
        flags += ["--position", "learned", "--norm", "layernorm", "--mlp", "gelu", "--bias", "--lm-head-bias",
                  "--init", "guide"]
    subprocess.run([sys.executable, "-m", "sifirdan", "pretrain", *flags], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["tokens_per_s"] for r in recs if r.get("tokens_per_s")]
    return statistics.median(rates)


def cli(args) -> list[list]:
    rates = {"old": [], "new": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd, order in enumerate((("old", "new"), ("new", "old"))):
            for which in order:
                rates[which].append(_cli_run(which, args.cli_steps, Path(tmp) / f"{which}{rnd}"))
                print(f"cli {which}: {rates[which][-1]:,.0f} tok/s", flush=True)
    old = statistics.mean(rates["old"])
    return [[k, VARIANTS[k][0], f"`sifirdan pretrain --max-iters {args.cli_steps}` x2", f"{statistics.mean(v):,.0f}",
             f"{statistics.mean(v) / old:.2f}x"] for k, v in rates.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--chunk", type=int, default=10)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--cli-steps", type=int, default=150, help="steps per CLI run; 0 skips the CLI runs")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args()
    rows = inner(args)
    if args.cli_steps:
        rows += cli(args)
    table = md_table(["", "variant", "how", "tokens/s", "vs old default"], rows)
    print()
    print(table)
    if not args.no_append:
        load = os.getloadavg()
        append_results("block speed: the new default block against the old one, same shape (issue 21)", table,
                       f"Shape: batch {B} x block {T}, vocab {VOCAB}, n_embd 128, n_head 4, n_layer 4, fp32. Inner loop: "
                       f"{args.iters} steps per variant in interleaved chunks of {args.chunk}, median chunk rate. "
                       f"Load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.")


if __name__ == "__main__":
    main()
