"""Exact-duplicate removal: the corpus streamed as documents and lines, with repeats of long lines dropped.

Documents: a plain text file is one continuous document (streamed in ~1 MiB pieces by
``corpus.iter_file_texts``). Every record of a ``.jsonl`` / ``.json`` / ``.csv`` file is a document, and so is
every text of the default corpus.

Dedup (on by default): a line of at least ``dedup_min_chars`` characters after ``strip()`` that already occurred
earlier in the corpus is dropped (with its newline); the first occurrence is kept, shorter lines are always kept.
Nutuk repeats ~15 % of its text; without this, a third of the last-10 % validation split is a verbatim copy of
training text and the val loss measures memorisation. The only state is a set of 8-byte hashes of the unique
long lines seen, so memory grows with the number of *unique* lines, never with the corpus size.

The output, ``_iter_units``, is the stream the split (``split.py``) and the bins (``bins.py``) consume: lines, and
``None`` between two documents that kept some text. ``DedupStats`` counts what it saw and removed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from sifirdan.data.config import DataConfig
from sifirdan.data.corpus import default_corpus, iter_file_texts, resolve_inputs

RECORD_SUFFIXES = (".jsonl", ".json", ".csv")  # each record is a document; other files are continuous text


@dataclass
class DedupStats:
    """What the dedup step saw and removed (characters are document characters, separators excluded)."""

    documents: int = 0
    lines: int = 0
    chars: int = 0  # before dedup
    lines_removed: int = 0
    chars_removed: int = 0
    unique_long_lines: int = 0  # size of the hash set: the only memory that grows with the corpus

    @property
    def chars_kept(self) -> int:
        return self.chars - self.chars_removed

    def describe(self) -> str:
        pct = 100.0 * self.chars_removed / max(self.chars, 1)
        return (
            f"dedup removed {self.lines_removed:,} of {self.lines:,} lines "
            f"({self.chars_removed:,} of {self.chars:,} chars, {pct:.1f}%)"
        )


# ================================================================================================ streaming text
def _iter_pieces(paths, cfg: DataConfig) -> Iterator[tuple[bool, str]]:
    """(starts_a_document, piece): pieces of the input in order; None -> the default corpus."""
    if paths is None:
        for text in default_corpus():
            yield True, text
        return
    for path in resolve_inputs(paths):
        if path.suffix.lower() in RECORD_SUFFIXES:
            for text in iter_file_texts(path, errors=cfg.errors, text_field=cfg.text_field):
                yield True, text
        else:
            first = True
            for piece in iter_file_texts(path, errors=cfg.errors, text_field=cfg.text_field):
                yield first, piece
                first = False
            if first:  # an empty file is still a (empty) document
                yield True, ""


def _iter_raw_lines(paths, cfg: DataConfig, stats: DedupStats) -> Iterator[tuple[bool, str]]:
    """(starts_a_document, line): every line with its "\\n" (a document's last line may lack one)."""
    partial = ""  # a line cut by a piece boundary (corpus.py cuts after newlines, but don't rely on it)
    doc_start = False
    for new_doc, piece in _iter_pieces(paths, cfg):
        if new_doc:
            if partial:
                yield doc_start, partial
                partial = ""
            stats.documents += 1
            doc_start = True
        lines = piece.split("\n")  # only "\n": str.splitlines also cuts at \r, \x1c, U+2028 ...
        lines[0] = partial + lines[0]
        partial = lines.pop()
        for line in lines:
            yield doc_start, line + "\n"
            doc_start = False
    if partial:
        yield doc_start, partial


def _iter_units(paths, cfg: DataConfig, stats: DedupStats) -> Iterator[str | None]:
    """The deduplicated stream: lines, and ``None`` between two documents that kept some text."""
    cfg.validate()
    seen: set[bytes] = set()
    min_chars = cfg.dedup_min_chars
    any_text = False
    pending_sep = False
    for doc_start, line in _iter_raw_lines(paths, cfg, stats):
        stats.lines += 1
        stats.chars += len(line)
        if doc_start and any_text:
            pending_sep = True
        if cfg.dedup:
            key = line.strip()
            if len(key) >= min_chars:
                h = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
                if h in seen:
                    stats.lines_removed += 1
                    stats.chars_removed += len(line)
                    continue
                seen.add(h)
        if pending_sep:  # emitted lazily: a document whose every line was a duplicate leaves no separator
            yield None
            pending_sep = False
        yield line
        any_text = True
    stats.unique_long_lines = len(seen)
