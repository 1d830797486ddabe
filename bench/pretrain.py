"""Benchmark 1: pre-training on a CPU -- the guide's code against sifirdan's default path.

    python bench/pretrain.py --throughput [--iters 100]     tokens/s of one training step, guide shape
    python bench/pretrain.py --quality [--data nutuk.txt]    val bits/char at equal wall-clock time
    python bench/pretrain.py --busy [--iters 40]             tokens/s per thread setting, idle and beside a busy core

--throughput: the guide's own model and loop (bench/guide_reference.py: separate q/k/v, masked_fill softmax,
  fp32, AdamW) against sifirdan's ``Trainer.train_step`` on the guide preset (B32 T128 vocab 500). Each variant
  lives in its own worker process (so each has its own allocator state and peak RSS, and the guide's code runs
  exactly as a user would run it); the workers take turns in short chunks, so load from other programs hits
  every variant alike. Ratios are of the median chunk rate.
--quality: the guide's recipe (its code, vocab 500, constant LR 3e-4, 1000 steps, B32 T128, dropout 0.1)
  against sifirdan recipes given no more training wall-clock than the guide's recipe took in the same run.
  The guide's recipe runs twice, once per initialisation (--guide-inits): N(0, 0.02) weights and zero biases
  ("normal", the init that reproduces the guide's published step-0 loss 6.244; the reference the ratios are
  taken against) and PyTorch's default init ("pytorch", the guide's code as printed, which re-initialises
  nothing and starts higher). Each guide row also reports its step-0 loss (20 batches, before training).
  Metric: bits per character over a full pass of the validation split (the standard split: dedup, then the
  last 10 % of characters). Anchors on the same text (bench/compressors.py, having read the train split): PPMd
  order 8 1.674 bits/char, xz -9e 2.169.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_results, machine_info, md_table, peak_rss_mb  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "nutuk.txt"
B, T, VOCAB = 32, 128, 500  # the guide's batch, block and vocabulary


# ================================================================================================ throughput
class RandomBatches:
    """A ``BatchSource`` of random token windows: throughput does not depend on what the tokens say."""

    def __init__(self, vocab_size: int, batch_size: int, block_size: int, n: int = 8, seed: int = 0):
        import torch

        g = torch.Generator().manual_seed(seed)
        self.pool = [torch.randint(0, vocab_size, (batch_size, block_size + 1), generator=g) for _ in range(n)]
        self.i = 0

    def next_batch(self):
        buf = self.pool[self.i % len(self.pool)]
        self.i += 1
        return buf[:, :-1].clone(), buf[:, 1:].clone()

    def state_dict(self) -> dict:
        return {"i": self.i}

    def load_state_dict(self, state: dict) -> None:
        self.i = state["i"]


def build_step(kind: str, dropout: float, device: str = "cpu", cpu_kernels: bool = True):
    """A zero-argument function running one full training step (forward, backward, optimizer) of ``kind``."""
    if kind == "guide":
        from guide_reference import GuideConfig, guide_step, make_guide

        model, opt = make_guide(GuideConfig(dropout=dropout))
        model.to(device)  # before the optimizer sees a step: its state is created lazily, on the device
        src = RandomBatches(VOCAB, B, T)

        def step():
            x, y = src.next_batch()
            return guide_step(model, opt, x.to(device), y.to(device))

        return step
    # sifirdan's default path: the trainer's own step, default TrainConfig (dtype auto, fused AdamW, clipping,
    # cosine schedule), on the guide preset's shape
    from sifirdan.model import GPT, GPTConfig
    from sifirdan.train import Trainer, TrainConfig, TrainData

    # the kernel switch is TrainConfig.cpu_kernels; a --baseline-tree from before issue 10 has it in GPTConfig
    old_api = "cpu_kernels" in GPTConfig.__dataclass_fields__
    model = GPT(GPTConfig.from_preset("guide", dropout=dropout, attention=kind, **({"cpu_kernels": cpu_kernels} if old_api else {})))
    cfg = TrainConfig(max_iters=1_000_000, final_eval=False, device=device, **({} if old_api else {"cpu_kernels": cpu_kernels}))
    trainer = Trainer(model, cfg, TrainData(train=[RandomBatches(VOCAB, B, T)]), verbose=False)

    def step():
        loss, _ = trainer.train_step()
        return loss.item()  # the trainer syncs every CPU step too (its NaN check)

    step.trainer = trainer
    return step


def _worker(kind: str, dropout: float, device: str, warmup: int, conn, cpu_kernels: bool = True, tree: str | None = None) -> None:
    if tree:  # another checkout's sifirdan (--baseline-tree); nothing of sifirdan is imported in this process yet
        sys.path.insert(0, tree)
    step = build_step(kind, dropout, device, cpu_kernels)
    for _ in range(warmup):
        step()
    conn.send(("ready", None))
    while True:
        cmd, arg = conn.recv()
        if cmd == "run":
            t0 = time.perf_counter()
            for _ in range(arg):
                step()
            conn.send(("time", time.perf_counter() - t0))
        elif cmd == "rss":
            conn.send(("rss", peak_rss_mb()))
        else:
            return


def throughput(args) -> None:
    from sifirdan import kernels

    k = f"sifirdan C kernels ({kernels.describe()})"
    variants = [
        ("a", "guide's code (fp32, explicit attention, separate q/k/v, AdamW), dropout 0.1", "guide", 0.1, False, None),
        ("b", f"sifirdan Trainer, guide preset as is (sdpa, dropout 0.1), {k}", "sdpa", 0.1, True, None),
        ("c", f"sifirdan Trainer, default path (sdpa, dropout {args.dropout:g}), {k}", "sdpa", args.dropout, True, None),
        ("d", "as (c) with PyTorch's ops only (--no-cpu-kernels)", "sdpa", args.dropout, False, None),
    ]
    if args.explicit:
        variants.append(("e", f"sifirdan Trainer, explicit attention, dropout {args.dropout:g}", "explicit", args.dropout, True, None))
    if args.baseline_tree:
        tree = str(Path(args.baseline_tree).resolve())
        variants += [
            ("b0", f"as (b), sifirdan from {tree}", "sdpa", 0.1, True, tree),
            ("c0", f"as (c), sifirdan from {tree}", "sdpa", args.dropout, True, tree),
        ]
    ctx = mp.get_context("spawn")
    workers = []
    for key, label, kind, dropout, cpu_kernels, tree in variants:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(kind, dropout, args.device, args.warmup, child, cpu_kernels, tree), daemon=True)
        proc.start()
        workers.append((key, label, parent, proc))
    for key, _, conn, _ in workers:  # build + warm up one after another would be nicer, but they idle on recv
        assert conn.recv()[0] == "ready", key
    chunks = {key: [] for key, *_ in workers}
    n_chunks = math.ceil(args.iters / args.chunk)
    for r in range(n_chunks):
        n = min(args.chunk, args.iters - r * args.chunk)
        order = workers if r % 2 == 0 else workers[::-1]  # alternate who goes first
        for key, _, conn, _ in order:
            conn.send(("run", n))
            chunks[key].append((n, conn.recv()[1]))
        print(f"chunk {r + 1}/{n_chunks}: " + "  ".join(f"{k} {B * T * n / t:,.0f} tok/s" for k, (n, t) in
                                                    ((k, chunks[k][-1]) for k in chunks)), flush=True)
    rows, rate = [], {}
    for key, label, conn, proc in workers:
        conn.send(("rss", None))
        rss = conn.recv()[1]
        conn.send(("stop", None))
        proc.join(timeout=30)
        steps = sum(n for n, _ in chunks[key])
        total = sum(t for _, t in chunks[key])
        rate[key] = statistics.median(B * T * n / t for n, t in chunks[key])
        rows.append([key, label, steps, f"{1000 * total / steps:.1f}", f"{B * T * steps / total:,.0f}",
                     f"{rate[key]:,.0f}", None, f"{rss:.0f}"])
    for row in rows:
        row[6] = f"{rate[row[0]] / rate['a']:.2f}x"
    headers = ["", "variant", "steps", "ms/step (mean)", "tok/s (mean)", "tok/s (median chunk)", "vs (a)", "peak RSS MiB"]
    table = md_table(headers, rows)
    print()
    print(table)
    notes = (
        f"Device: {args.device}. Guide preset shape: batch {B}, block {T}, vocab {VOCAB}, n_embd 128, n_head 4, n_layer 4. {args.iters} timed "
        f"steps per variant after {args.warmup} warm-up steps, in interleaved chunks of {args.chunk}, one worker "
        "process per variant (own allocator, own peak RSS). Ratio = median chunk rate / that of (a)."
    )
    if not args.no_append:
        append_results(f"pretrain --throughput ({args.device} training step, guide shape)", table, notes)


# ================================================================================================ busy machine
# Each setting runs in a fresh process: libgomp reads OMP_WAIT_POLICY / GOMP_SPINCOUNT once, when torch loads it.
BUSY_SETTINGS = [
    ("spin", "2 threads, libgomp's default waiting (spins ~300k rounds before it sleeps): sifirdan before this change", 2,
     {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}),
    ("passive", "2 threads, OMP_WAIT_POLICY=PASSIVE (a waiting thread sleeps at once)", 2,
     {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None}),
    ("short", "2 threads, GOMP_SPINCOUNT=10000 (spins ~10 us, then sleeps)", 2,
     {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "10000"}),
    ("one", "1 thread", 1, {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}),
    ("auto", "sifirdan's default now (threads 0): the cores other programs leave free, re-checked every 10 steps "
     "as Trainer.fit does", 0, {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}),
]


def _busy_worker(threads: int, warmup: int, iters: int) -> None:
    """Child: the default training step at the guide shape, ``iters`` timed steps; prints tok/s as JSON."""
    import json

    import torch

    if threads:
        torch.set_num_threads(threads)
    step = build_step("sdpa", 0.0)
    adapt = step.trainer._share_cpu if not threads else (lambda: None)
    for i in range(warmup):
        step()
    adapt()
    t0 = time.perf_counter()
    for i in range(iters):
        step()
        if (i + 1) % 10 == 0:  # Trainer.fit checks at every log step (log_interval 10)
            adapt()
    print(json.dumps({"tok_s": B * T * iters / (time.perf_counter() - t0)}))


def _spin_for(seconds: float) -> None:
    """The competing program: one core kept busy, for a bounded time."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def busy(args) -> None:
    import json
    import os
    import subprocess

    rows, rate = [], {}
    for load in ("idle", "busy"):
        for key, label, threads, env_set in BUSY_SETTINGS:
            env = dict(os.environ)
            for k, v in env_set.items():
                env.pop(k, None)
                if v is not None:
                    env[k] = v
            spinner = None
            if load == "busy":
                ctx = mp.get_context("spawn")
                spinner = ctx.Process(target=_spin_for, args=(600.0,), daemon=True)  # stopped below, bounded anyway
                spinner.start()
            try:
                out = subprocess.run([sys.executable, __file__, "--_busy-worker", str(threads), "--warmup", str(args.warmup),
                                      "--iters", str(args.iters)], capture_output=True, text=True, env=env, timeout=900,
                                     check=True).stdout
            finally:
                if spinner is not None:
                    spinner.terminate()
                    spinner.join()
            rate[(key, load)] = json.loads(out.strip().splitlines()[-1])["tok_s"]
            print(f"{load:5s} {key:8s} {rate[(key, load)]:,.0f} tok/s", flush=True)
    ref = rate[("spin", "idle")]
    for key, label, threads, _ in BUSY_SETTINGS:
        i, b = rate[(key, "idle")], rate[(key, "busy")]
        rows.append([key, label, f"{i:,.0f}", f"{i / ref:.2f}", f"{b:,.0f}", f"{b / ref:.2f}", f"{b / i:.2f}"])
    table = md_table(["", "setting", "idle tok/s", "idle vs spin", "busy tok/s", "busy vs spin idle", "busy / idle"], rows)
    print()
    print(table)
    notes = (
        f"sifirdan's default training step at the guide shape (B{B} T{T}, vocab {VOCAB}), {args.iters} timed steps after "
        f"{args.warmup} warm-up, each setting in a fresh process. 'busy': another process keeps one core busy the whole "
        "time (a Python spin loop, stopped after the measurement). A fair share of a 2-core machine beside one busy core "
        "is half the idle rate."
    )
    if not args.no_append:
        append_results("pretrain --busy (CPU threads beside a busy core)", table, notes)


# ================================================================================================ quality
# Candidate recipes for --quality. Each: model preset + overrides, tokenizer vocabulary, TrainConfig overrides.
# max_iters is set from the measured step time so the run fits the guide recipe's wall-clock.
_T = {"learning_rate": 2e-3, "warmup_iters": 50}  # tuned defaults shared by the candidates below
RECIPES = {
    # sifirdan's defaults as they are (GPTConfig() and TrainConfig() field defaults, no preset)
    "default": dict(preset=None, vocab=None, model={}, train={}),
    "v500": dict(preset="guide", vocab=500, model={"dropout": 0.0}, train=_T),
    "v500-lr1e-3": dict(preset="guide", vocab=500, model={"dropout": 0.0}, train={**_T, "learning_rate": 1e-3}),
    "v1024": dict(preset="guide", vocab=1024, model={"dropout": 0.0}, train=_T),
    "v2048": dict(preset="guide", vocab=2048, model={"dropout": 0.0}, train=_T),
    "v4096": dict(preset="guide", vocab=4096, model={"dropout": 0.0}, train=_T),
    "v4096-lr3e-3": dict(preset="guide", vocab=4096, model={"dropout": 0.0}, train={**_T, "learning_rate": 3e-3}),
    "v2048-lr3e-3": dict(preset="guide", vocab=2048, model={"dropout": 0.0}, train={**_T, "learning_rate": 3e-3}),
    "v2048-tied": dict(preset="guide", vocab=2048, model={"dropout": 0.0, "tie_weights": True}, train=_T),
    "v2048-wide": dict(preset="guide", vocab=2048, model={"dropout": 0.0, "n_embd": 192, "n_head": 6, "n_layer": 3},
                       train=_T),
    "v4096-lr3e-3-b16": dict(preset="guide", vocab=4096, model={"dropout": 0.0},
                             train={**_T, "learning_rate": 3e-3, "batch_size": 16}),
    "v2048-lr3e-3-b16": dict(preset="guide", vocab=2048, model={"dropout": 0.0},
                             train={**_T, "learning_rate": 3e-3, "batch_size": 16}),
    "v2048-lr3e-3-b8": dict(preset="guide", vocab=2048, model={"dropout": 0.0},
                            train={**_T, "learning_rate": 3e-3, "batch_size": 8}),
    "v4096-lr3e-3-t256-b16": dict(preset="guide", vocab=4096, model={"dropout": 0.0, "block_size": 256},
                                  train={**_T, "learning_rate": 3e-3, "batch_size": 16}),
    "v4096-lr3e-3-min0": dict(preset="guide", vocab=4096, model={"dropout": 0.0},
                              train={**_T, "learning_rate": 3e-3, "min_lr_ratio": 0.0}),
    "v4096-lr3e-3-b16-tied": dict(preset="guide", vocab=4096, model={"dropout": 0.0, "tie_weights": True},
                                  train={**_T, "learning_rate": 3e-3, "batch_size": 16}),
    "v4096-lr2e-3-b16": dict(preset="guide", vocab=4096, model={"dropout": 0.0},
                             train={**_T, "learning_rate": 2e-3, "batch_size": 16}),
    "v8192-lr3e-3-b16": dict(preset="guide", vocab=8192, model={"dropout": 0.0},
                             train={**_T, "learning_rate": 3e-3, "batch_size": 16}),
    "v8192-lr3e-3-b16-tied": dict(preset="guide", vocab=8192, model={"dropout": 0.0, "tie_weights": True},
                                  train={**_T, "learning_rate": 3e-3, "batch_size": 16}),
    "d-lr5e-3": dict(preset=None, vocab=None, model={}, train={"learning_rate": 5e-3}),
    "d-scaled": dict(preset=None, vocab=None, model={"init": "scaled"}, train={}),
    "d-t64-b32": dict(preset=None, vocab=None, model={"block_size": 64}, train={"batch_size": 32}),
    "d-wd0": dict(preset=None, vocab=None, model={}, train={"weight_decay": 0.0}),
    "v2048-b64": dict(preset="guide", vocab=2048, model={"dropout": 0.0, "block_size": 64}, train={**_T, "batch_size": 64}),
    # with the C kernels the default recipe runs ~11 epochs of Nutuk in the guide's wall time: regularise?
    "d-drop0.1": dict(preset=None, vocab=None, model={"dropout": 0.1}, train={}),
    "d-wd0.3": dict(preset=None, vocab=None, model={}, train={"weight_decay": 0.3}),
    "d-wd0.6": dict(preset=None, vocab=None, model={}, train={"weight_decay": 0.6}),
    "d-wd1.0": dict(preset=None, vocab=None, model={}, train={"weight_decay": 1.0}),
    "d-min0": dict(preset=None, vocab=None, model={}, train={"min_lr_ratio": 0.0}),
    "d-b32": dict(preset=None, vocab=None, model={}, train={"batch_size": 32}),
    "d-192-drop0.1": dict(preset=None, vocab=None, model={"n_embd": 192, "n_head": 6, "dropout": 0.1}, train={}),
    # after the fused residual + LayerNorm kernel (~6 % faster step): longer context, depth, tied embeddings
    "d-t256-b8": dict(preset=None, vocab=None, model={"block_size": 256}, train={"batch_size": 8}),
    "d-l6": dict(preset=None, vocab=None, model={"n_layer": 6}, train={}),
    "d-tied": dict(preset=None, vocab=None, model={"tie_weights": True}, train={}),
    "d-beta2-0.99": dict(preset=None, vocab=None, model={}, train={"beta2": 0.99}),
    # tied embeddings won the round above (1.824 vs 1.850): around them
    "d-tied-v8192": dict(preset=None, vocab=8192, model={"tie_weights": True}, train={}),
    "d-tied-v2048": dict(preset=None, vocab=2048, model={"tie_weights": True}, train={}),
    "d-tied-wd0.3": dict(preset=None, vocab=None, model={"tie_weights": True}, train={"weight_decay": 0.3}),
    "d-tied-lr5e-3": dict(preset=None, vocab=None, model={"tie_weights": True}, train={"learning_rate": 5e-3}),
    "d-tied-wd1.0": dict(preset=None, vocab=None, model={"tie_weights": True}, train={"weight_decay": 1.0}),
    "d-tied-lr2e-3": dict(preset=None, vocab=None, model={"tie_weights": True}, train={"learning_rate": 2e-3}),
    # tied is now the default: the defaults plus one change each
    "d-wd1.0-min0": dict(preset=None, vocab=None, model={}, train={"weight_decay": 1.0, "min_lr_ratio": 0.0}),
    "d-h2": dict(preset=None, vocab=None, model={"n_head": 2}, train={}),
    "d-wd1.5": dict(preset=None, vocab=None, model={}, train={"weight_decay": 1.5}),
    "d-wd1.0-min0-h2": dict(preset=None, vocab=None, model={"n_head": 2},
                            train={"weight_decay": 1.0, "min_lr_ratio": 0.0}),
    # the LM head lost its bias by default (GPT-2's head, so the default model exports to transformers): the
    # defaults against the defaults with the head bias back
    "d-head-bias": dict(preset=None, vocab=None, model={"lm_head_bias": True}, train={}),
    # can an exportable default (no head bias) win the gap back? its weight decay and learning rate, once more
    "d-wd03": dict(preset=None, vocab=None, model={}, train={"weight_decay": 0.3}),
    "d-lr5e3": dict(preset=None, vocab=None, model={}, train={"learning_rate": 5e-3}),
    # an untied head (its own matrix, still no bias) is something GPT-2 can express (tie_word_embeddings=false)
    "d-untied": dict(preset=None, vocab=None, model={"tie_weights": False}, train={}),
    # the head bias escapes weight decay; the tied embedding that must carry the unigram prior without it does not
    "d-emb-nodecay": dict(preset=None, vocab=None, model={}, train={"decay_embeddings": False}),
    # the head bias is the default again (export folds it into an untied GPT-2 head, interop/gpt2.py): the
    # defaults against the exportable-as-tied default that was (no head bias, embeddings undecayed)
    "d-no-head-bias": dict(preset=None, vocab=None, model={"lm_head_bias": False}, train={"decay_embeddings": False}),
    # the tokenizer trained with llama.cpp's Turkish pre-tokenizer ('ufakzeka': digits one by one), with which
    # llama.cpp splits text exactly as sifirdan does after `sifirdan export gguf` (issue 22): what it costs
    "d-llamacpp-pre": dict(preset=None, vocab=None, model={}, train={}, pre_tokenizer="llama.cpp"),
    "d-emb-nodecay-lr5e3": dict(preset=None, vocab=None, model={}, train={"decay_embeddings": False, "learning_rate": 5e-3}),
}


def _prepare(data: Path, vocab: int, cache: Path, tokenizers: dict, pre_tokenizer: str = "turkish"):
    from sifirdan.data import prepare_bins, standard_split
    from sifirdan.tokenizer import BPETokenizer
    from sifirdan.tokenizer.pattern import PRE_TOKENIZERS

    key = (vocab, pre_tokenizer)
    if key not in tokenizers:
        t0 = time.perf_counter()
        train_text = standard_split(data)[0]
        tok = BPETokenizer.train(train_text, vocab_size=vocab, pattern=PRE_TOKENIZERS[pre_tokenizer])
        bins = prepare_bins(data, tok, cache_dir=cache, progress=False)
        tokenizers[key] = (tok, bins, time.perf_counter() - t0)
    return tokenizers[key]


def _full_val(model, bins, block_size: int) -> tuple[float, float]:
    """(nats/token, bits/char) over every validation token once -- the same pass for every recipe."""
    import torch
    import torch.nn.functional as F

    from sifirdan.data import bits_per_unit, iter_eval_batches

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in iter_eval_batches(bins.val, 32, block_size, "val"):
            dev = next(model.parameters()).device
            x, y = x.to(dev), y.to(dev)
            logits, _ = model(x)  # the loss is computed here: the guide's model has no ignore_index
            total += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100, reduction="sum").item()
            count += int((y != -100).sum())
    model.train()
    nats = total / count
    return nats, bits_per_unit(nats, bins.chars_per_token("val"))


GUIDE_INITS = {
    # N(0, 0.02) weights, zero biases: sifirdan's init="guide". With it the step-0 loss is the guide's published
    # 6.244 (GUIDE.md §8 "Training Süreci"), so the guide's own runs must have started from an init like it.
    "normal": "N(0, 0.02) init: reproduces the guide's published step-0 loss 6.244",
    # the code the guide prints re-initialises nothing: nn.Linear / nn.Embedding defaults, a higher start
    "pytorch": "PyTorch's default init: the guide's code as printed, which does not reproduce its step-0 loss",
}


def _normal_init(model) -> None:
    """N(0, 0.02) on every Linear and Embedding weight, zero biases (LayerNorm stays 1/0): as GPT(init="guide")."""
    import torch
    from torch import nn

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)


def _step0_loss(model, bins, seed: int, device: str, batches: int = 20) -> tuple[float, float]:
    """(train, val) loss before any step, as the guide's estimate_loss prints it at step 0: the mean over
    ``batches`` random windows of each split. Its own samplers and no dropout: the training that follows draws
    exactly what it would have drawn without this."""
    import torch

    from sifirdan.data import BatchSampler

    model.eval()
    out = []
    with torch.no_grad():
        for data in (bins.train, bins.val):
            sampler = BatchSampler(data, B, T, seed + 1)
            losses = []
            for _ in range(batches):
                x, y = sampler.next_batch()
                losses.append(model(x.to(device), y.to(device))[1].item())
            out.append(sum(losses) / len(losses))
    model.train()
    return out[0], out[1]


def _guide_recipe(bins, iters: int, seed: int, device: str = "cpu", init: str = "pytorch"):
    """The guide's code and loop, as written: returns (model, training seconds, (train, val) step-0 loss).

    ``init``: "pytorch" (the code as printed) or "normal" (N(0, 0.02), the start the guide's published log shows).
    """
    from guide_reference import GuideConfig, guide_step, make_guide
    from sifirdan.data import BatchSampler

    model, opt = make_guide(GuideConfig(vocab_size=VOCAB, max_iters=iters), seed=seed)
    if init == "normal":
        _normal_init(model)  # in place: the optimizer already holds these very tensors
    elif init != "pytorch":
        raise ValueError(f"unknown guide init {init!r}; choose from {', '.join(GUIDE_INITS)}")
    model.to(device)
    step0 = _step0_loss(model, bins, seed, device)
    sampler = BatchSampler(bins.train, B, T, seed)
    t0 = time.perf_counter()
    for _ in range(iters):
        x, y = sampler.next_batch()
        guide_step(model, opt, x.to(device), y.to(device))
    return model, time.perf_counter() - t0, step0


def _guide_label(init: str) -> str:
    """The guide rows' label, from the GuideConfig the run uses and torch's AdamW defaults (what the guide calls)."""
    import inspect

    import torch
    from guide_reference import GuideConfig

    c = GuideConfig()
    wd = inspect.signature(torch.optim.AdamW).parameters["weight_decay"].default
    betas = inspect.signature(torch.optim.AdamW).parameters["betas"].default
    return (f"guide recipe, {GUIDE_INITS[init]} (its code: {c.n_embd}/{c.n_head}/{c.n_layer}, block {c.block_size}, "
            f"v{VOCAB}, untied head with bias, dropout {c.dropout}, batch {c.batch_size}, constant lr {c.learning_rate:g}, "
            f"AdamW {betas[0]}/{betas[1]} wd {wd} on every parameter, no clipping, fp32)")


def _our_recipe(bins, recipe: dict, budget_s: float, seed: int, log, device: str = "cpu", steps: int | None = None):
    """Train ``recipe`` with sifirdan's Trainer for at most ``budget_s`` seconds of training steps, or for exactly
    ``steps`` steps (``--steps``: recipes of the same step cost compared where the machine's load would skew a
    wall-clock budget)."""
    import torch

    from sifirdan.model import GPT
    from sifirdan.train import Trainer
    from sifirdan.train.pretrain_data import pretrain_data

    mcfg, _ = _recipe_configs(recipe, device)

    def make(max_iters):
        torch.manual_seed(seed)
        cfg = _recipe_configs(recipe, device, max_iters=max_iters, seed=seed)[1]
        return Trainer(GPT(mcfg), cfg, pretrain_data(bins, cfg, mcfg.block_size), verbose=False)

    if steps is not None:
        trainer = make(steps)
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()[0].item()
        elapsed = time.perf_counter() - t0
        log(f"    ran {steps} steps in {elapsed:.0f}s")
        return trainer.raw_model, elapsed, steps, steps
    # calibrate: the step time decides how many steps the cosine schedule is planned for
    probe = make(1000)
    for _ in range(5):
        probe.train_step()
    t0 = time.perf_counter()
    for _ in range(15):
        probe.train_step()[0].item()
    step_s = (time.perf_counter() - t0) / 15
    max_iters = max(10, int(0.97 * budget_s / step_s))
    del probe
    trainer = make(max_iters)
    t0 = time.perf_counter()
    steps = 0
    while steps < max_iters and time.perf_counter() - t0 < budget_s:
        trainer.train_step()[0].item()
        steps += 1
    elapsed = time.perf_counter() - t0
    log(f"    planned {max_iters} steps ({step_s * 1000:.0f} ms/step), ran {steps} in {elapsed:.0f}s")
    return trainer.raw_model, elapsed, steps, max_iters


def _recipe_configs(recipe: dict, device: str = "cpu", **train_extra):
    """The (GPTConfig, TrainConfig) a recipe trains with: the recipe's preset (or the defaults) plus its overrides.
    A preset recipe takes the model preset only; its training settings are TrainConfig's defaults, batch 32."""
    from sifirdan.model import GPTConfig
    from sifirdan.train import TrainConfig

    if recipe["preset"] is None:  # the defaults, with the recipe's vocab when it names one
        mcfg = GPTConfig(**({"vocab_size": recipe["vocab"]} if recipe["vocab"] else {}), **recipe.get("model", {}))
    else:
        mcfg = GPTConfig.from_preset(recipe["preset"], vocab_size=recipe["vocab"], **recipe.get("model", {}))
    train = dict(recipe.get("train", {}))
    batch = train.pop("batch_size", TrainConfig.batch_size if recipe["preset"] is None else B)
    tcfg = TrainConfig(batch_size=batch, final_eval=False, device=device, **{**train, **train_extra})
    return mcfg, tcfg


def quality(args) -> None:
    import torch

    data = Path(args.data)
    if not data.is_file():
        sys.exit(f"--quality needs the corpus at {data}; pass --data PATH")
    cache = Path(args.cache)
    toks: dict = {}
    log = lambda m: print(m, flush=True)  # noqa: E731
    inits = [i for i in args.guide_inits.split(",") if i]
    for i in inits:
        if i not in GUIDE_INITS:
            sys.exit(f"--guide-inits: unknown init {i!r}; choose from {', '.join(GUIDE_INITS)}")
    recipes = [r for r in args.recipes.split(",") if r]
    for name in recipes:
        if name not in RECIPES:
            sys.exit(f"--recipes: unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    if args.steps is not None and args.guide_iters == 0:
        inits = []  # --steps with --guide-iters 0: sifirdan recipes against each other only, no guide rows
    elif not inits:
        sys.exit("--guide-inits: name at least one of normal, pytorch (the guide rows set the time budget)")
    rows, guide_bpc, guide_sec = [], {}, []
    _, bins500, _ = _prepare(data, VOCAB, cache, toks)
    for init in inits:
        log(f"guide recipe, {init} init: {args.guide_iters} steps ...")
        torch.manual_seed(args.seed)
        gmodel, gsec, (s0_train, s0_val) = _guide_recipe(bins500, args.guide_iters, args.seed, args.device, init)
        gnats, gbpc = _full_val(gmodel, bins500, T)
        guide_bpc[init], guide_sec = gbpc, guide_sec + [gsec]
        log(f"  step 0: train {s0_train:.4f}, val {s0_val:.4f}; {gsec:.0f}s, val {gnats:.4f} nats/token, {gbpc:.4f} bits/char")
        rows.append([f"{init}: {_guide_label(init)}", f"{s0_train:.4f} / {s0_val:.4f}", args.guide_iters, f"{gsec:.0f}",
                     f"{gnats:.4f}", f"{gbpc:.4f}"])
    ref = inits[0] if inits else None  # the first guide row is the reference the ratios are taken against (default: normal)
    gsec = sum(guide_sec) / len(guide_sec) if guide_sec else 0.0
    budget = gsec * args.budget_fraction
    for name in recipes:
        recipe = RECIPES[name]
        _, bins, tok_s = _prepare(data, recipe["vocab"] or _default_vocab(), cache, toks,
                                  recipe.get("pre_tokenizer", "turkish"))
        log(f"{name}: budget {budget:.0f}s (tokenizer {tok_s:.1f}s, not counted)")
        model, sec, steps, planned = _our_recipe(bins, recipe, budget, args.seed, log, args.device, args.steps)
        nats, bpc = _full_val(model, bins, model.config.block_size)
        log(f"  val {nats:.4f} nats/token, {bpc:.4f} bits/char")
        rows.append([f"{name}: {_describe(recipe, args.device)}", "", f"{steps}/{planned}", f"{sec:.0f}", f"{nats:.4f}",
                     f"{bpc:.4f}"])
    headers = ["recipe", "step-0 loss train / val", "steps", "train s", "val nats/token", "val bits/char"]
    for init in inits:  # one ratio column per guide row
        headers.append(f"vs guide ({init} init)")
        for row in rows:
            row.append(f"{float(row[5]) / guide_bpc[init]:.3f}")
    table = md_table(headers, rows)
    print()
    print(table)
    notes = (
        f"Device: {args.device}. Corpus {data.name}, standard split (dedup, last 10 % of characters = val), full validation pass, "
        f"seed {args.seed}. The guide's recipe ran once per init ({', '.join(inits)}); each sifirdan recipe may train for "
        f"at most the guide rows' mean measured training time x {args.budget_fraction:g} ({budget:.0f}s); tokenizer "
        "training and evaluation are not counted (BPE training takes ~1 s here). Step-0 loss: mean over 20 random "
        "batches of each split before the first step (the guide's log: train 6.2443, val 6.2459). Anchors on this "
        "text (bench/compressors.py: the val text coded after the train text): PPMd order 8 1.674 bits/char, xz -9e 2.169."
    )
    if args.steps is not None:
        notes += (f" This run: every sifirdan recipe trained for exactly {args.steps} steps (--steps), not for the "
                  "wall-clock budget, so the machine's load cannot change what it learns"
                  + (" (no guide rows: --guide-iters 0)." if not inits else "."))
    if "normal" in guide_bpc and "pytorch" in guide_bpc:
        notes += (f" The guide's recipe gives {guide_bpc['normal']:.3f} bits/char from the N(0, 0.02) init that "
                  f"reproduces its published step-0 loss and {guide_bpc['pytorch']:.3f} from PyTorch's default init.")
    if not args.no_append:
        append_results("pretrain --quality (val bits/char at equal wall-clock, CPU)", table, notes)


def _default_vocab() -> int:
    from sifirdan.model import GPTConfig

    return GPTConfig().vocab_size


def _describe(r: dict, device: str = "cpu") -> str:
    """A recipe's label, computed from the GPTConfig and TrainConfig it actually trains with (never a fixed
    string: defaults change, and a label must say what ran), then the recipe's own overrides."""
    from sifirdan.train.config import CPU_DEFAULT_DTYPE

    m, t = _recipe_configs(r, device)
    base = "sifirdan defaults" if r["preset"] is None else f"{r['preset']} preset + TrainConfig defaults"
    dtype = t.dtype if t.dtype != "auto" else (f"auto ({CPU_DEFAULT_DTYPE} on CPU)" if device == "cpu" else "auto")
    schedule = (f"lr {t.learning_rate:g} cosine (warmup {t.warmup_iters}, to {t.min_lr_ratio:g}x)"
                if t.lr_schedule == "cosine" else f"lr {t.learning_rate:g} {t.lr_schedule}")
    desc = (f"{base}: {m.n_embd}/{m.n_head}/{m.n_layer}, block {m.block_size}, v{m.vocab_size}, "
            f"{'tied' if m.tie_weights else 'untied'} embeddings, LM-head bias {'on' if m.lm_head_bias else 'off'}, "
            f"init {m.init}, dropout {m.dropout:g}, batch {t.batch_size}, {schedule}, "
            f"AdamW {t.beta1:g}/{t.beta2:g} wd {t.weight_decay:g} ({'every parameter' if t.decay_all else 'matrices' if t.decay_embeddings else 'matrices, not embeddings'}), "
            f"clip {t.grad_clip:g}, dtype {dtype}")
    changed = {**r.get("model", {}), **r.get("train", {}),
               **({"pre_tokenizer": r["pre_tokenizer"]} if "pre_tokenizer" in r else {})}
    return desc + (f"; set by the recipe: {', '.join(f'{k}={v}' for k, v in changed.items())}" if changed else "")


# ================================================================================================ memory
_CHILD = (
    "import resource, sys; from sifirdan.cli import main; rc = main(sys.argv[1:]); "
    "print('MAXRSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)"
)


def memory(args) -> None:
    """Peak RSS of `sifirdan pretrain --preset guide` on Nutuk and on Nutuk x100 (same tokenizer, no dedup so
    the copies stay): the training process must not grow with the corpus."""
    import json
    import os
    import shutil
    import subprocess
    import tempfile

    from sifirdan.data import iter_train_texts
    from sifirdan.tokenizer import BPETokenizer

    data = Path(args.data)
    work = Path(tempfile.mkdtemp(prefix="sifirdan-mem-"))
    try:
        tok_path = work / "tokenizer.json"
        BPETokenizer.train(iter_train_texts(data), 500).save(tok_path)
        big = work / "nutuk_x100.txt"
        raw = data.read_bytes()
        with open(big, "wb") as f:
            for _ in range(100):
                f.write(raw)
                f.write(b"\n")
        rows = []
        for label, path in (("Nutuk", data), ("Nutuk x100", big)):
            out = work / f"run-{len(rows)}"
            cmd = [sys.executable, "-c", _CHILD, "pretrain", "--preset", "guide", "--data", str(path), "--out", str(out),
                   "--tokenizer", str(tok_path), "--no-dedup", "--max-iters", str(args.iters), "--eval-interval", "100",
                   "--sample-interval", "0", "--cache-dir", str(work / "cache"), "--no-final-eval"]
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                sys.exit(f"{label}: pretrain failed: {proc.stderr[-2000:]}")
            maxrss = int(proc.stderr.rsplit("MAXRSS_KIB", 1)[1].split()[0]) / 1024
            records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            steps = [r for r in records if r.get("kind") == "train" and "peak_mem_mb" in r]
            meta = json.loads((out / "last" / "config.json").read_text())
            n_train = meta["data_splits"]["train"]["n_tokens"]
            rows.append([label, f"{path.stat().st_size / 1e6:.1f}", f"{n_train:,}", args.iters,
                         f"{steps[0]['peak_mem_mb']:.0f}" if steps else "-", f"{steps[-1]['peak_mem_mb']:.0f}" if steps else "-",
                         f"{maxrss:.0f}"])
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = md_table(["corpus", "MB", "train tokens", "steps", "peak RSS at first log MiB", "peak RSS at last log MiB",
                      "process peak RSS MiB"], rows)
    print(table)
    notes = (
        "`sifirdan pretrain --preset guide --no-dedup` (batch 32 x block 128, vocab 500), the same tokenizer for "
        "both, each run a fresh process; RSS as the trainer logs it (ru_maxrss) and the whole process's peak "
        "(tokenization into the bins included). Token bins are memmaps read through a fresh mapping per batch."
    )
    if not args.no_append:
        append_results("pretrain --memory (peak RSS vs corpus size, CPU)", table, notes)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--throughput", action="store_true")
    mode.add_argument("--quality", action="store_true")
    mode.add_argument("--memory", action="store_true")
    mode.add_argument("--busy", action="store_true", help="thread settings on an idle machine and beside a busy core")
    mode.add_argument("--_busy-worker", type=int, metavar="THREADS", help=argparse.SUPPRESS)
    p.add_argument("--iters", type=int, default=100, help="timed steps per variant (throughput)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--chunk", type=int, default=10, help="steps per turn when variants alternate")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout of the default path (throughput)")
    p.add_argument("--explicit", action="store_true", help="also time the explicit-attention path")
    p.add_argument("--baseline-tree", metavar="DIR", help="also time (b) and (c) with the sifirdan of another checkout "
                   "(e.g. `git worktree add /tmp/before HEAD~1` and build it): before/after in the same run")
    p.add_argument("--device", default="cpu", help="device for every variant and recipe: cpu (default), cuda, ...")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--cache", default="/tmp/sifirdan-bench-cache", help="token-bin cache folder (quality)")
    p.add_argument("--guide-iters", type=int, default=1000)
    p.add_argument("--guide-inits", default="normal,pytorch",
                   help="comma list of the guide rows' inits, the first is the reference: normal (N(0, 0.02), "
                   "reproduces the guide's step-0 loss), pytorch (PyTorch's default, the guide's code as printed)")
    p.add_argument("--recipes", default="default", help=f"comma list of {', '.join(RECIPES)}")
    p.add_argument("--budget-fraction", type=float, default=1.0, help="scale the wall-clock budget (short explorations)")
    p.add_argument("--steps", type=int, help="train every sifirdan recipe for exactly this many steps instead of the "
                   "wall-clock budget (for recipes of equal step cost on a loaded machine)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--no-append", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = p.parse_args(argv)
    if args._busy_worker is not None:
        return _busy_worker(args._busy_worker, args.warmup, args.iters)
    print(machine_info())
    if args.busy:
        busy(args)
    elif args.memory:
        memory(args)
    else:
        throughput(args) if args.throughput else quality(args)


if __name__ == "__main__":
    main()
