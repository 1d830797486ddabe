"""Benchmark: instruction fine-tuning, the guide's recipe against ours, on the same pre-trained model.

    python bench/finetune.py                  # pre-train on Nutuk once, then (a) Nutuk QA and (b) instructions
    python bench/finetune.py --sets a --ours "learning_rate=3e-4,max_iters=200"   # try another recipe of ours

1. Pre-train once on Nutuk (``sifirdan.train.pretrain``, default recipe, standard split).
2. For each set, in the same run, through the library call ``sifirdan finetune`` makes
   (``sifirdan.train.finetune``, in this process; its wall time, and this process's peak RSS so far):
     (a) ``nutuk_qa.jsonl``: 300 Nutuk question/answer pairs, 10 % held out -- a small Nutuk assistant;
     (b) the first 1000 pairs of ``instructions_tr.jsonl`` (the guide's setup: 1000 general instructions).
   Each with ``--recipe guide`` (the guide's §9: windows over the concatenated examples, loss on every token,
   lr 1e-4 constant, batch 8, 500 steps, block 256) and with our default recipe (or ``--ours`` overrides).
3. Every model answers the held-out instructions greedily (``sifirdan.chat.evaluate``: ended rate = stopped at
   ``</RESP>``, leak rate = special tokens in the answer, token F1 against the reference, Turkish-aware).
   Val loss and bits/byte are on the answers only (the ``final`` record of the run's metrics.jsonl).
4. A reference that needs no model: each held-out question gets the training answer of the most similar
   training question (TF-IDF over character 3-5-grams, cosine). A model should beat copying.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_results, md_table  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
SETS = {
    "a": ("Nutuk QA (300 pairs)", SHARED / "nutuk_qa.jsonl", None),
    "b": ("instructions_tr, first 1000", SHARED / "instructions_tr.jsonl", 1000),
}
SEED = 1337  # finetune's default seed: its split is reproduced here to find the held-out pairs


def run_stage(call, settings, out: Path, log: Path) -> tuple[float, float, bool]:
    """``call(settings, RunSettings(out=out, overwrite=True))`` in this process (``sifirdan.train.pretrain`` or
    ``finetune``) -> (wall seconds, this process's peak RSS MiB so far, finished?); its lines go to ``log``."""
    import resource

    from sifirdan.errors import UserError
    from sifirdan.train import RunSettings

    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        def say(msg: str) -> None:
            f.write(msg + "\n")
            f.flush()

        try:
            ok = call(settings, RunSettings(out=out, overwrite=True), log=say).status == "done"
        except UserError as e:
            say(f"error: {e}")
            ok = False
    wall = time.perf_counter() - t0
    return wall, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, ok


def recipe_settings(spec: str) -> dict:
    """``"learning_rate=3e-4,block_size=384"`` -> FinetuneSettings keywords: a FinetuneSettings field by name,
    any other key a TrainConfig field (``train``); values read as JSON numbers / booleans, else as text."""
    import dataclasses

    from sifirdan.train import FinetuneSettings

    own = {f.name for f in dataclasses.fields(FinetuneSettings)}
    settings: dict = {"train": {}}
    for item in filter(None, spec.split(",")):
        key, _, text = item.partition("=")
        key = key.strip().replace("-", "_")
        try:
            value = json.loads(text.strip())
        except ValueError:
            value = text.strip()
        (settings if key in own else settings["train"])[key] = value
    return settings


def held_out(path: Path, max_samples: int | None):
    """The train/val conversations ``sifirdan finetune`` makes of this file with its defaults."""
    from sifirdan.data.instructions import read_records, split_conversations, to_conversations

    convs = to_conversations(read_records(path))
    if max_samples:
        convs = convs[:max_samples]
    return split_conversations(convs, 0.1, SEED)


# ------------------------------------------------------------------------------------------------ the no-model reference
def _grams(text: str) -> Counter:
    t = f" {text.lower()} "
    return Counter(t[i : i + n] for n in (3, 4, 5) for i in range(len(t) - n + 1))


def nearest_neighbour_answers(train, val) -> list[str]:
    """For each val question, the answer of the most similar train question (TF-IDF on char 3-5-grams)."""
    docs = [_grams(c[-2]["content"]) for c in train]
    df = Counter(g for d in docs for g in d)
    n = len(docs)
    idf = {g: math.log((1 + n) / (1 + c)) + 1 for g, c in df.items()}

    def vec(counts):
        v = {g: c * idf.get(g, math.log(1 + n) + 1) for g, c in counts.items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {g: x / norm for g, x in v.items()}

    train_vecs = [vec(d) for d in docs]
    out = []
    for c in val:
        q = vec(_grams(c[-2]["content"]))
        scores = [sum(w * tv.get(g, 0.0) for g, w in q.items()) for tv in train_vecs]
        out.append(train[max(range(n), key=scores.__getitem__)][-1]["content"])
    return out


# ------------------------------------------------------------------------------------------------ one fine-tuning run
def final_record(run_dir: Path) -> dict:
    rec = {}
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r.get("kind") == "final":
            rec = r
    return rec


def evaluate(run_dir: Path, val, max_new_tokens: int) -> dict:
    from sifirdan.chat.evaluate import evaluate_answers
    from sifirdan.chat.template import template_of
    from sifirdan.checkpoint import load_model, read_config

    model, tok = load_model(run_dir / "last")
    template = template_of(read_config(run_dir / "last"))
    summary, records = evaluate_answers(model, tok, template, val, max_new_tokens=max_new_tokens)
    summary["examples"] = records[:3]
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/sifirdan-bench-finetune", help="folder for the runs (reused)")
    p.add_argument("--sets", default="a,b", help="comma list of a (Nutuk QA), b (instructions_tr[:1000])")
    p.add_argument("--pretrain-iters", type=int, default=1000)
    p.add_argument("--ours", action="append", default=[], metavar="K=V,...",
                   help="a recipe of ours to time (finetune flags as key=value; repeat for several); default: the default recipe")
    p.add_argument("--skip-guide", action="store_true", help="only our recipe(s) (exploring)")
    p.add_argument("--max-new-tokens", type=int, default=320)
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args()
    for key in args.sets.split(","):
        if not SETS[key][1].is_file():
            sys.exit(f"needs {SETS[key][1]} (../shared/data beside the repo)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    pre = work / f"pre{args.pretrain_iters}"
    if not (pre / "last" / "config.json").is_file():
        print(f"pre-training on Nutuk ({args.pretrain_iters} steps) ...", flush=True)
        from sifirdan.train import PretrainSettings, pretrain

        settings = PretrainSettings(source=[SHARED / "nutuk.txt"], train={"max_iters": args.pretrain_iters})
        wall, rss, ok = run_stage(pretrain, settings, pre, work / "pretrain.log")
        if not ok:
            sys.exit(f"pretrain failed; see {work / 'pretrain.log'}")
        print(f"pre-trained in {wall:.0f} s", flush=True)
    pre_final = final_record(pre)

    recipes = [] if args.skip_guide else [("guide", {"recipe": "guide"})]
    for spec in args.ours or [""]:
        recipes.append((f"ours{'' if not spec else f' ({spec})'}", recipe_settings(spec)))

    rows, notes_examples = [], []
    for key in args.sets.split(","):
        name, path, max_samples = SETS[key]
        split = held_out(path, max_samples)
        from sifirdan.chat.evaluate import summarize, token_f1

        nn = nearest_neighbour_answers(split.train, split.val)
        nn_records = [{"answer": a, "reference": c[-1]["content"], "ended": True, "leaked": False,
                       "f1": token_f1(a, c[-1]["content"])} for a, c in zip(nn, split.val)]
        nn_summary = summarize(nn_records)
        rows.append([f"({key}) {name}", "nearest training answer (TF-IDF)", "", "", "n/a", "0.0 %",
                     f"{nn_summary['f1']:.3f}", "", ""])
        for label, recipe in recipes:
            from sifirdan.train import FinetuneSettings, finetune

            out = work / f"{key}-{re.sub(r'[^A-Za-z0-9]+', '_', label)}"
            print(f"({key}) fine-tuning: {label} ...", flush=True)
            settings = FinetuneSettings(model=pre, data=str(path), max_samples=max_samples, **recipe)
            wall, rss, ok = run_stage(finetune, settings, out, work / f"{out.name}.log")
            if not ok:
                rows.append([f"({key}) {name}", label, "failed", "", "", "", "", "", ""])
                continue
            final = final_record(out)
            ev = evaluate(out, split.val, args.max_new_tokens)
            rows.append([f"({key}) {name}", label, f"{final.get('val_loss', float('nan')):.3f}",
                         f"{final.get('val_bits_per_byte', float('nan')):.3f}", f"{100 * ev['ended_rate']:.1f} %",
                         f"{100 * ev['leak_rate']:.1f} %", f"{ev['f1']:.3f}", f"{wall:.0f}", f"{rss:.0f}"])
            print(" | ".join(rows[-1]), flush=True)
            if label.startswith("ours") and ev["examples"]:
                e = ev["examples"][0]
                notes_examples.append(f"({key}) {label}: Q: {e['instruction'][:120]!r} -> A: {e['answer'][:200]!r} "
                                      f"(reference: {e['reference'][:120]!r})")
    headers = ["set", "recipe", "val loss (answers)", "bits/byte (answers)", "ended", "leaks", "F1", "wall s", "peak RSS MiB (process so far)"]
    table = md_table(headers, rows)
    print()
    print(table)
    notes = (
        f"Base model: `sifirdan pretrain` default recipe on Nutuk, {args.pretrain_iters} steps "
        f"(val {pre_final.get('val_bits_per_byte', float('nan')):.3f} bits/byte). Fine-tuning through `sifirdan.train.finetune` "
        "in-process (its wall time, evaluations included; peak RSS: the bench process's so far); the held-out 10 % is finetune's own "
        f"seeded split (seed {SEED}); answers greedy, at most {args.max_new_tokens} new tokens. Guide recipe: "
        "windows over the concatenated examples, loss on every token, lr 1e-4 constant, batch 8, 500 steps, block "
        "256. Example answers: " + " / ".join(notes_examples)
    )
    if not args.no_append:
        append_results("finetune: the guide's recipe vs ours, Nutuk QA and instructions_tr", table, notes)


if __name__ == "__main__":
    main()
