"""GPU pre-training benchmark (issue 3, item 4): one short prepared script for a lent GPU.

1. The guide's recipe as the guide ran it (guide preset, vocab 500, fp32, 1000 iterations with an evaluation
   every 100): wall time. The guide says "2-3 minutes (CUDA)" on its GPU.
2. Throughput of the `small` and `medium` presets at block 512, bf16 autocast + torch.compile: tokens/s and
   MFU = flops/token x tokens/s / peak bf16 FLOP/s, with flops/token = 6 N + 12 L T C where N counts the
   matmul weights (all parameters except the token and position embedding tables; the LM head is counted).

Usage (on the GPU machine, from the repo root): python bench/pretrain_gpu.py --data nutuk.txt [--out DIR]
Prints a markdown table; with --append also appends it to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import append_results, machine_line, md_table  # noqa: E402
from sifirdan.data import DataConfig, iter_train_texts, prepare_bins  # noqa: E402
from sifirdan.model import GPT, GPTConfig  # noqa: E402
from sifirdan.tokenizer import BPETokenizer  # noqa: E402
from sifirdan.train.config import TRAIN_PRESETS, TrainConfig  # noqa: E402
from sifirdan.train.metrics import peak_flops  # noqa: E402
from sifirdan.train.pretrain_data import pretrain_data  # noqa: E402
from sifirdan.train.trainer import Trainer  # noqa: E402


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_flops_per_token(model: GPT) -> float:
    c = model.config
    n = model.num_parameters() - model.embeddings.position_embedding.weight.numel()
    if not c.tie_weights:
        n -= model.embeddings.token_embedding.weight.numel()
    return 6 * n + 12 * c.n_layer * c.block_size * c.n_embd


def guide_recipe(data: str, out: Path, log, device: str = "cuda", iters: int | None = None) -> dict:
    """The guide's full recipe through the real trainer, timed end to end (tokenizer + bins excluded)."""
    tok = BPETokenizer.train(iter_train_texts(data), 500, special_tokens=[])
    bins = prepare_bins(data, tok, DataConfig(), cache_dir=out / "cache")
    mcfg = GPTConfig.from_preset("guide", vocab_size=tok.vocab_size)
    tcfg = TrainConfig(**{**TRAIN_PRESETS["guide"], "device": device, "dtype": "fp32", "sample_interval": 0,
                          "checkpoint_interval": 0, **({"max_iters": iters, "eval_interval": iters} if iters else {})})
    torch.manual_seed(tcfg.seed)
    model = GPT(mcfg)
    trainer = Trainer(model, tcfg, pretrain_data(bins, tcfg, mcfg.block_size), tokenizer=tok,
                      out_dir=out / "guide", run_config={}, verbose=False)
    _sync()
    t0 = time.perf_counter()
    result = trainer.fit()
    _sync()
    wall = time.perf_counter() - t0
    final = result.final or {}
    log(f"guide recipe: {wall:.1f} s, final {final}")
    return {"wall_s": wall, "val_loss": final.get("loss"), "val_bpc": final.get("bits_per_char")}


def throughput(preset: str, batch: int, bins, vocab: int, steps: int, warmup: int, compile_: bool, log, device: str = "cuda") -> dict:
    mcfg = GPTConfig.from_preset(preset, vocab_size=vocab, block_size=512, dropout=0.0)
    tcfg = TrainConfig(batch_size=batch, max_iters=10_000, device=device, dtype="bf16", compile=compile_,
                       sample_interval=0, checkpoint_interval=0)
    torch.manual_seed(0)
    model = GPT(mcfg)
    trainer = Trainer(model, tcfg, pretrain_data(bins, tcfg, mcfg.block_size), verbose=False)
    t_c = time.perf_counter()
    for _ in range(warmup):
        loss, _ = trainer.train_step()
    loss.item()
    _sync()
    compile_s = time.perf_counter() - t_c
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss, _ = trainer.train_step()
    _sync()
    dt = time.perf_counter() - t0
    tok_s = steps * batch * mcfg.block_size / dt
    fpt = matmul_flops_per_token(trainer.raw_model)
    peak = peak_flops(trainer.device)
    row = {
        "preset": preset, "params": trainer.raw_model.num_parameters(), "batch": batch, "block": 512,
        "tok_s": tok_s, "ms_step": 1000 * dt / steps, "mfu": (fpt * tok_s / peak) if peak else None,
        "warmup_s": compile_s, "mem_gb": torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else 0.0, "loss": float(loss),
    }
    log(json.dumps(row))
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", default="/tmp/sifirdan-gpu")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--append", action="store_true")
    ap.add_argument("--variants", default="small:64,medium:32,medium:64", help="preset:batch,...")
    ap.add_argument("--skip-guide", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="CPU check of this script: tiny run, nothing appended")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logf = open(os.environ.get("OUT", str(out)) + "/gpu_bench.log", "a")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    device = "cpu" if args.smoke else "cuda"
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)"
    log(f"device: {name}, torch {torch.__version__}")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    guide = None if args.skip_guide else guide_recipe(args.data, out, log, device, 20 if args.smoke else None)

    tok = BPETokenizer.train(iter_train_texts(args.data), 8192)
    bins = prepare_bins(args.data, tok, DataConfig(), cache_dir=out / "cache")
    rows = []
    variants = [("nano", 2)] if args.smoke else [(v.split(":")[0], int(v.split(":")[1])) for v in args.variants.split(",")]
    for preset, batch in variants:
        for comp in ((False,) if args.smoke else (False, True)):
            try:
                rows.append(throughput(preset, batch, bins, tok.vocab_size, args.steps, 10, comp, log, device) | {"compile": comp})
            except Exception as e:  # report and go on: one failed variant must not cost the whole lease
                log(f"{preset} b{batch} compile={comp}: FAILED {type(e).__name__}: {e}")
    table = md_table(
        ["preset", "params", "batch x block", "compile", "tokens/s", "ms/step", "MFU", "warm-up s", "peak GB"],
        [[r["preset"], f"{r['params']:,}", f"{r['batch']} x {r['block']}", "yes" if r["compile"] else "no",
          f"{r['tok_s']:,.0f}", f"{r['ms_step']:.1f}", f"{100 * r['mfu']:.1f} %" if r["mfu"] else "-",
          f"{r['warmup_s']:.1f}", f"{r['mem_gb']:.1f}"] for r in rows],
    )
    notes = (
        f"GPU: {name}. bf16 autocast, fused AdamW, vocab {tok.vocab_size}, {args.steps} timed steps after 10 warm-up "
        f"steps. MFU = (6 N + 12 L T C) x tokens/s / 989 TFLOP/s (dense bf16), N = matmul weights. "
    )
    if guide:
        notes += (
        f"The guide's recipe (guide preset, vocab 500, fp32, 1000 iterations, eval every 100 on 20 batches, "
        f"full val pass at the end) took {guide['wall_s']:.1f} s of training wall time "
        f"(the guide: 2-3 min on its GPU); final val {guide['val_bpc']:.3f} bits/char."
    )
    print(table)
    print(notes)
    if args.append and not args.smoke:
        append_results(f"pre-training on GPU ({name})", table, notes)


if __name__ == "__main__":
    main()
