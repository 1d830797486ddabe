"""What more minutes buy: val bits/char against training wall time, and held-out answer F1 (issue 21).

    python bench/quality_curve.py --run [--every 250]      train the three recipes, one process each, side by side
    python bench/quality_curve.py --plot                   draw docs/quality.png from the saved curves + F1 file

--run trains, on the bundled Nutuk's standard split, (a) the guide's recipe (its code, vocab 500, 1000 steps,
N(0, 0.02) init), (b) the old default (guide block, C kernels, AdamW, vocab 4096, block 128 x batch 16, 2000 steps) and (c) the
new default (RoPE + RMSNorm + SwiGLU, no biases, block 256 x batch 8, 2000 steps), each in its own process, all
three at once so the machine's load falls on each alike. Every ``--every`` steps the clock stops and every
val token is scored once (the full pass the demo reports). Curves go to bench/quality_curves.json.

--plot draws two panels into docs/quality.png: bits/char against training seconds with PPMd (order 8, having
read the train split: bench/compressors.py) as a horizontal line, and the held-out F1 of bench/quality_f1.json
(written by hand from `bench/RESULTS.md`'s k-fold table: the copy and constant baselines beside each model).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CURVES = Path(__file__).resolve().parent / "quality_curves.json"
F1_FILE = Path(__file__).resolve().parent / "quality_f1.json"
PNG = ROOT / "docs" / "quality.png"
PPMD_BPC = 1.674  # bench/compressors.py, RESULTS 2026-12-02 01:20
SEED = 1337


def _corpus() -> Path:
    from sifirdan.data.catalog import materialize

    return materialize("nutuk")


def _worker(name: str, every: int, out) -> None:
    import torch

    from pretrain import _full_val, _guide_recipe, _normal_init, _prepare  # noqa: F401

    corpus = _corpus()
    points = []
    if name == "guide":
        from guide_reference import GuideConfig, guide_step, make_guide
        from sifirdan.data import BatchSampler

        _, bins, _ = _prepare(corpus, 500, Path("/tmp/sifirdan-bench-cache"), {})
        torch.manual_seed(SEED)
        model, opt = make_guide(GuideConfig(vocab_size=500, max_iters=1000), seed=SEED)
        _normal_init(model)
        sampler = BatchSampler(bins.train, 32, 128, SEED)
        steps, block = 1000, 128

        def step():
            x, y = sampler.next_batch()
            guide_step(model, opt, x, y)
        raw = model
    else:
        from sifirdan.model import GPT, GPTConfig
        from sifirdan.model.config import GUIDE_BLOCK
        from sifirdan.train import Trainer, TrainConfig
        from sifirdan.train.pretrain_data import pretrain_data

        _, bins, _ = _prepare(corpus, 4096, Path("/tmp/sifirdan-bench-cache"), {})
        torch.manual_seed(SEED)
        if name == "old":
            mcfg = GPTConfig(vocab_size=4096, block_size=128, **GUIDE_BLOCK, bias=True, lm_head_bias=True, init="guide")
        else:
            mcfg = GPTConfig()  # the new default, its block size included
        steps = 2000
        # the old default's batch (16 x 128) and the new default's (8 x 256): 2048 tokens a step either way
        tcfg = TrainConfig(max_iters=steps, final_eval=False, seed=SEED, threads=1, batch_size=16 * 128 // mcfg.block_size)
        trainer = Trainer(GPT(mcfg), tcfg, pretrain_data(bins, tcfg, mcfg.block_size), verbose=False)
        raw, block = trainer.raw_model, mcfg.block_size

        def step():
            trainer.train_step()[0].item()
    torch.set_num_threads(1)
    elapsed = 0.0
    for i in range(1, steps + 1):
        t0 = time.perf_counter()
        step()
        elapsed += time.perf_counter() - t0
        if i % every == 0 or i == steps:
            nats, bpc = _full_val(raw, bins, block)
            points.append({"step": i, "seconds": round(elapsed, 1), "val_nats": round(nats, 4), "bpc": round(bpc, 4)})
            print(f"{name}: step {i}, {elapsed:.0f}s, {bpc:.4f} bits/char", flush=True)
    out.put((name, points))


def run(args) -> None:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(n, args.every, q)) for n in ("guide", "old", "new")]
    for p in procs:
        p.start()
    curves = dict(q.get() for _ in procs)
    for p in procs:
        p.join()
    CURVES.write_text(json.dumps(curves, indent=1) + "\n")
    print(f"wrote {CURVES}")


LABELS = {"guide": "guide's recipe (its code, v500)", "old": "old default (GPT-2 block, C kernels)",
          "new": "new default (RoPE, RMSNorm, SwiGLU)"}


def plot(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {k: v for k, v in json.loads(CURVES.read_text()).items() if not k.startswith("_")}
    f1 = json.loads(F1_FILE.read_text()) if F1_FILE.is_file() else None
    fig, axes = plt.subplots(1, 2 if f1 else 1, figsize=(13 if f1 else 7, 4.8))
    ax = axes[0] if f1 else axes
    for name, pts in curves.items():
        ax.plot([p["seconds"] for p in pts], [p["bpc"] for p in pts], marker="o", ms=4, label=LABELS.get(name, name))
    ax.axhline(PPMD_BPC, color="gray", ls="--", label=f"PPMd order 8 ({PPMD_BPC})")
    ax.set_xlabel("training seconds on this 2-core CPU (1 thread each, three runs side by side)")
    ax.set_ylabel("val bits/char (every val token)")
    ax.set_title("Nutuk, standard split: lower is better")
    ax.set_ylim(top=min(3.2, ax.get_ylim()[1]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if f1:
        ax2 = axes[1]
        names = list(f1["models"])
        vals = [f1["models"][n] for n in names]
        bars = ax2.bar(range(len(names)), vals, color=["silver" if n.startswith("before") else "tab:green" for n in names])
        ax2.bar_label(bars, fmt="%.3f", fontsize=7)
        ax2.axhline(f1["copy"], color="tab:red", ls="--", label=f"copy the nearest training answer ({f1['copy']:.3f})")
        ax2.axhline(f1["constant"], color="gray", ls=":", label=f"one constant answer ({f1['constant']:.3f})")
        ax2.set_xticks(range(len(names)), names, fontsize=7)
        ax2.set_ylabel("token F1, held-out Nutuk questions")
        ax2.set_title(f1.get("title", "answers to questions it never saw"))
        ax2.legend(fontsize=8)
        ax2.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(PNG, dpi=110)
    print(f"wrote {PNG}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_mutually_exclusive_group(required=True)
    m.add_argument("--run", action="store_true")
    m.add_argument("--plot", action="store_true")
    p.add_argument("--every", type=int, default=250)
    args = p.parse_args()
    run(args) if args.run else plot(args)


if __name__ == "__main__":
    main()
