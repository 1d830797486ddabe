"""``sifirdan demo``: the guide end to end, offline, on the corpus that ships with sifirdan.

    sifirdan demo                 # ~8 minutes on a 2-core laptop CPU: a small Nutuk assistant in runs/demo
    sifirdan demo --tiny          # every stage, tiny (what CI runs): 22 s on a quiet 2-core CPU, 1,949 s niced at load 8-13
    sifirdan demo --full          # the guide's budgets: its preset, 1000 pre-training + 500 fine-tuning steps (~6 min)
    sifirdan demo --fresh         # start over (otherwise finished stages are reused, an interrupted one resumes)

Stages (each is a library call an ordinary sifirdan command makes too, so what the demo does a user can do
by hand):
  1. tokenizer  BPE trained on the train split of Nutuk only (the val split stays unseen)
  2. pretrain   ``sifirdan.train.pretrain`` (``sifirdan pretrain``) on Nutuk (guide §7-8), its final pass
                scoring every val token
  3. finetune   ``sifirdan.train.finetune`` (``sifirdan finetune``) on the Nutuk QA pairs, 90 % of them (guide §9)
  4. answers    the fine-tuned model answers the 10 % of questions it never saw (greedy and chat's sampling; ended / leaks / loops / F1)
  5. export     ``sifirdan.interop.export_hf`` (``sifirdan export hf``), then (with ``transformers``) reload it
                and compare the logits; a rerun after ``pip install transformers`` runs that check
Then a summary table and the commands to try next.

The demo folder belongs to sifirdan (``demo.json`` says so, and which stages are done); an interrupted stage --
Ctrl-C, a crash, a full disk -- is continued by running the same command again.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sifirdan.errors import UserError

MARKER = "demo.json"
MARKER_FORMAT = "sifirdan-demo"
STAGES = ("tokenizer", "pretrain", "finetune", "answers", "export")
# what the demo writes in its folder; --fresh removes these and nothing else
OWN_FILES = ("tokenizer.json", "answers.jsonl", "summary.md", MARKER)
OWN_DIRS = ("pretrain", "finetune", "hf")
N_SHOWN = 5  # held-out questions printed with the model's answer and the reference

# Reference points on the same split (Nutuk, dedup, last 10 % of characters = val), from bench/RESULTS.md: the
# guide's recipe (its code, 1000 steps; "pretrain --quality", 2026-12-02 01:08) and PPMd, a strong classical
# compressor, coding the val text after reading the train text ("compressors on the standard val split").
GUIDE_BPC = {"N(0, 0.02) init, as the guide's log": 2.260, "PyTorch default init": 2.630}
PPMD_BPC = 1.674


@dataclass(frozen=True)
class Profile:
    name: str
    vocab_size: int
    pretrain: dict  # PretrainSettings fields (model / train sections as mappings of the fields set)
    finetune: dict  # FinetuneSettings fields
    max_new_tokens: int  # per held-out answer
    expect: str  # what the summary should show, measured (bench/demo.py appends the stage times)
    disk_mb: int  # free space the demo needs, checked before it starts
    notes: list[str] = field(default_factory=list)


PROFILES = {
    "tiny": Profile(
        "tiny", 512,
        dict(model=dict(n_embd=64, n_head=2, n_layer=2, block_size=64),
             train=dict(batch_size=16, max_iters=600, eval_interval=200, eval_iters=5, checkpoint_interval=200,
                        log_interval=50)),
        dict(train=dict(max_iters=300, batch_size=8, learning_rate=2e-3, eval_interval=100, eval_iters=2,
                        checkpoint_interval=100), block_size=128, length_mode="truncate"),
        64, "a smoke test, not a model: val bits/char near 2.8; answers in Nutuk's words that rarely end", 150,
        ["--tiny: a 0.1 M-parameter model for 600 + 300 steps, to show every stage works"],
    ),
    "default": Profile(
        "default", 4096,
        dict(train=dict(max_iters=1750, eval_interval=250, log_interval=50)),
        {},
        320, "val bits/char near 1.73 (the guide's recipe: 2.26; PPMd 1.674: not beaten yet); greedy (with chat's "
        "n-gram ban, length decay and prompt boost) and with chat's sampling every held-out answer ends (measured "
        "100 %, here and on 300), none loops or leaks; token F1 near 0.16 (measured 0.165 greedy / 0.163 sampled) "
        "against one constant answer (0.137) and copying the nearest training answer (0.169) on these 30 questions; "
        "on 300 (five folds) 0.160 / 0.157, far above the constant answer (0.114), level with copying (0.156): the "
        "answers restate the question's subject but rarely hold the fact asked for; about 8-9 minutes on a quiet "
        "2-core CPU (measured 8.8)", 400,
    ),
    "full": Profile(
        "full", 500,
        dict(preset="guide", train=dict(log_interval=50)),
        dict(recipe="guide"),
        320, "val bits/char near 2.26, the guide recipe's own result; with the guide's fine-tuning recipe (loss on "
        "every token of random windows) about half the answers leak template tokens (measured: 70 % end, 53 % "
        "leak): why sifirdan's default recipe differs", 400,
        ["--full: the guide's preset and budgets, its model exactly (the LM head's bias folds into GPT-2's on export)"],
    ),
}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="the whole guide offline in minutes: tokenizer, pre-training, fine-tuning, answers, export",
        description="Run the guide end to end on the bundled Nutuk corpus and Nutuk QA pairs, offline: train a "
        "tokenizer, pre-train, fine-tune, answer held-out questions, export to Hugging Face format, and print a "
        "summary. Running it again reuses finished stages and continues an interrupted one.",
    )
    p.add_argument("--out", default="runs/demo", metavar="DIR",
                   help="the demo's folder (new, empty, or an earlier demo's); default runs/demo")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help="every stage with a tiny model (a smoke test, as in CI); bench/demo.py on 2 "
                      "cores: 22 s on a quiet machine, 1,949 s at nice 19 beside other jobs (load average 8-13)")
    size.add_argument("--full", action="store_true", help="the guide's budgets: its preset, 1000 pre-training and "
                      "500 fine-tuning steps (~6 minutes on 2 cores)")
    p.add_argument("--fresh", action="store_true", help="delete this demo's earlier results and start over")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------------------ the folder
class DemoDir:
    """``--out`` and its ``demo.json``: which profile made it, which stages are done, what each measured."""

    def __init__(self, path: Path, profile: str, fresh: bool):
        self.path = path
        if path.exists() and not path.is_dir():
            raise UserError(f"--out {path} is a file, not a folder; pick another --out")
        marker = path / MARKER
        if path.is_dir() and any(path.iterdir()) and not marker.is_file():
            raise UserError(f"--out {path} is a folder that is not empty and is not a sifirdan demo (no {MARKER}); "
                            "sifirdan never writes into such a folder: pick a new or empty one")
        self.state = {"format": MARKER_FORMAT, "profile": profile, "stages": {}}
        if marker.is_file():
            from sifirdan.fileio import parse_json

            saved = parse_json(marker.read_text(encoding="utf-8"), str(marker), f"delete {path} and run the demo again")
            if not isinstance(saved, dict) or saved.get("format") != MARKER_FORMAT:
                raise UserError(f"{marker} is not a sifirdan demo marker; pick another --out")
            if fresh:
                self.clear()
            elif saved.get("profile") != profile:
                flag = {"tiny": " --tiny", "full": " --full"}.get(saved.get("profile"), "")
                raise UserError(f"{path} holds a demo made with the {saved.get('profile')} profile; continue it with "
                                f"`sifirdan demo --out {path}{flag}` or start over with --fresh")
            else:
                self.state = saved
        check_disk(path, PROFILES[profile].disk_mb)
        path.mkdir(parents=True, exist_ok=True)
        self.save()

    def clear(self) -> None:
        for name in OWN_DIRS:
            if (self.path / name).is_dir():
                shutil.rmtree(self.path / name)
        for name in OWN_FILES:
            (self.path / name).unlink(missing_ok=True)

    def save(self) -> None:
        from sifirdan.fileio import atomic_write_text

        atomic_write_text(self.path / MARKER, json.dumps(self.state, indent=2, ensure_ascii=False) + "\n")

    def done(self, stage: str) -> dict | None:
        return self.state["stages"].get(stage)

    def finish(self, stage: str, seconds: float, result: dict) -> None:
        self.state["stages"][stage] = {"seconds": round(seconds, 1), **result}
        self.save()


def check_disk(path: Path, need_mb: int) -> None:
    """Enough free space for the run's checkpoints, token bins and export, checked before any stage starts."""
    target = path
    while not target.exists():
        target = target.parent
    free_mb = shutil.disk_usage(target).free / 2**20
    if free_mb < need_mb:
        raise UserError(f"not enough disk space at {target}: {free_mb:.0f} MB free, the demo needs about {need_mb} MB; "
                        "free some space or pass --out DIR on another disk")


# ------------------------------------------------------------------------------------------------ stages
def _train(stage: str, call, settings, run: Path) -> None:
    """One training stage through the library: a new run, the continuation of an interrupted one (its last/
    checkpoint; the run's own settings), or a restart of one interrupted before its first checkpoint."""
    from sifirdan import rundir
    from sifirdan.cli.runs import say
    from sifirdan.train import RunSettings

    if (run / "last" / "config.json").is_file() or (run / "last.old").is_dir():
        settings, where = type(settings)(), RunSettings(resume=run)
    else:
        where = RunSettings(out=run, overwrite=run.is_dir() and (run / rundir.MARKER).is_file())
    result = call(settings, where, log=say)
    if result.status == "interrupted":
        raise KeyboardInterrupt
    if result.status == "diverged":
        raise UserError(f"the {stage} stage failed ({result.message}); fix that and run `sifirdan demo` again to continue")


def stage_tokenizer(demo: DemoDir, profile: Profile) -> dict:
    from sifirdan.data import DataConfig, catalog, iter_train_texts
    from sifirdan.tokenizer import BPETokenizer

    print(f"training a BPE tokenizer with {profile.vocab_size} ids on the train split of "
          f"{catalog.describe(catalog.DEFAULT_TEXT)}", flush=True)
    tok = BPETokenizer.train(iter_train_texts(None, DataConfig()), vocab_size=profile.vocab_size, verbose=True)
    path = tok.save(demo.path / "tokenizer.json")
    return {"vocab_size": tok.vocab_size, "chars_per_token_train": round(tok.train_stats["chars_per_token"], 3),
            "path": str(path)}


def _records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _run_summary(run: Path) -> dict:
    from sifirdan import checkpoint as ckpt

    meta = ckpt.read_config(run / "last")
    records = _records(run)
    evals = [r for r in records if r.get("kind") == "eval"]
    final = next((r for r in reversed(records) if r.get("kind") == "final"), {})
    train, model = meta.get("train", {}), meta.get("model", {})
    step = evals[-1]["iter"] if evals else train.get("max_iters", 0)
    tokens = step * train.get("batch_size", 0) * train.get("grad_accum", 1) * model.get("block_size", 0)
    return {
        "steps": step, "tokens_seen": tokens,
        "train_loss": evals[-1].get("train_loss") if evals else None,
        "val_loss": evals[-1].get("val_loss") if evals else None,
        "final_val_loss": final.get("val_loss"), "val_bits_per_char": final.get("val_bits_per_char"),
        "val_bits_per_byte": final.get("val_bits_per_byte"),
    }


def stage_pretrain(demo: DemoDir, profile: Profile) -> dict:
    from sifirdan import checkpoint as ckpt
    from sifirdan.train import PretrainSettings, pretrain

    run = demo.path / "pretrain"
    _train("pretrain", pretrain, PretrainSettings(tokenizer=demo.path / "tokenizer.json", **profile.pretrain), run)

    model, _ = ckpt.load_model(run / "last")
    return {"parameters": model.num_parameters(), **_run_summary(run), "path": str(run)}


def stage_finetune(demo: DemoDir, profile: Profile) -> dict:
    from sifirdan.data import catalog
    from sifirdan.train import FinetuneSettings, finetune

    run = demo.path / "finetune"
    settings = FinetuneSettings(model=demo.path / "pretrain", data=catalog.DEFAULT_INSTRUCTIONS, **profile.finetune)
    _train("finetune", finetune, settings, run)
    return {**_run_summary(run), "path": str(run)}


def _baselines(split) -> dict:
    """Held-out F1 of the two answers that need no model (chat/baselines.py), on the demo's own split."""
    from sifirdan.chat.baselines import best_constant_answer, nearest_answers
    from sifirdan.chat.evaluate import token_f1

    questions = [c[-2]["content"] for c in split.val]
    refs = [c[-1]["content"] for c in split.val]
    copied = nearest_answers([c[-2]["content"] for c in split.train], [c[-1]["content"] for c in split.train], questions)
    constant = best_constant_answer([c[-1]["content"] for c in split.train])
    return {"f1_copy": sum(map(token_f1, copied, refs)) / len(refs),
            "f1_constant": sum(token_f1(constant, r) for r in refs) / len(refs)}


def _chat_decoding() -> dict:
    """What `sifirdan chat` samples with by default (temperature, top-p, top-k, n-gram ban, length decay, prompt
    boost), seeded so a rerun repeats it."""
    from sifirdan.chat.session import default_config

    c = default_config()
    return {"temperature": c.temperature, "top_p": c.top_p, "top_k": c.top_k, "no_repeat_ngram_size": c.no_repeat_ngram_size,
            "exponential_decay_length_penalty": c.exponential_decay_length_penalty, "prompt_boost": c.prompt_boost,
            "seed": 0}


def _greedy_decoding() -> dict:
    """Greedy, as `sifirdan eval-instruct` answers by default: with chat's n-gram ban (without it most answers of
    a model this small loop; `eval-instruct --no-repeat-ngram 0` measures that), its length decay and its prompt
    boost."""
    from sifirdan.chat.session import DEFAULT_LENGTH_DECAY, DEFAULT_NO_REPEAT_NGRAM, DEFAULT_PROMPT_BOOST

    return {"no_repeat_ngram_size": DEFAULT_NO_REPEAT_NGRAM, "exponential_decay_length_penalty": DEFAULT_LENGTH_DECAY,
            "prompt_boost": DEFAULT_PROMPT_BOOST}


def stage_answers(demo: DemoDir, profile: Profile) -> dict:
    from sifirdan import checkpoint as ckpt
    from sifirdan.chat import template_of
    from sifirdan.chat.evaluate import answer_line, evaluate_answers
    from sifirdan.cli.display import one_line
    from sifirdan.data.instructions import run_split
    from sifirdan.fileio import atomic_write_text

    directory = ckpt.resolve_checkpoint_dir(demo.path / "finetune")
    meta = ckpt.read_config(directory)
    split = run_split(meta["finetune"], meta["train"]["seed"])
    held_out = split.val
    model, tokenizer = ckpt.load_model(directory)
    greedy = _greedy_decoding()
    start, factor = greedy["exponential_decay_length_penalty"]
    print(f"answering the {len(held_out)} held-out questions (greedy, never the same {greedy['no_repeat_ngram_size']} "
          f"tokens twice, a push on </RESP> growing {factor - 1:.0%} per token past {start}, the question's words "
          f"boosted, at most {profile.max_new_tokens} new tokens) ...", flush=True)
    summary, records = evaluate_answers(model, tokenizer, template_of(meta), held_out,
                                        max_new_tokens=profile.max_new_tokens, progress=True, sampling=greedy)
    atomic_write_text(demo.path / "answers.jsonl", "".join(answer_line(r) for r in records))
    for k, r in enumerate(records[:N_SHOWN], start=1):
        print(f"\n[{k}] soru:     {one_line(r['instruction'], 200)}")
        print(f"    model:    {one_line(r['answer'], 200)}" + ("" if r["ended"] else "  (did not end)"))
        print(f"    kaynak:   {one_line(r['reference'], 200)}")
    print("\nand again with `sifirdan chat`'s default sampling ...", flush=True)
    chat, _ = evaluate_answers(model, tokenizer, template_of(meta), held_out, max_new_tokens=profile.max_new_tokens,
                               progress=True, sampling=_chat_decoding())
    print(flush=True)
    return {**summary, **_baselines(split), "chat": chat, "path": str(demo.path / "answers.jsonl")}


def stage_export(demo: DemoDir, profile: Profile) -> dict:
    from sifirdan.interop import export_hf

    out = demo.path / "hf"
    report = export_hf(demo.path / "finetune", out)
    for note in report.notes:
        print(f"note: {note}")
    print(f"exported {demo.path / 'finetune'} -> {report.path}", flush=True)
    result = {"path": str(out), "logits_max_abs_diff": None}
    if not has_transformers():
        print("transformers is not installed, so the export was not reloaded; to check it: "
              "pip install transformers==4.57.1 (then run the demo again)", flush=True)
        return result
    result["logits_max_abs_diff"] = reload_check(demo.path / "finetune", out)
    hf_class = (json.loads((out / "config.json").read_text(encoding="utf-8")).get("architectures") or ["?"])[0]
    print(f"reloaded {out} with transformers ({hf_class}): max |logit difference| "
          f"{result['logits_max_abs_diff']:.2e} on a held-out passage", flush=True)
    return result


def has_transformers() -> bool:
    import importlib.util

    return importlib.util.find_spec("transformers") is not None


def _check_skipped(stage: str, done: dict) -> bool:
    """A finished stage whose check was skipped for want of a package that is installed now: run it again (the
    export was not reloaded without transformers)."""
    return stage == "export" and done.get("logits_max_abs_diff") is None and has_transformers()


def reload_check(model_dir: Path, hf_dir: Path) -> float:
    """Our model and the exported one read back by ``transformers``, on the same ids of unseen text: the
    largest absolute difference of their logits: 0 when transformers computes them in our order (a bias-free
    head), float32 rounding (~1e-5 at logits near 15) when the LM head's bias was folded into GPT-2's head; a
    Llama export (the default block) differs by float32 rounding of its other summation order (~1e-6)."""
    import torch
    import transformers

    from sifirdan import checkpoint as ckpt
    from sifirdan.data import standard_split

    model, tokenizer = ckpt.load_model(model_dir)
    _, val, _ = standard_split(None)
    ids = tokenizer.encode(val[:4000])[: model.config.block_size]
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), local_files_only=True).float().eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        ours, _ = model(x)
        theirs = hf(x).logits
    return float((ours - theirs).abs().max())


STAGE_FUNCS = {"tokenizer": stage_tokenizer, "pretrain": stage_pretrain, "finetune": stage_finetune,
               "answers": stage_answers, "export": stage_export}
TITLES = {"tokenizer": "tokenizer (guide §2)", "pretrain": "pre-training on Nutuk (guide §7-8)",
          "finetune": "fine-tuning on Nutuk QA (guide §9)", "answers": "answering held-out questions",
          "export": "export to Hugging Face format"}


# ------------------------------------------------------------------------------------------------ summary
def _f(v, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def summary_rows(state: dict) -> list[tuple[str, str]]:
    s = state["stages"]
    tok, pre, ft, ans, exp = (s.get(k, {}) for k in STAGES)
    chat = ans.get("chat") or {}
    rows = [
        ("parameters", _f(pre.get("parameters"), ",")),
        ("tokenizer", f"{tok.get('vocab_size')} ids, {tok.get('chars_per_token_train')} chars/token on train"),
        ("pre-training", f"{pre.get('steps')} steps, {_f(pre.get('tokens_seen'), ',')} tokens seen"),
        ("  train / val loss", f"{_f(pre.get('train_loss'), '.3f')} / {_f(pre.get('val_loss'), '.3f')} nats/token"),
        ("  val bits/char", f"{_f(pre.get('val_bits_per_char'), '.3f')} (every val token; "
                            f"{_f(pre.get('val_bits_per_byte'), '.3f')} bits/byte, as the log also says)"),
    ]
    rows += [(f"    guide's recipe (1000 steps), {k}", f"{v:.3f}") for k, v in GUIDE_BPC.items()]
    rows += [
        ("    PPMd order 8, having read the train split", f"{PPMD_BPC:.3f}"),
        ("fine-tuning", f"{ft.get('steps')} steps; val loss on answers {_f(ft.get('final_val_loss'), '.3f')}"),
        ("held-out answers, greedy (chat's n-gram ban, decay, boost)", f"{ans.get('n')} questions: ended {_f(ans.get('ended_rate'), '.0%')}, leaked "
                                     f"{_f(ans.get('leak_rate'), '.0%')}, looped {_f(ans.get('loop_rate'), '.0%')}, "
                                     f"token F1 {_f(ans.get('f1'), '.3f')}"),
        ("  with chat's sampling", f"ended {_f(chat.get('ended_rate'), '.0%')}, leaked {_f(chat.get('leak_rate'), '.0%')}, "
                                   f"looped {_f(chat.get('loop_rate'), '.0%')}, token F1 {_f(chat.get('f1'), '.3f')}"),
        ("    copying the nearest training answer", f"token F1 {_f(ans.get('f1_copy'), '.3f')} (no model)"),
        ("    one constant answer for every question", f"token F1 {_f(ans.get('f1_constant'), '.3f')} (no model)"),
        ("export", "reloaded in transformers, max |logit diff| " + _f(exp.get("logits_max_abs_diff"), ".1e")
         if exp.get("logits_max_abs_diff") is not None else "written (transformers not installed: not reloaded)"),
    ]
    total = 0.0
    for k in STAGES:
        sec = s.get(k, {}).get("seconds")
        total += sec or 0
        rows.append((f"time: {k}", _f(sec, ".0f") + " s"))
    rows.append(("time: total", f"{total:.0f} s ({total / 60:.1f} min)"))
    rows += [("artifact: " + k, s[k]["path"]) for k in STAGES if s.get(k, {}).get("path")]
    return rows


def print_summary(demo: DemoDir, profile: Profile) -> None:
    rows = summary_rows(demo.state)
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    ft = demo.path / "finetune"
    nxt = [f"sifirdan chat --model {ft}", f"sifirdan serve --model {ft}   # then open http://127.0.0.1:8000/",
           f"sifirdan attention --model {demo.path / 'pretrain'} --out attention.png   # a default sentence; --text TEXT",
           f"sifirdan generate --model {demo.path / 'pretrain'} --prompt \"Türk milleti\" --max-new-tokens 80"]
    text = ("\n".join(["summary", "-" * 7, *lines, "", f"expected: {profile.expect}", "", "next:", *("  " + c for c in nxt)])
            + "\n")
    print(text, end="")
    from sifirdan.fileio import atomic_write_text

    atomic_write_text(demo.path / "summary.md", "```\n" + text + "```\n")


# ------------------------------------------------------------------------------------------------ run
def run(args) -> int:
    name = "tiny" if args.tiny else "full" if args.full else "default"
    profile = PROFILES[name]
    demo = DemoDir(Path(args.out), name, args.fresh)
    for note in profile.notes:
        print(note)
    t_all = time.perf_counter()
    for i, stage in enumerate(STAGES, start=1):
        head = f"[{i}/{len(STAGES)}] {TITLES[stage]}"
        done = demo.done(stage)
        if done is not None and _check_skipped(stage, done):
            print(f"{head}: done earlier, but its check was skipped; transformers is installed now, so again", flush=True)
        elif done is not None:
            print(f"{head}: done earlier ({done['seconds']:.0f} s), reused (--fresh starts over)", flush=True)
            continue
        print(f"\n{head}", flush=True)
        t0 = time.perf_counter()
        try:
            result = STAGE_FUNCS[stage](demo, profile)
        except KeyboardInterrupt:
            print(f"\ninterrupted in the {stage} stage; run `sifirdan demo --out {demo.path}"
                  + {"tiny": " --tiny", "full": " --full"}.get(name, "") + "` again to continue from there",
                  file=sys.stderr)
            return 130
        seconds = time.perf_counter() - t0
        demo.finish(stage, seconds, result)
        print(f"{head}: {seconds:.0f} s", flush=True)
    print(f"\nthe demo took {time.perf_counter() - t_all:.0f} s this time\n")
    print_summary(demo, profile)
    return 0
