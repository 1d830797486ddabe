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

import codecs
import csv
import hashlib
import io
import json
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sifirdan.errors import UserError
from sifirdan.fileio import parse_json

PAIR_FIELDS = (("instruction", "output"), ("prompt", "response"), ("question", "answer"))
# One example longer than this is surely not an instruction pair. Every reader checks it before parsing a record
# (JSONL: a line is read at most this long, JSON: a record's extent is found by a scan that keeps at most this
# much): a hostile 50 MB line costs a bounded buffer and a skip, never a parse.
MAX_RECORD_CHARS = 1 << 20
CSV_FIELD_LIMIT = MAX_RECORD_CHARS
_MAX_LINE_BYTES = 4 * MAX_RECORD_CHARS + 2  # UTF-8 has at most 4 bytes a character; + "\r\n"
_CHUNK = 1 << 16


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
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror}); check the path and its permissions") from None
    try:
        suffix = path.suffix.lower()
        if suffix == ".csv":
            records = _read_csv(path, f.read(), skip_bad, stats)
        elif suffix == ".json" or (suffix != ".jsonl" and _first_char(f) == b"["):
            records = _read_json_array(path, f, skip_bad, stats)
        else:
            records = _read_jsonl(path, f, skip_bad, stats)
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror}); check the path and its permissions") from None
    finally:
        f.close()
    stats.records = len(records)
    return records


def _too_long(where: str, skip: bool = True) -> UserError:
    how = "; shorten it or pass --skip-bad to skip such records" if skip else "; shorten it"
    return UserError(f"{where} is longer than {MAX_RECORD_CHARS:,} characters, too long for one instruction "
                     f"example{how}")


def _first_char(f) -> bytes:
    """The first byte that is not whitespace (after a UTF-8 BOM); the file is rewound."""
    head = f.read(_CHUNK).lstrip(b"\xef\xbb\xbf").lstrip()
    while not head:
        more = f.read(_CHUNK)
        if not more:
            break
        head = more.lstrip()
    f.seek(0)
    return head[:1]


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{where} is not UTF-8 text (byte {e.start} of it); save the file as UTF-8") from None


def _lines(path: Path, f):
    """``(line number, text)`` of a binary file, each line read at most _MAX_LINE_BYTES long; a longer one, or
    one of more than MAX_RECORD_CHARS characters, is ``(n, None)`` and the rest of it is skipped unread. Lines
    end at \\n (\\r\\n and a lone \\r too); a UTF-8 BOM at the start is dropped."""
    n = 0
    first = True
    while True:
        raw = f.readline(_MAX_LINE_BYTES)
        if not raw:
            return
        if first:
            raw = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw
            first = False
        n += 1
        if not raw.endswith(b"\n") and len(raw) >= _MAX_LINE_BYTES:
            while (rest := f.readline(_CHUNK)) and not rest.endswith(b"\n"):  # the rest of the line, dropped
                pass
            yield n, None
            continue
        raw = raw.rstrip(b"\n").rstrip(b"\r")
        pieces = raw.split(b"\r") if b"\r" in raw else [raw]  # JSON has no raw \r inside a string
        for k, piece in enumerate(pieces):
            text = _decode(piece, f"{path} line {n + k}")
            yield n + k, (text if len(text) <= MAX_RECORD_CHARS else None)
        n += len(pieces) - 1


def _read_jsonl(path: Path, f, skip_bad: bool, stats: ReadStats) -> list[dict]:
    records = []
    for n, line in _lines(path, f):
        try:
            if line is None:
                raise _too_long(f"{path} line {n}")
            if not line.strip():
                continue
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


_IN_STRING = re.compile(r'["\\]')  # what ends a run of string characters
_IN_CONTAINER = re.compile(r'["\[\]{}]')  # what matters inside an array or object, outside strings
_SCALAR = re.compile(r'[^\s,\]}]*')  # a number, true, false or null
_NOT_SPACE = re.compile(r"\S")


def _scan(buf: str, i: int, end: int, state: list) -> int | None:
    """Scan ``buf[i:end]`` for the end of the array, object or string being read; ``state`` is [depth, in a
    string, after a backslash] and is updated, so a scan can go on in the next chunk. The index just past the
    end of the value, or None."""
    depth, in_str, esc = state
    while i < end:
        if esc:
            esc = False
            i += 1
        elif in_str:
            m = _IN_STRING.search(buf, i, end)
            if m is None:
                break
            i = m.end()
            if m.group() == "\\":
                esc = True
            else:
                in_str = False
                if depth == 0:
                    state[:] = [0, False, False]
                    return i
        else:
            m = _IN_CONTAINER.search(buf, i, end)
            if m is None:
                break
            i = m.end()
            ch = m.group()
            if ch == '"':
                in_str = True
            elif ch in "[{":
                depth += 1
            else:
                depth -= 1
                if depth == 0:
                    state[:] = [0, False, False]
                    return i
    state[:] = [depth, in_str, esc]
    return None


class _JsonText:
    """A JSON file read in chunks, one value at a time: ``value()`` finds where the next value ends by a scan
    (strings, brackets), keeping at most ``limit`` characters of it, and returns its text for json.loads, or
    None when it is longer (then it is skipped unkept). ``line`` is the line the reader is at."""

    def __init__(self, path: Path, f):
        self.path, self.f = path, f
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buf, self.pos, self.line, self.eof, self.first = "", 0, 1, False, True

    def _fill(self) -> bool:
        if self.eof:
            return False
        raw = self.f.read(_CHUNK)
        try:
            text = self.decoder.decode(raw, final=not raw)
        except UnicodeDecodeError:
            raise UserError(f"{self.path} is not UTF-8 text (near line {self.line}); save it as UTF-8") from None
        if self.first:
            text = text.lstrip("\ufeff")
            self.first = False
        self.eof = not raw
        self.buf = self.buf[self.pos:] + text
        self.pos = 0
        return bool(raw)

    def _advance(self, to: int) -> None:
        self.line += self.buf.count("\n", self.pos, to)
        self.pos = to

    def peek(self) -> str | None:
        """The next character that is not whitespace (not consumed); None at the end of the file."""
        while True:
            m = _NOT_SPACE.search(self.buf, self.pos)
            if m:
                self._advance(m.start())
                return self.buf[self.pos]
            self._advance(len(self.buf))
            if not self._fill():
                return None

    def take(self, ch: str, what: str) -> None:
        c = self.peek()
        if c != ch:
            got = "the end of the file" if c is None else repr(c)
            raise UserError(f"{self.path} line {self.line}: expected {what}, got {got}; fix the file")
        self._advance(self.pos + 1)

    def value(self, limit: int) -> tuple[str | None, int]:
        c = self.peek()
        line = self.line
        if c is None:
            raise UserError(f"{self.path} ends where a value should be (line {line}); fix the file")
        while len(self.buf) - self.pos <= limit and self._fill():
            pass
        start, window = self.pos, min(len(self.buf), self.pos + limit)
        if c in '[{"':
            state = [1, False, False] if c in "[{" else [0, True, False]
            end = _scan(self.buf, start + 1, window, state)
            if end is not None:
                self._advance(end)
                return self.buf[start:end], line
            i = window  # too long: find its end without keeping it
            while (end := _scan(self.buf, i, len(self.buf), state)) is None:
                self._advance(len(self.buf))
                if not self._fill():
                    raise UserError(f"{self.path} ends inside the value that starts at line {line}; fix the file")
                i = self.pos
            self._advance(end)
            return None, line
        m = _SCALAR.match(self.buf, start, window)
        if m.end() == start:
            raise UserError(f"{self.path} line {line}: expected a JSON value, got {c!r}; fix the file")
        if m.end() < window or self.eof:
            self._advance(m.end())
            return self.buf[start:m.end()], line
        while True:  # a scalar longer than the limit: skip it
            self._advance(_SCALAR.match(self.buf, self.pos).end())
            if self.pos < len(self.buf) or not self._fill():
                return None, line


def _read_json_array(path: Path, f, skip_bad: bool, stats: ReadStats) -> list[dict]:
    """A JSON array of records, or ``{"data": [...]}``, read one record at a time (MAX_RECORD_CHARS each)."""
    src = _JsonText(path, f)
    shape = "expected a JSON array of records (or {\"data\": [...]})"
    c = src.peek()
    if c == "{":  # {"data": [...], ...}: the other keys are skipped, each value read no further than the cap
        src.take("{", "{")
        found = False
        while src.peek() != "}":
            key, line = src.value(MAX_RECORD_CHARS)
            key = parse_json(key, f"{path} line {line}", "fix the file") if key is not None else None
            src.take(":", "':' after a key")
            if key == "data" and src.peek() == "[":
                found = True
                break
            src.value(MAX_RECORD_CHARS)
            if src.peek() == ",":
                src.take(",", ",")
        if not found:
            raise UserError(f"{path}: {shape}, got an object without a \"data\" array")
    elif c != "[":
        got = "nothing" if c is None else "a JSON string" if c == '"' else f"{c!r}"
        raise UserError(f"{path}: {shape}, got {got}")
    src.take("[", "[")
    out: list[dict] = []
    n = 0
    if src.peek() == "]":
        return out
    while True:
        n += 1
        text, line = src.value(MAX_RECORD_CHARS)
        where = f"{path} record {n} (line {line})"
        try:
            if text is None:
                raise _too_long(where)
            rec = parse_json(text, where, "fix the file or pass --skip-bad to skip bad records")
            if not isinstance(rec, dict):
                raise UserError(f"{where} is a {type(rec).__name__}, not an object; fix the file or pass --skip-bad")
        except UserError as e:
            if not skip_bad:
                raise
            stats.skip(e)
        else:
            rec["_where"] = f"{path.name} record {n}"
            out.append(rec)
        c = src.peek()
        if c == "]":
            return out
        src.take(",", f"',' or ']' after record {n}")


def _read_csv(path: Path, raw: bytes, skip_bad: bool, stats: ReadStats) -> list[dict]:
    text = _decode(raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw, str(path))
    del raw
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
        # each field is capped by the csv module; the record as a whole gets the same cap as any other reader's
        if sum(len(v) for v in rec.values() if isinstance(v, str)) > MAX_RECORD_CHARS:
            e = _too_long(f"{path} line {n}")
            if not skip_bad:
                raise e
            stats.skip(e)
            continue
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
                if extra is not None and not isinstance(extra, str):
                    raise UserError(f"{where}: 'input' must be a string (or absent), got {type(extra).__name__}")
                if extra and extra.strip():
                    question = question + "\n\n" + extra
            if not question.strip():
                raise UserError(f"{where}: '{q}' is empty; fix or drop the record (or pass --skip-bad)")
            if not answer.strip():
                raise UserError(f"{where}: '{a}' is empty, so there is nothing to learn; fix or drop the record (or pass --skip-bad)")
            conv = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            system = r.get("system")
            if system is not None and not isinstance(system, str):
                raise UserError(f"{where}: 'system' must be a string (or absent), got {type(system).__name__}")
            if system and system.strip():
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
