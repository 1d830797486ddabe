"""Issue 21's lever table: one change at a time against the old default, at equal steps, on Nutuk.

    python bench/levers.py --pretrain ROW [ROW ...] [--steps 1500]     val bits/char (every val token) per row
    python bench/levers.py --finetune BASE_DIR --folds 0 1 [--flags ...] held-out F1 / loops / ended per fold
    python bench/levers.py --finetune BASE_DIR --folds 0 1 2 3 4 --decodings greedy plain-greedy chat chat-noban

--pretrain: each row trains in its own process with one thread (run two at a time on two cores), the
Trainer's own step on the standard split of the bundled Nutuk (dedup, last 10 % of characters = val), seed
1337, ``--steps`` optimizer steps, then scores every val token once. Rows (all else the old default: guide
block, AdamW lr 3e-3 cosine, weight decay 1.0, vocab 4096, batch 16 x block 128):

--finetune: the held-out protocol. The 300 Nutuk QA pairs are shuffled once (seed 7) into 5 folds of 60; fold k
fine-tunes (`sifirdan finetune`, the given flags) on the other 240 and answers fold k's 60 questions it never
saw (`sifirdan eval-instruct`, at most 320 new tokens, once per --decodings entry: DECODINGS below). Reported
per fold: token F1, the share of looping answers, ended, leaked, beside copying the nearest training answer and
one constant answer (the training answer with the best mean F1 on the training answers) on the same fold, and
for more than one fold their mean.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_results, md_table  # noqa: E402

OLD = dict(position="learned", norm="layernorm", mlp="gelu", bias=True, lm_head_bias=True, init="guide", block_size=128)
LLAMA = dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False, lm_head_bias=False, init="zero_out", block_size=128)
ROWS = {
    # name: (model fields, TrainConfig fields, vocab)
    "old-default": (OLD, {"batch_size": 16}, 4096),
    "muon": (OLD, {"batch_size": 16, "optimizer": "muon"}, 4096),
    "llama-block": (LLAMA, {"batch_size": 16}, 4096),
    "llama-block+muon": (LLAMA, {"batch_size": 16, "optimizer": "muon"}, 4096),
    "llama-block+dropout0.1": ({**LLAMA, "dropout": 0.1}, {"batch_size": 16}, 4096),
    "llama-block+vocab2048": (LLAMA, {"batch_size": 16}, 2048),
    "llama-block+block256": ({**LLAMA, "block_size": 256}, {"batch_size": 8}, 4096),
}


# --decodings: eval-instruct's flags for each way of answering
DECODINGS = {
    # eval-instruct's default: greedy with chat's n-gram ban (never the same 3 tokens twice), length decay (150,1.02)
    # and prompt boost (4,2)
    "greedy": [],
    "plain-greedy": ["--no-repeat-ngram", "0", "--length-decay", "off", "--prompt-boost", "off"],
    "greedy-nodecay": ["--length-decay", "off"],
    "greedy-noboost": ["--prompt-boost", "off"],
    "greedy-boost4,0": ["--prompt-boost", "4,0"],
    "greedy-boost4,8": ["--prompt-boost", "4,8"],
    "chat": ["--temperature", "0.3", "--top-p", "0.9", "--seed", "0"],  # `sifirdan chat`'s default, seeded
    "chat-nodecay": ["--temperature", "0.3", "--top-p", "0.9", "--seed", "0", "--length-decay", "off"],
    "chat-noboost": ["--temperature", "0.3", "--top-p", "0.9", "--seed", "0", "--prompt-boost", "off"],
    "chat-t0.5": ["--temperature", "0.5", "--top-p", "0.9", "--seed", "0"],
    "chat-t0.7": ["--temperature", "0.7", "--top-p", "0.9", "--seed", "0"],  # chat's default before 0.3
    "chat-noban": ["--temperature", "0.3", "--top-p", "0.9", "--seed", "0", "--no-repeat-ngram", "0"],
    "greedy-ban4": ["--no-repeat-ngram", "4"],
    "greedy-rep1.1": ["--no-repeat-ngram", "0", "--repetition-penalty", "1.1"],
}


def pretrain_row(name: str, steps: int) -> dict:
    import torch

    from pretrain import _full_val, _prepare
    from sifirdan.data.catalog import materialize
    from sifirdan.model import GPT, GPTConfig
    from sifirdan.train import Trainer, TrainConfig
    from sifirdan.train.pretrain_data import pretrain_data

    model, train, vocab = ROWS[name]
    _, bins, _ = _prepare(materialize("nutuk"), vocab, Path("/tmp/sifirdan-bench-cache"), {})
    torch.manual_seed(1337)
    mcfg = GPTConfig(vocab_size=vocab, **model)
    tcfg = TrainConfig(final_eval=False, max_iters=steps, seed=1337, threads=1, **train)
    trainer = Trainer(GPT(mcfg), tcfg, pretrain_data(bins, tcfg, mcfg.block_size), verbose=False)
    t0 = time.perf_counter()
    losses = [trainer.train_step()[0].item() for _ in range(steps)]
    sec = time.perf_counter() - t0
    nats, bpc = _full_val(trainer.raw_model, bins, mcfg.block_size)
    return {"row": name, "steps": steps, "seconds": round(sec), "train_loss": round(sum(losses[-50:]) / 50, 4),
            "val_nats": round(nats, 4), "bpc": round(bpc, 4), "parameters": trainer.raw_model.num_parameters()}


def folds(out: Path, k: int = 5, seed: int = 7) -> None:
    from sifirdan.data.catalog import materialize

    rows = [line for line in materialize("nutuk-qa").read_text(encoding="utf-8").splitlines(keepends=True) if line.strip()]
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    out.mkdir(parents=True, exist_ok=True)
    for f in range(k):
        test = set(idx[f::k])
        (out / f"test{f}.jsonl").write_text("".join(rows[i] for i in sorted(test)), encoding="utf-8")
        (out / f"train{f}.jsonl").write_text("".join(rows[i] for i in range(len(rows)) if i not in test), encoding="utf-8")


def finetune_fold(base: str, fold: int, flags: list[str], work: Path, decodings: list[str], reuse: bool = False) -> list[dict]:
    from sifirdan.chat.baselines import best_constant_answer, nearest_answers
    from sifirdan.chat.evaluate import token_f1

    out = work / f"ft-{fold}"
    py = [sys.executable, "-m", "sifirdan"]
    if not (reuse and out.exists()):
        subprocess.run(py + ["finetune", "--model", base, "--data", str(work / f"train{fold}.jsonl"), "--out", str(out),
                             "--overwrite", "--threads", "1", *flags], check=True, stdout=subprocess.DEVNULL)
    tr = [json.loads(x) for x in (work / f"train{fold}.jsonl").read_text(encoding="utf-8").splitlines()]
    te = [json.loads(x) for x in (work / f"test{fold}.jsonl").read_text(encoding="utf-8").splitlines()]
    copied = nearest_answers([r["instruction"] for r in tr], [r["output"] for r in tr], [r["instruction"] for r in te])
    const = best_constant_answer([r["output"] for r in tr])
    f1_copy = sum(token_f1(a, r["output"]) for a, r in zip(copied, te)) / len(te)
    f1_constant = sum(token_f1(const, r["output"]) for r in te) / len(te)
    out_rows = []
    for name in decodings:
        res = subprocess.run(py + ["eval-instruct", "--model", str(out), "--data", str(work / f"test{fold}.jsonl"),
                                   "--max-new-tokens", "320", "--threads", "1", "--json", *DECODINGS[name],
                                   "--answers", str(out / f"answers-{name}.jsonl")],
                             check=True, capture_output=True, text=True)
        summary = json.loads(res.stdout.strip().splitlines()[-1])
        out_rows.append({"fold": fold, "decoding": name, **summary, "f1_copy": f1_copy, "f1_constant": f1_constant})
    return out_rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrain", nargs="+", choices=list(ROWS))
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--finetune", metavar="BASE_DIR")
    p.add_argument("--folds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--work", default="/tmp/sifirdan-levers")
    p.add_argument("--decodings", nargs="+", choices=list(DECODINGS), default=["greedy"])
    p.add_argument("--flags", nargs=argparse.REMAINDER, default=[], help="finetune flags (last on the line)")
    p.add_argument("--reuse", action="store_true", help="answer with the runs already in WORK/ft-K (an earlier "
                   "--finetune run's) instead of fine-tuning again: a new decoding on the same models")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args()
    if args.pretrain:
        rows = []
        for name in args.pretrain:
            r = pretrain_row(name, args.steps)
            print(json.dumps(r), flush=True)
            rows.append([r["row"], r["steps"], r["seconds"], r["train_loss"], r["val_nats"], r["bpc"], f"{r['parameters']:,}"])
        table = md_table(["row", "steps", "train s", "train loss (last 50)", "val nats/token", "val bits/char", "parameters"], rows)
    elif args.finetune:
        work = Path(args.work)
        folds(work)
        results = []
        for f in args.folds:
            for s in finetune_fold(args.finetune, f, args.flags, work, args.decodings, args.reuse):
                print(json.dumps(s), flush=True)
                results.append(s)
        keys = ("f1", "loop_rate", "ended_rate", "leak_rate", "f1_copy", "f1_constant")
        if len(args.folds) > 1:  # the mean over the folds, per decoding (equal folds: the mean over every question)
            for name in args.decodings:
                mine = [s for s in results if s["decoding"] == name]
                results.append({"fold": "mean", "decoding": name, "n": sum(s["n"] for s in mine),
                                **{k: sum(s[k] for s in mine) / len(mine) for k in keys}})
        rows = [[s["fold"], s["decoding"], s["n"], f"{s['f1']:.3f}", f"{s['loop_rate']:.0%}", f"{s['ended_rate']:.0%}",
                 f"{s['leak_rate']:.0%}", f"{s['f1_copy']:.3f}", f"{s['f1_constant']:.3f}"] for s in results]
        table = md_table(["fold", "decoding", "questions", "F1", "looped", "ended", "leaked", "F1 copy", "F1 constant"], rows)
    else:
        p.error("give --pretrain ROWS or --finetune BASE_DIR")
    print(table)
    if not args.no_append:
        append_results("levers (issue 21)", table, f"`python bench/levers.py {' '.join(sys.argv[1:])}`")


if __name__ == "__main__":
    main()
