"""Instruction data for fine-tuning: read records, turn each into a conversation, dedupe, split, tokenize.

    records = read_records("qa.jsonl")                       # JSONL, a JSON array, or CSV (a header row)
    convs = to_conversations(records, field_map={"soru": "question"})
    split = split_conversations(convs, val_fraction=0.1, seed=1337)

Accepted record shapes (after ``--field-map`` renames):
  * Alpaca: ``instruction``, optional ``input`` (a non-empty input joins the instruction after a blank line),
    ``output``;
  * ``prompt`` / ``response``;  ``question`` / ``answer``;
  * ``messages``: a list of ``{"role": "system"|"user"|"assistant", "content": ...}`` (multi-turn);
  * an optional ``system`` string on any of the first three.

Exact duplicate conversations are removed before the split, so no example is in both train and val; the split
is by example, seeded. ``hf:NAME[:SPLIT]`` reads a Hugging Face dataset through ``datasets`` when that is
installed and the hub is reachable.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sifirdan.errors import UserError
from sifirdan.fileio import parse_json

PAIR_FIELDS = (("instruction", "output"), ("prompt", "response"), ("question", "answer"))
MAX_RECORD_CHARS = 1 << 20  # one example longer than this is surely not an instruction pair
CSV_FIELD_LIMIT = MAX_RECORD_CHARS


@dataclass
class ReadStats:
    records: int = 0
    skipped_bad: int = 0  # malformed lines / records skipped under --skip-bad
    duplicates: int = 0
    bad_examples: list[str] = field(default_factory=list)  # the first few skipped, for the report

    def skip(self, error: UserError) -> None:
        """Count a bad line or record skipped under --skip-bad (the first three messages are kept)."""
        self.skipped_bad += 1
        if len(self.bad_examples) < 3:
            self.bad_examples.append(str(error))


def conversation_key(conv) -> bytes:
    """What makes two examples exact duplicates: the same messages, in the same order."""
    return hashlib.sha256(json.dumps(conv, ensure_ascii=False, sort_keys=True).encode("utf-8")).digest()


# ------------------------------------------------------------------------------------------------ reading
def read_records(source: str | Path, skip_bad: bool = False, stats: ReadStats | None = None) -> list[dict]:
    """The records of a JSONL, JSON (an array of objects) or CSV file, or of ``hf:NAME[:SPLIT]``."""
    stats = stats if stats is not None else ReadStats()
    text_source = str(source)
    if text_source.startswith("hf:"):
        return _read_hf(text_source[3:])
    from sifirdan.data import catalog

    path = catalog.resolve_name(source) or Path(source)
    if not path.is_file():
        raise UserError(f"instruction data {path} does not exist; pass a .jsonl, .json or .csv file (or hf:NAME)")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror}); check the path and its permissions") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        records = _read_csv(path, text)
    elif suffix == ".json" or (suffix != ".jsonl" and text.lstrip().startswith("[")):
        records = _read_json_array(path, text)
    else:
        records = _read_jsonl(path, text, skip_bad, stats)
    stats.records = len(records)
    return records


def _read_jsonl(path: Path, text: str, skip_bad: bool, stats: ReadStats) -> list[dict]:
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = parse_json(line, f"{path} line {n}", "fix the line or pass --skip-bad to skip bad lines")
            if not isinstance(rec, dict):
                raise UserError(f"{path} line {n}: expected a JSON object, got {type(rec).__name__}; fix the line or pass --skip-bad")
        except UserError as e:
            if not skip_bad:
                raise
            stats.skip(e)
            continue
        rec["_where"] = f"{path.name} line {n}"
        records.append(rec)
    return records


def _read_json_array(path: Path, text: str) -> list[dict]:
    data = parse_json(text, str(path), "fix the file")
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON array of records (or {{\"data\": [...]}}), got {type(data).__name__}")
    out = []
    for n, rec in enumerate(data, start=1):
        if not isinstance(rec, dict):
            raise UserError(f"{path}: record {n} is a {type(rec).__name__}, not an object; fix the file")
        rec = dict(rec)
        rec["_where"] = f"{path.name} record {n}"
        out.append(rec)
    return out


def _read_csv(path: Path, text: str) -> list[dict]:
    csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
    except csv.Error as e:
        raise UserError(f"{path}: not a valid CSV file ({e}); fix the file") from None
    if not reader.fieldnames:
        raise UserError(f"{path}: the CSV file has no header row; its first line must name the columns")
    out = []
    for n, row in enumerate(rows, start=2):
        rec = {k: v for k, v in row.items() if k is not None}
        rec["_where"] = f"{path.name} line {n}"
        out.append(rec)
    return out


def _read_hf(spec: str) -> list[dict]:
    name, _, split = spec.partition(":")
    if not name:
        raise UserError("hf: needs a dataset name, e.g. hf:merve/turkish_instructions:train")
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise UserError(f"hf:{spec} needs the `datasets` package: pip install datasets (or download the data and pass the file)") from None
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # offline, unknown name, no such split ...: the library's reason, on one line
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"could not load hf:{spec} ({reason}); check the name and the network, or pass a local file") from None
    return [dict(r, _where=f"hf:{name} row {i + 1}") for i, r in enumerate(ds)]


# ------------------------------------------------------------------------------------------------ records -> conversations
def parse_field_map(spec: str | None) -> dict[str, str]:
    """``"soru=question,cevap=answer"`` -> ``{"soru": "question", "cevap": "answer"}``."""
    if not spec:
        return {}
    out = {}
    for part in spec.split(","):
        old, eq, new = part.partition("=")
        if not eq or not old.strip() or not new.strip():
            raise UserError(f"--field-map entry {part!r} must look like old=new (e.g. --field-map soru=question,cevap=answer)")
        out[old.strip()] = new.strip()
    return out


def to_conversation(rec: Mapping, field_map: Mapping[str, str] | None = None) -> list[dict]:
    """One record -> a conversation (a list of role/content messages)."""
    where = rec.get("_where", "a record")
    r = {field_map.get(k, k) if field_map else k: v for k, v in rec.items()}
    if "messages" in r:
        msgs = r["messages"]
        if isinstance(msgs, str):  # CSV cell holding JSON
            msgs = parse_json(msgs, f"{where}: messages", "fix the record")
        if not isinstance(msgs, list) or not msgs:
            raise UserError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        conv = []
        for k, m in enumerate(msgs, start=1):
            if not isinstance(m, Mapping):
                raise UserError(f"{where}: message {k} is not an object; each must have 'role' and 'content'")
            role, content = m.get("role"), _content_text(m.get("content"), where, k)
            if role not in ("system", "user", "assistant"):
                raise UserError(f"{where}: message {k} has the unknown role {role!r}; use system, user or assistant")
            conv.append({"role": role, "content": content})
        if conv[-1]["role"] != "assistant" or not conv[-1]["content"].strip():
            raise UserError(f"{where}: the last message must be a non-empty assistant answer to learn from; fix or drop the record")
        return conv
    for q, a in PAIR_FIELDS:
        if q in r and a in r:
            question, answer = r[q], r[a]
            if not isinstance(question, str) or not isinstance(answer, str):
                raise UserError(f"{where}: '{q}' and '{a}' must be strings")
            if q == "instruction":
                extra = r.get("input")
                if isinstance(extra, str) and extra.strip():
                    question = question + "\n\n" + extra
            if not question.strip():
                raise UserError(f"{where}: '{q}' is empty; fix or drop the record (or pass --skip-bad)")
            if not answer.strip():
                raise UserError(f"{where}: '{a}' is empty, so there is nothing to learn; fix or drop the record (or pass --skip-bad)")
            conv = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            system = r.get("system")
            if isinstance(system, str) and system.strip():
                conv.insert(0, {"role": "system", "content": system})
            return conv
    found = ", ".join(sorted(k for k in r if k != "_where")) or "none"
    raise UserError(
        f"{where}: no instruction fields found (it has: {found}); expected instruction/output, prompt/response, "
        "question/answer or messages -- rename yours with --field-map, e.g. --field-map soru=question,cevap=answer"
    )


def _content_text(content, where: str, k: int) -> str:
    """OpenAI-style content: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, Mapping) and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise UserError(f"{where}: message {k} content must be a string (or a list of text parts)")


def iter_conversations(records: Iterable[Mapping], field_map=None, skip_bad: bool = False,
                       stats: ReadStats | None = None, check=None):
    """Yield ``(record, conversation)`` for every record in order, exact duplicates removed (counted in
    ``stats.duplicates``). ``check(record, conversation)`` may raise ``UserError`` to call a record bad, as a
    record that is no conversation is: an error, or with ``skip_bad`` skipped and counted. Lazy, so a caller
    that stops early (``--max-samples``) does not read on."""
    stats = stats if stats is not None else ReadStats()
    seen: set[bytes] = set()
    for rec in records:
        try:
            conv = to_conversation(rec, field_map)
            if check is not None:
                check(rec, conv)
        except UserError as e:
            if not skip_bad:
                raise
            stats.skip(e)
            continue
        key = conversation_key(conv)
        if key in seen:
            stats.duplicates += 1
            continue
        seen.add(key)
        yield rec, conv


def to_conversations(records: Iterable[Mapping], field_map=None, skip_bad: bool = False,
                     stats: ReadStats | None = None) -> list[list[dict]]:
    """Every record as a conversation; exact duplicates removed (counted in ``stats.duplicates``)."""
    return [conv for _, conv in iter_conversations(records, field_map, skip_bad, stats)]


@dataclass
class ConversationSplit:
    train: list[list[dict]]
    val: list[list[dict]]


def split_conversations(convs: list[list[dict]], val_fraction: float = 0.1, seed: int = 1337) -> ConversationSplit:
    """A seeded split by example: ``round(n * val_fraction)`` examples (at least 1 when there are 2 or more and
    val_fraction > 0) go to val. Duplicates are gone already, so the two sides share no example."""
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    order = list(range(len(convs)))
    random.Random(seed).shuffle(order)
    n_val = round(len(convs) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(convs) >= 2:
        n_val = 1
    val_idx = sorted(order[:n_val])
    train_idx = sorted(order[n_val:])
    return ConversationSplit(train=[convs[i] for i in train_idx], val=[convs[i] for i in val_idx])


def run_split(settings: Mapping, seed: int) -> ConversationSplit:
    """The train/val split a ``sifirdan finetune`` run made, rebuilt from the settings it saved (its config.json's
    ``finetune`` section and ``train.seed``): the same records, filters and seeded split, so its val examples --
    held out from training -- can be answered afterwards (``sifirdan demo`` does)."""
    stats = ReadStats()
    skip_bad = bool(settings.get("skip_bad", False))
    records = read_records(settings["data"], skip_bad=skip_bad, stats=stats)
    convs = to_conversations(records, parse_field_map(settings.get("field_map")), skip_bad=skip_bad, stats=stats)
    if settings.get("max_samples") is not None:
        convs = convs[: settings["max_samples"]]
    return split_conversations(convs, settings["val_fraction"], seed)
