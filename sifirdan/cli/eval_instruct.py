"""``sifirdan eval-instruct``: answer held-out instruction pairs with a fine-tuned model and score the answers.

    sifirdan eval-instruct --model runs/ft --data val.jsonl
    sifirdan eval-instruct --model runs/ft --data val.jsonl --json --answers answers.jsonl

Reports how many answers end with ``</RESP>`` (ended_rate), how many contain a special token (leak_rate), how
many loop (loop_rate), their mean length in characters and their token F1 against the references (definitions:
``sifirdan/chat/evaluate.py``). Greedy decoding by default, so the numbers are reproducible, with ``sifirdan chat``'s
n-gram ban (--no-repeat-ngram 3: never the same 3 tokens twice in one answer; 0 = plain greedy) and length decay
(--length-decay 150,1.02: past 150 new tokens, a push on </RESP> that grows 2 % per token; off = never) and prompt boost
(--prompt-boost 4,2: +4 on the question's words the answer has not used yet, +2 on the piece that follows; off = none);
the decoding flags (--temperature, --top-p, --top-k, --repetition-penalty, --no-repeat-ngram, --length-decay,
--prompt-boost, --seed) measure another one, e.g. chat's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sifirdan.errors import UserError

N_EXAMPLES = 3  # example answers the readable report shows


def register(subparsers) -> None:
    from sifirdan.chat.evaluate import DEFAULT_BATCH_SIZE, DEFAULT_MAX_NEW_TOKENS
    from sifirdan.chat.session import DEFAULT_LENGTH_DECAY, DEFAULT_NO_REPEAT_NGRAM, DEFAULT_PROMPT_BOOST
    from sifirdan.cli import options
    from sifirdan.generate.config import length_decay_text, prompt_boost_text

    p = subparsers.add_parser(
        "eval-instruct",
        help="score a fine-tuned model's answers to instruction pairs",
        description=(
            "Answer every instruction of a data file with a fine-tuned model (greedy with chat's n-gram ban, length decay and "
            "prompt boost, or "
            "with the decoding flags) and report ended_rate (answers that end with </RESP>), leak_rate (answers holding a special "
            "token), loop_rate (answers with fewer than half their words distinct), the mean answer length and "
            "token F1 against the reference answers. --json prints them as one line: n, ended_rate, leak_rate, "
            "loop_rate, mean_answer_chars, f1. `--temperature 0.3 --top-p 0.9 --seed 0` measures what "
            "`sifirdan chat` samples by default; `--no-repeat-ngram 0 --length-decay off --prompt-boost off` is plain greedy."
        ),
    )
    options.add(p, "--model", required=True)
    p.add_argument("--data", required=True, metavar="PATH",
                   help="instruction pairs: .jsonl, .json or .csv (instruction/output, prompt/response, question/answer or messages), or hf:NAME[:SPLIT]")
    options.add(p, "--json")
    options.add(p, "--max-new-tokens", default=str(DEFAULT_MAX_NEW_TOKENS))
    p.add_argument("--answers", metavar="FILE", help="also write one JSON line per pair (instruction, reference, answer, ended, leaked, ...)")
    options.add(p, "--batch-size", default=str(DEFAULT_BATCH_SIZE))
    options.add(p, "--field-map")
    options.add(p, "--max-samples", note="all")
    options.add(p, "--skip-bad")
    options.add(p, "--device", default="auto")
    options.add(p, "--threads", default=0)
    # decoding: greedy with chat's n-gram ban, length decay and prompt boost unless one is given; `--temperature 0.3 --top-p 0.9 --seed 0` = chat's
    options.add(p, "--temperature", default="0")
    options.add(p, "--top-p", default="1")
    options.add(p, "--top-k", default="0")
    options.add(p, "--repetition-penalty", default="1")
    options.add(p, "--no-repeat-ngram", default=str(DEFAULT_NO_REPEAT_NGRAM))
    options.add(p, "--length-decay", default=length_decay_text(DEFAULT_LENGTH_DECAY))
    options.add(p, "--prompt-boost", default=prompt_boost_text(DEFAULT_PROMPT_BOOST))
    options.add(p, "--seed", note="none")
    p.set_defaults(func=cmd_eval_instruct)


def _int(value, name: str, low: int, high: int | None = None) -> int | None:
    if value is None:
        return None
    try:
        n = int(str(value).strip(), 10)
    except ValueError:
        raise UserError(f"--{name} must be an integer, got {value!r}") from None
    if n < low or (high is not None and n > high):
        rng = f"from {low} to {high}" if high is not None else f">= {low}"
        raise UserError(f"--{name} must be {rng}, got {n}")
    return n


def cmd_eval_instruct(args) -> int:
    # every flag checked before the model loads: a typo fails fast
    checked = _checked_flags(args)
    model, tokenizer, template, before_batch = _load(args)
    data = _load_data(args, model, tokenizer, template, checked)

    from sifirdan.chat.evaluate import answer_line, evaluate_answers

    summary, records = evaluate_answers(model, tokenizer, template, data.conversations,
                                        max_new_tokens=checked["max_new"], batch_size=checked["batch_size"],
                                        progress=True, before_batch=before_batch, sampling=checked["sampling"])
    answers = checked["answers"]
    if answers is not None:
        from sifirdan.fileio import atomic_write_text

        atomic_write_text(answers, "".join(answer_line(r) for r in records))
    if args.json:
        print(json.dumps(summary))
        return 0
    _report(args, summary, records, template, checked["max_new"])
    if answers is not None:
        print(f"\nanswers written to {answers}")
    return 0


def _checked_flags(args) -> dict:
    from sifirdan.data.instructions import parse_field_map
    from sifirdan.generate.config import MAX_NEW_TOKENS_CAP

    checked = {
        "max_new": _int(args.max_new_tokens, "max-new-tokens", 1, MAX_NEW_TOKENS_CAP),
        "batch_size": _int(args.batch_size, "batch-size", 1, 4096),
        "max_samples": _int(args.max_samples, "max-samples", 1),
        "field_map": parse_field_map(args.field_map),
        "answers": Path(args.answers) if args.answers else None,
        "sampling": _sampling(args),
    }
    answers = checked["answers"]
    if answers is not None:
        from sifirdan.fileio import check_writable_dir

        if answers.is_dir():
            raise UserError(f"--answers {answers} is a folder; give a file name, e.g. --answers {answers / 'answers.jsonl'}")
        check_writable_dir(answers.parent if str(answers.parent) else Path("."), "--answers folder",
                           "choose another --answers path")
    return checked


def _sampling(args) -> dict:
    """The decoding flags as ``evaluate_answers``' sampling settings, checked now (GenerationConfig's rules)."""
    from sifirdan.cli import options
    from sifirdan.generate import GenerationConfig
    from sifirdan.generate.config import parse_length_decay, parse_prompt_boost

    sampling = {"temperature": options.parse_number(args.temperature, "temperature", float),
                "top_p": options.parse_number(args.top_p, "top-p", float),
                "top_k": options.parse_number(args.top_k, "top-k", int),
                "repetition_penalty": options.parse_number(args.repetition_penalty, "repetition-penalty", float),
                "no_repeat_ngram_size": options.parse_number(args.no_repeat_ngram, "no-repeat-ngram", int),
                "exponential_decay_length_penalty": parse_length_decay(args.length_decay),
                "prompt_boost": parse_prompt_boost(args.prompt_boost),
                "seed": options.parse_number(args.seed, "seed", int)}
    GenerationConfig(**sampling).validate()
    return sampling


def _load(args):
    """(model, tokenizer, template, before_batch): the fine-tuned model on its device, and on a CPU what adjusts
    the threads before each batch."""
    from sifirdan.chat import template_of
    from sifirdan.checkpoint import load_model, read_config, resolve_checkpoint_dir
    from sifirdan.train.runtime import resolve_device

    threads = args.threads or None  # 0: the cores other programs leave free (options.threads checked the range)
    directory = resolve_checkpoint_dir(args.model)
    template = template_of(read_config(directory))
    if template is None:
        raise UserError(
            f"{args.model} is not a fine-tuned model (its config.json has no chat_template), so it has no "
            f"instruction format to answer in; fine-tune it first with `sifirdan finetune --model {args.model} "
            "--data PAIRS.jsonl --out RUN` and evaluate RUN"
        )
    device = resolve_device(args.device)
    before_batch = None
    if device.type == "cpu":
        import torch

        from sifirdan.train.runtime import CpuShare

        if threads is not None:
            torch.set_num_threads(threads)
        else:
            # PyTorch's threads spin while they wait for each other: beside a busy core, 2 threads run slower than
            # 1 (4x here on 2 shared cores). Measure what other programs use and take the rest, per batch.
            share = CpuShare()
            before_batch = share.adjust if share.available else None
    model, tokenizer = load_model(directory, device)
    return model, tokenizer, template, before_batch


def _load_data(args, model, tokenizer, template, checked):
    from sifirdan.chat.evaluate import load_eval_data

    data = load_eval_data(args.data, template, tokenizer, field_map=checked["field_map"], skip_bad=args.skip_bad,
                          max_samples=checked["max_samples"])
    if data.skipped_bad:
        first = f" (first: {data.bad_examples[0]})" if data.bad_examples else ""
        print(f"skipped {data.skipped_bad} bad record(s){first}", file=sys.stderr)
    if data.duplicates:
        print(f"dropped {data.duplicates} duplicate pair(s)", file=sys.stderr)
    block = model.config.block_size
    long_prompts = sum(len(template.render_prompt(c[:-1], tokenizer)) > block for c in data.conversations)
    if long_prompts:
        print(f"warning: {long_prompts} prompt(s) are longer than the model's {block}-token context; "
              "the engine keeps only their end", file=sys.stderr)
    return data


def _report(args, summary, records, template, max_new: int) -> None:
    """The readable report: the rates, then the first few answers beside their references."""
    from sifirdan.chat.evaluate import FINISH_LENGTH
    from sifirdan.cli.display import one_line

    n = summary["n"]
    finishes: dict[str, int] = {}
    for r in records:
        finishes[r["finish"]] = finishes.get(r["finish"], 0) + 1
    others = [f"{v} hit the {max_new}-token limit" if k == FINISH_LENGTH else f"{v} stopped at {k}"
              for k, v in sorted(finishes.items()) if k != template.resp_close]
    how = "greedily" if float(args.temperature) == 0 else f"sampling at temperature {args.temperature}, top-p {args.top_p}"
    print(f"{n} instruction pair(s) from {args.data}, answered {how} (at most {max_new} new tokens)")
    print(f"  ended with {template.resp_close:<10} {summary['ended_rate']:7.1%}" + (f"   ({'; '.join(others)})" if others else ""))
    print(f"  leaked a special token {summary['leak_rate']:7.1%}")
    print(f"  looped (< half the words distinct) {summary['loop_rate']:6.1%}")
    print(f"  mean answer length    {summary['mean_answer_chars']:8.1f} chars")
    print(f"  token F1              {summary['f1']:8.3f}")
    for k, r in enumerate(records[:N_EXAMPLES], start=1):
        end = ("ended" if r["ended"] else "hit the limit" if r["finish"] == FINISH_LENGTH
               else f"stopped at {r['finish']}")
        flags = end + (", leaked" if r["leaked"] else "")
        print(f"\n[{k}] instruction: {one_line(r['instruction'])}")
        print(f"    reference:   {one_line(r['reference'])}")
        print(f"    answer:      {one_line(r['answer'])}")
        print(f"    ({flags}; F1 {r['f1']:.2f})")
