"""Where text comes from: the user's files (txt, jsonl, json, csv, or a folder of them), a named corpus
(``nutuk``, ``nutuk-qa``, ``ataturk``: see catalog.py), or -- when nothing is given -- the default corpus, Nutuk,
which ships inside the package.

Everything here *streams*: a 10 GB text file is read in blocks, never held whole, so tokenizer training and
tokenization only ever hold one block plus their own tables.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import regex

from sifirdan.data import catalog
from sifirdan.errors import UserError
from sifirdan.fileio import parse_json

TEXT_SUFFIXES = (".txt", ".md", ".jsonl", ".json", ".csv")
DEFAULT_CORPUS_NAME = "nutuk (Nutuk, 1927; bundled with sifirdan)"
BLOCK_BYTES = 1 << 20

# A block may only be cut after a newline whose next character is not whitespace: the pre-tokenizer's
# whitespace rules look ahead across newlines, and a cut elsewhere could split one pre-token in two.
_SAFE_CUT = regex.compile(r"\n(?=\S)")


# ----------------------------------------------------------------------------------------------- default corpus
def default_corpus() -> list[str]:
    """The texts of the default corpus: Nutuk (one text, 1.69 M characters), read from the package."""
    return catalog.get(catalog.DEFAULT_TEXT).documents()


# ----------------------------------------------------------------------------------------------- user files
def resolve_inputs(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into a sorted list of text files; fail with a clear message otherwise."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        named = catalog.resolve_name(p)
        if named is not None:
            files.append(named)
            continue
        if not p.exists():
            raise UserError(f"input {p} does not exist; check the path (or name a corpus: {', '.join(catalog.CORPORA)})")
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
            if not found:
                raise UserError(
                    f"folder {p} has no text files ({', '.join(TEXT_SUFFIXES)}); pass a file or a folder of them"
                )
            files.extend(found)
        else:
            if p.stat().st_size == 0:
                raise UserError(f"input {p} is empty; pass a file with text in it")
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
