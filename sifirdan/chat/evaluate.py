"""Evaluate a fine-tuned model on instruction pairs: does it answer, stop where it should, and say the right thing?

    summary, records = evaluate_answers(model, tokenizer, template, conversations, max_new_tokens=256)
    summary  # {"n": 300, "ended_rate": 0.97, "leak_rate": 0.01, "mean_answer_chars": 84.2, "f1": 0.41}

Each conversation's last message is the reference answer; the model answers the rest
(``template.render_prompt(conv[:-1])``), greedily (temperature 0, so the numbers are reproducible), in batches
through the generation engine, stopping at the template's stop ids (``</RESP>``, and ``<|endoftext|>`` when
the tokenizer has it -- the same stops a chat uses).

``sampling`` (optional) answers with another decoding than greedy -- temperature, top-p, top-k, repetition
penalty and a seed, as ``sifirdan chat`` samples -- so the chat's default decoding is measured the same way.

The metrics, exactly:

* ``ended_rate``: the share of answers that stopped because the model produced the ``</RESP>`` id within
  ``max_new_tokens``. Stopping at ``<|endoftext|>`` ends the text but not the answer the template asks for, so
  it does not count, and neither does running into the limit or spelling ``</RESP>`` with ordinary bytes.
* ``leak_rate``: the share of answers that contain a special token: one of the tokenizer's special token ids
  (``<INST>``, ``<PAD>``, ``<RESP>``, ...) among the generated ids -- the final stop id that ended the answer
  excepted -- or the literal text of one of them (``"<INST>"`` written with ordinary bytes) in the answer text.
  Both mean the model is writing template markup instead of an answer.
* ``mean_answer_chars``: the mean length of the answer text in characters (the stop id excluded, nothing
  stripped).
* ``f1``: SQuAD's bag-of-tokens F1 between answer and reference after ``normalize_tr``, averaged over the
  answers. Both empty -> 1; one empty -> 0.
* ``loop_rate``: the share of answers that loop: fewer than half of their words (after ``normalize_tr``) are
  distinct ("milli hareketin milli hareketin ..."). An empty answer does not loop.
* ``n``: answers scored.

``normalize_tr`` is SQuAD's normalisation made right for Turkish: NFKC, then ``İ`` -> ``i`` and ``I`` -> ``ı``
before ``str.lower()`` (Python lowercases ``I`` to ``i`` and ``İ`` to ``i`` + a combining dot), a leftover
``i`` + U+0307 (a decomposed ``İ`` lowercased elsewhere) -> ``i``, then punctuation removed (Unicode category
P*, plus ASCII symbols such as ``$+<=>^`|~``, deleted as SQuAD does, so ``Ankara'da`` -> ``ankarada``); F1
then splits the text on whitespace. There are no articles to drop in Turkish.

Batching does not change the answers: a left-padded row computes what it computes alone (the engine's
guarantee), and prompts are grouped by length only to waste less padding; results come back in input order.
"""

from __future__ import annotations

import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sifirdan.errors import UserError

DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_BATCH_SIZE = 32
SUMMARY_KEYS = ("n", "ended_rate", "leak_rate", "loop_rate", "mean_answer_chars", "f1")
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "no_repeat_ngram_size",
                 "exponential_decay_length_penalty", "prompt_boost", "seed")  # what ``sampling`` may set
FINISH_LENGTH = "length"  # a record's finish when max_new_tokens was reached (else: the stop token's text)

_ASCII_PUNCT = frozenset(string.punctuation)


# ------------------------------------------------------------------------------------------------ text metrics
def normalize_tr(text: str) -> str:
    """Text -> lowercased (Turkish casing), punctuation deleted, whitespace runs -> one space, stripped: what F1
    splits into tokens (SQuAD's ``normalize_answer`` for Turkish; see the module docstring)."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("İ", "i").replace("I", "ı").lower().replace("i\u0307", "i")
    text = "".join(" " if ch.isspace() else ch for ch in text
                   if not (ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")))
    return " ".join(text.split())


def loops(text: str) -> bool:
    """True when fewer than half of the answer's words are distinct (the ``loop_rate`` of the summary)."""
    words = normalize_tr(text).split()
    return bool(words) and len(set(words)) < 0.5 * len(words)


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1 (bag of tokens, after ``normalize_tr``). Both empty -> 1.0; only one empty -> 0.0."""
    pred, ref = normalize_tr(prediction).split(), normalize_tr(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


# ------------------------------------------------------------------------------------------------ data
@dataclass
class EvalData:
    conversations: list[list[dict]]
    where: list[str]  # "file line n" of each conversation
    records: int = 0  # records read
    skipped_bad: int = 0
    duplicates: int = 0
    bad_examples: list[str] = field(default_factory=list)


def load_eval_data(source, template, tokenizer, field_map: Mapping[str, str] | None = None, skip_bad: bool = False,
                   max_samples: int | None = None) -> EvalData:
    """Read instruction pairs for evaluation: every record -> a conversation whose prompt the template can render.

    Bad records are a one-line ``UserError`` naming the record (or skipped and counted with ``skip_bad``);
    exact duplicates are dropped (as fine-tuning drops them); ``max_samples`` keeps the first N (file order).
    An empty result is an error."""
    from sifirdan.data.instructions import ReadStats, iter_conversations, read_records

    template.stop_ids(tokenizer)  # a tokenizer without the template's tokens: the model's problem, said first
    stats = ReadStats()
    records = read_records(source, skip_bad=skip_bad, stats=stats)
    out = EvalData(conversations=[], where=[], records=len(records))

    def renders(rec, conv) -> None:  # the shape (user/assistant alternating) is checked here
        try:
            template.render_prompt(conv[:-1], tokenizer)
        except UserError as e:
            raise UserError(f"{rec.get('_where', 'a record')}: {e}; fix or drop the record (or pass --skip-bad)") from None

    for rec, conv in iter_conversations(records, field_map, skip_bad, stats, check=renders):
        out.conversations.append(conv)
        out.where.append(rec.get("_where", "a record"))
        if max_samples is not None and len(out.conversations) >= max_samples:
            break
    out.skipped_bad, out.duplicates, out.bad_examples = stats.skipped_bad, stats.duplicates, list(stats.bad_examples)
    if not out.conversations:
        why = []
        if out.skipped_bad:
            why.append(f"{out.skipped_bad} bad record(s) skipped")
        if out.duplicates:
            why.append(f"{out.duplicates} duplicate(s) dropped")
        detail = f" ({', '.join(why)})" if why else ""
        raise UserError(f"{source} holds no instruction pairs to evaluate{detail}; give a .jsonl/.json/.csv file with "
                        "instruction/output, prompt/response, question/answer or messages records (rename fields with --field-map)")
    return out


# ------------------------------------------------------------------------------------------------ evaluation
def _leaked(ids: Sequence[int], text: str, special_ids: frozenset[int], special_texts: tuple[str, ...]) -> bool:
    return any(i in special_ids for i in ids) or any(t in text for t in special_texts)


def evaluate_answers(model, tokenizer, template, conversations: Sequence[Sequence[Mapping]], *,
                     max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = DEFAULT_BATCH_SIZE,
                     progress: bool = False, before_batch: Callable[[], object] | None = None,
                     sampling: Mapping | None = None) -> tuple[dict, list[dict]]:
    """Answer every conversation's prompt (greedily, or with ``sampling``); return ``(summary, records)``.

    ``summary`` has exactly ``SUMMARY_KEYS`` (definitions in the module docstring). ``records`` has one dict
    per conversation, in input order: ``instruction`` (the last user message), ``reference``, ``answer``,
    ``ended``, ``leaked``, ``f1``, ``finish`` (``"</RESP>"``, the text of another stop id such as
    ``"<|endoftext|>"``, or ``"length"``) and ``answer_tokens`` (ids generated, a final stop id excluded).
    ``progress`` shows a bar on stderr when it is a terminal; ``before_batch`` is called before each batch (the
    CLI re-decides its CPU thread count there)."""
    from sifirdan.generate import Engine, GenerationConfig

    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise UserError(f"batch_size must be an integer >= 1, got {batch_size!r}; pass e.g. --batch-size 32")
    if not conversations:
        raise UserError("there are no conversations to evaluate; give at least one instruction pair")
    sampling = dict(sampling or {})
    unknown = sorted(set(sampling) - set(SAMPLING_KEYS))
    if unknown:
        raise UserError(f"unknown sampling setting(s) {', '.join(unknown)}; use {', '.join(SAMPLING_KEYS)}")
    config = GenerationConfig(**{"temperature": 0.0, **sampling}, max_new_tokens=max_new_tokens,
                              stop_token_ids=template.stop_ids(tokenizer),
                              suppress_token_ids=template.suppressed_ids(tokenizer)).validate()
    end_id = tokenizer.special_tokens[template.resp_close]  # present: stop_ids() checked the template's tokens
    stop_ids = frozenset(config.stop_token_ids)
    specials = dict(tokenizer.special_tokens)
    special_ids = frozenset(specials.values())
    special_texts = tuple(dict.fromkeys(list(specials) + list(template.special_tokens)))
    names = {i: s for s, i in specials.items()}

    prompts, instructions, references = [], [], []
    for k, conv in enumerate(conversations):
        conv = list(conv)
        if len(conv) < 2 or not isinstance(conv[-1], Mapping) or conv[-1].get("role") != "assistant" \
                or not isinstance(conv[-1].get("content"), str):
            raise UserError(f"conversation {k + 1} must end with the assistant's reference answer (its last message)")
        try:
            prompts.append(template.render_prompt(conv[:-1], tokenizer))
        except UserError as e:
            raise UserError(f"conversation {k + 1}: {e}") from None
        instructions.append(conv[-2]["content"])
        references.append(conv[-1]["content"])

    was_training = model.training
    engine = Engine(model, tokenizer)  # puts the model in eval mode (no dropout); its mode is restored at the end
    n = len(prompts)
    # longest first, so a batch holds prompts of similar length (less padding) and the slowest batch comes first
    order = sorted(range(n), key=lambda i: -len(prompts[i]))
    ids_out: list[list[int]] = [[] for _ in range(n)]
    text_out: list[list[str]] = [[] for _ in range(n)]
    stopped_by: list[int | None] = [None] * n  # the stop id that ended each answer; None: max_new_tokens

    bar = None
    if progress:
        from sifirdan import progress as progress_bars

        bar = progress_bars.bar(n, "answering", "answers", dynamic_ncols=True)
    try:
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            if before_batch is not None:
                before_batch()
            for ev in engine.iter_tokens([prompts[i] for i in rows], config):
                i = rows[ev.row]
                if ev.text:
                    text_out[i].append(ev.text)
                if ev.token_id in stop_ids:  # a row's last event (the engine drops the row after it)
                    stopped_by[i] = ev.token_id
                    if bar is not None:
                        bar.update(1)
                else:
                    ids_out[i].append(ev.token_id)
            if bar is not None:  # and the rows that ran into the limit
                bar.update(start + len(rows) - bar.n)
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)

    records = []
    for i in range(n):
        answer = "".join(text_out[i])
        stop = stopped_by[i]
        records.append({
            "instruction": instructions[i],
            "reference": references[i],
            "answer": answer,
            "ended": stop == end_id,
            "leaked": _leaked(ids_out[i], answer, special_ids, special_texts),
            "f1": token_f1(answer, references[i]),
            "loops": loops(answer),
            "finish": FINISH_LENGTH if stop is None else names.get(stop, str(stop)),
            "answer_tokens": len(ids_out[i]),
        })
    return summarize(records), records


def summarize(records: Sequence[Mapping]) -> dict:
    """The summary of per-answer records (``ended``, ``leaked``, ``answer``, ``f1``; loops are read off the answer)."""
    n = len(records)
    if n == 0:
        return {"n": 0, "ended_rate": 0.0, "leak_rate": 0.0, "loop_rate": 0.0, "mean_answer_chars": 0.0, "f1": 0.0}
    return {
        "n": n,
        "ended_rate": sum(bool(r["ended"]) for r in records) / n,
        "leak_rate": sum(bool(r["leaked"]) for r in records) / n,
        "loop_rate": sum(loops(r["answer"]) for r in records) / n,
        "mean_answer_chars": sum(len(r["answer"]) for r in records) / n,
        "f1": sum(r["f1"] for r in records) / n,
    }


ANSWER_KEYS = ("instruction", "reference", "answer", "ended", "leaked", "f1", "finish", "answer_tokens")


def answer_line(record: Mapping) -> str:
    """One JSON line of an answers file (``eval-instruct --answers``, the demo's answers.jsonl), Turkish letters
    as they are; an answer holding a lone surrogate (bytes a model can produce, which UTF-8 cannot store) is
    written with \\u escapes instead, which json.loads reads back exactly."""
    import json

    row = {k: record[k] for k in ANSWER_KEYS}
    line = json.dumps(row, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(row)
    return line + "\n"
