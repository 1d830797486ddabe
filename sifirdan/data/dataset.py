"""Pre-training data: dedup -> train/val split -> token bins on disk -> batches.

The pipeline, and why each step is there:

1. **Documents.** A plain text file is one continuous document (streamed in ~1 MiB pieces by
   ``corpus.iter_file_texts``). Every record of a ``.jsonl`` / ``.json`` / ``.csv`` file is a document, and so is
   every text of the default corpus. In the token bins, documents are separated by the tokenizer's
   ``<|endoftext|>`` id (so the model learns where a text ends and never mistakes two speeches for one); a
   tokenizer without that token gets the text ``"\\n\\n"`` instead. Text that merely *looks* like a special token
   is encoded as ordinary characters, so a document cannot inject control tokens.
2. **Exact-duplicate removal** (on by default). A line of at least ``dedup_min_chars`` characters after
   ``strip()`` that already occurred earlier in the corpus is dropped (with its newline); the first occurrence is
   kept, shorter lines are always kept. Nutuk repeats ~15 % of its text; without this, a third of the last-10 %
   validation split is a verbatim copy of training text and the val loss measures memorisation. The only state
   is a set of 8-byte hashes of the unique long lines seen, so memory grows with the number of *unique* lines,
   never with the corpus size.
3. **Split by characters** (after dedup): the last ``val_fraction`` of the document characters is validation.
   The cut is moved forward to the next line start so no line is shared by both splits (only when the last line
   of the corpus straddles the target is that line cut). Separators do not count as characters here, so the
   split point is the same whether documents are joined by ``<|endoftext|>`` or by ``"\\n\\n"``:
   ``standard_split`` (texts) and ``prepare_bins`` (tokens) always agree. Every benchmark reports on this split.
4. **Tokenize once** into ``train.bin`` / ``val.bin`` (``uint16`` when the vocabulary fits, else ``uint32``) plus
   ``meta.json``, under ``<cache root>/bins/<key>/`` where the key hashes (corpus content, tokenizer
   fingerprint, data config). A second call with the same key reuses the files and tokenizes nothing. The input
   is streamed twice (pass 1 counts characters after dedup to place the split, pass 2 tokenizes and appends to
   the growing files); the process holds one ~1 MiB block of input and a 256 Ki-char chunk's tokens at a time.
5. **Batches.** ``BatchSampler`` draws random windows (nanoGPT's ``get_batch``) from its own seeded
   ``torch.Generator``, with a JSON-serialisable ``state_dict`` so a resumed run continues bit-exactly.
   ``iter_eval_batches`` covers a split with non-overlapping windows, predicting every token once.

Corpus hash: sha256 of every input file's raw bytes (streamed; ~1 s per GB), its suffix (which decides how it
is parsed) and its position in the sorted input list -- not its path or mtime, so moving or touching the corpus
keeps the cache and any edit invalidates it. A cache hit therefore reads the input once but tokenizes nothing.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sifirdan.data.corpus import DEFAULT_CORPUS_NAME, default_corpus, iter_file_texts, resolve_inputs
from sifirdan.configs import check_types
from sifirdan.errors import UserError
from sifirdan.fileio import atomic_directory

if TYPE_CHECKING:  # the data layer only needs encode / vocab_size / eot_id / fingerprint (duck typing)
    from sifirdan.tokenizer import BPETokenizer

FORMAT_VERSION = 1
RECORD_SUFFIXES = (".jsonl", ".json", ".csv")  # each record is a document; other files are continuous text
IGNORE_INDEX = -100  # target id the loss skips: F.cross_entropy's default, and what sifirdan.model uses
TEXT_SEPARATOR = "\n\n"  # between documents when there is no <|endoftext|> token (and in standard_split)
# Text handed to the tokenizer at once, cut at a line start that cannot split a pre-token. 256 Ki chars keeps the
# transient lists (pre-tokens, ids: ~50 bytes per token as Python objects) near 10 MiB; larger is not faster.
_CHUNK_CHARS = 1 << 18
_FORCE_CHUNK_CHARS = 8 << 20  # hard cap on the buffer when no safe cut turns up (costs at most a split pre-token)
_HASH_BLOCK = 1 << 20


def _utf8_len(text: str) -> int:
    # surrogatepass: text read with --errors may hold lone surrogates; they count as the 3 bytes the tokenizer uses
    return len(text.encode("utf-8", "surrogatepass"))


# ================================================================================================ config
@dataclass
class DataConfig:
    """How raw text becomes train/val data. Every field is part of the token-bin cache key."""

    dedup: bool = True  # drop exact repeats of long lines (see module docstring)
    dedup_min_chars: int = 40  # only lines at least this long (after strip) are deduplicated
    val_fraction: float = 0.1  # the last this-fraction of characters is the validation split
    errors: str = "strict"  # invalid UTF-8: "strict" (fail with a message), "replace" or "ignore"
    text_field: str = "text"  # the field holding the text in jsonl / json / csv records

    def validate(self) -> DataConfig:
        check_types(self)
        vf = self.val_fraction
        if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not (0.0 < float(vf) < 1.0) or math.isnan(vf):
            raise UserError(f"val_fraction must be between 0 and 1 (exclusive), not {vf!r}; e.g. --val-fraction 0.1")
        n = self.dedup_min_chars
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(f"dedup_min_chars must be a positive integer, not {n!r}; e.g. --dedup-min-chars 40")
        if self.errors not in ("strict", "replace", "ignore"):
            raise UserError(f"--errors must be strict, replace or ignore, not {self.errors!r}")
        if not isinstance(self.text_field, str) or not self.text_field:
            raise UserError(f"text_field must be a non-empty field name, not {self.text_field!r}; e.g. --text-field text")
        if not isinstance(self.dedup, bool):
            raise UserError(f"dedup must be true or false, not {self.dedup!r}")
        return self


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


def _route(units: Iterable[str | None], n_chars: int, val_fraction: float) -> Iterator[tuple[int, str | None]]:
    """(split, unit) with split 0 = train, 1 = val: the last ``val_fraction`` of characters, from a line start."""
    target = n_chars - round(n_chars * val_fraction)  # index of the first val character
    pos = 0
    in_val = target <= 0
    for u in units:
        if u is None:
            yield int(in_val), None  # a separator stays with the text before it (eot ends the train split)
            continue
        n = len(u)
        if not in_val:
            if pos >= target:
                in_val = True
            elif pos + n > target and pos + n == n_chars:  # the last line straddles the target: cut it
                yield 0, u[: target - pos]
                yield 1, u[target - pos :]
                pos += n
                in_val = True
                continue
        yield int(in_val), u
        pos += n


def _count_chars(paths, cfg: DataConfig, progress: bool, desc: str) -> DedupStats:
    """Pass 1: the dedup statistics, including the number of characters kept (which places the split)."""
    from tqdm import tqdm

    stats = DedupStats()
    with tqdm(desc=desc, unit="char", unit_scale=True, disable=None if progress else True, leave=False) as bar:
        step = 0
        for u in _iter_units(paths, cfg, stats):
            if u is not None:
                step += len(u)
                if step >= _CHUNK_CHARS:
                    bar.update(step)
                    step = 0
        bar.update(step)
    if stats.chars_kept == 0:
        where = DEFAULT_CORPUS_NAME if paths is None else ", ".join(map(str, _as_list(paths)))
        raise UserError(f"the input ({where}) has no text; pass a file with some text in it")
    return stats


def _as_list(paths) -> list:
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


def standard_split(paths, cfg: DataConfig | None = None) -> tuple[str, str, dict]:
    """The project's standard split of a *small* corpus, as text: ``(train_text, val_text, stats)``.

    Dedup, then the last ``val_fraction`` of characters (from a line start) is val; documents are joined by
    ``"\\n\\n"``. ``paths=None`` is the default corpus. Holds the corpus in memory: for big inputs stream it with
    ``iter_split_texts`` instead (same split, same text). ``stats`` has the dedup counts and per-split sizes.
    """
    cfg = (cfg or DataConfig()).validate()
    dstats = DedupStats()
    units = list(_iter_units(paths, cfg, dstats))
    if dstats.chars_kept == 0:
        where = DEFAULT_CORPUS_NAME if paths is None else ", ".join(map(str, _as_list(paths)))
        raise UserError(f"the input ({where}) has no text; pass a file with some text in it")
    parts: tuple[list[str], list[str]] = ([], [])
    for split, u in _route(units, dstats.chars_kept, cfg.val_fraction):
        parts[split].append(TEXT_SEPARATOR if u is None else u)
    train, val = "".join(parts[0]), "".join(parts[1])
    # train + val is the whole deduplicated corpus (a separator at the cut stays at the end of train)
    stats = {
        "dedup": dataclasses.asdict(dstats),
        "train": {"n_chars": len(train), "n_bytes": _utf8_len(train)},
        "val": {"n_chars": len(val), "n_bytes": _utf8_len(val)},
        "source": DEFAULT_CORPUS_NAME if paths is None else [str(p) for p in _as_list(paths)],
    }
    return train, val, stats


def iter_split_texts(
    paths, cfg: DataConfig | None = None, split: str = "train", separator: str | None = None, progress: bool = False
) -> Iterator[str]:
    """Stream one split's text after dedup, in pieces of ~256 Ki chars (the streaming form of ``standard_split``).

    A document boundary always ends a piece; ``separator`` (e.g. ``"\\n\\n"``) is yielded between documents when
    given, so ``"".join(iter_split_texts(p, cfg, s, "\\n\\n"))`` equals that split of ``standard_split``. Two passes
    over the input (the first places the split); memory is one piece plus the dedup hash set.
    """
    if split not in ("train", "val"):
        raise UserError(f"split must be 'train' or 'val', not {split!r}")
    cfg = (cfg or DataConfig()).validate()
    want = 0 if split == "train" else 1
    total = _count_chars(paths, cfg, progress, "counting").chars_kept
    buf: list[str] = []
    size = 0
    for s, u in _route(_iter_units(paths, cfg, DedupStats()), total, cfg.val_fraction):
        if s != want:
            if s > want:
                break
            continue
        if u is None:
            if buf:
                yield "".join(buf)
                buf, size = [], 0
            if separator:
                yield separator
            continue
        if size >= _CHUNK_CHARS and (size >= _FORCE_CHUNK_CHARS or (u[:1] and not u[:1].isspace())):
            yield "".join(buf)
            buf, size = [], 0
        buf.append(u)
        size += len(u)
    if buf:
        yield "".join(buf)


def iter_train_texts(paths, cfg: DataConfig | None = None, progress: bool = False) -> Iterator[str]:
    """The train split's text for tokenizer training: a tokenizer trained on it never sees val text."""
    return iter_split_texts(paths, cfg, "train", separator=None, progress=progress)


def val_overlap(train_text: str, val_text: str, min_chars: int = 40) -> float:
    """Fraction of val lines of at least ``min_chars`` (stripped) characters that also occur in train."""
    train_lines = {ln.strip() for ln in train_text.split("\n") if len(ln.strip()) >= min_chars}
    val_lines = [ln.strip() for ln in val_text.split("\n") if len(ln.strip()) >= min_chars]
    if not val_lines:
        return 0.0
    return sum(ln in train_lines for ln in val_lines) / len(val_lines)


# ================================================================================================ hashing / cache
def default_cache_dir() -> Path:
    """``$SIFIRDAN_CACHE``, else ``~/.cache/sifirdan``."""
    env = os.environ.get("SIFIRDAN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sifirdan"


def corpus_hash(paths) -> str:
    """sha256 over the input's content (see the module docstring for what it covers and why)."""
    h = hashlib.sha256(b"sifirdan-corpus-v1\0")
    if paths is None:
        h.update(b"default\0")
        for text in default_corpus():
            data = text.encode("utf-8", "surrogatepass")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
        return h.hexdigest()
    for path in resolve_inputs(paths):
        h.update(b"file\0" + path.suffix.lower().encode("utf-8") + b"\0")
        h.update(path.stat().st_size.to_bytes(8, "little"))
        with open(path, "rb") as f:
            while block := f.read(_HASH_BLOCK):
                h.update(block)
    return h.hexdigest()


def _cache_key(corpus: str, tok_fp: str, cfg: DataConfig) -> str:
    desc = {"format": FORMAT_VERSION, "corpus": corpus, "tokenizer": tok_fp, "config": dataclasses.asdict(cfg)}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode("utf-8")).hexdigest()[:24]


def _dtype_for(vocab_size: int) -> np.dtype:
    # ids are 0 .. vocab_size - 1: uint16 holds vocabularies of up to 65536 ids at half the disk and page cache
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


# ================================================================================================ token bins
@dataclass
class TokenBins:
    """The tokenized splits: ``train`` / ``val`` are read-only memmaps of ids, ``meta`` the contents of meta.json."""

    train: np.ndarray
    val: np.ndarray
    meta: dict
    path: Path
    reused: bool = False  # True when the files came from the cache (nothing was tokenized)

    def split(self, name: str) -> np.ndarray:
        if name not in ("train", "val"):
            raise UserError(f"split must be 'train' or 'val', not {name!r}")
        return self.train if name == "train" else self.val

    def bytes_per_token(self, split: str = "val") -> float:
        return bytes_per_token(self.meta, split)

    def chars_per_token(self, split: str = "val") -> float:
        return chars_per_token(self.meta, split)

    def describe(self) -> str:
        """One line for the user: where the data came from, how big each split is, what dedup did."""
        m = self.meta
        tr, va = m["splits"]["train"], m["splits"]["val"]
        d = DedupStats(**m["dedup"])
        how = "reused cached bins" if self.reused else "tokenized"
        dedup = d.describe() if m["config"]["dedup"] else "dedup off"
        return (
            f"{how} {m['source_label']}: train {tr['n_tokens']:,} tokens ({tr['n_chars']:,} chars), "
            f"val {va['n_tokens']:,} tokens ({va['n_chars']:,} chars); {dedup}"
        )


def bytes_per_token(meta: dict, split: str = "val") -> float:
    """UTF-8 bytes per token of a split (``<|endoftext|>`` separators count as tokens with no bytes)."""
    s = meta["splits"][split]
    return s["n_bytes"] / max(s["n_tokens"], 1)


def chars_per_token(meta: dict, split: str = "val") -> float:
    s = meta["splits"][split]
    return s["n_chars"] / max(s["n_tokens"], 1)


def bits_per_unit(nats_per_token: float, units_per_token: float) -> float:
    """Mean loss in nats/token -> bits per byte (pass bytes_per_token) or per char (pass chars_per_token)."""
    return nats_per_token / (math.log(2) * units_per_token)


class _SplitWriter:
    """Appends one split's ids to ``<name>.bin``, tokenizing ``_CHUNK_CHARS`` of text at a time."""

    def __init__(self, path: Path, tokenizer, dtype: np.dtype, eot_id: int | None, bar):
        self.f = open(path, "wb")
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.eot_id = eot_id
        self.bar = bar
        self.buf: list[str] = []
        self.size = 0
        self.n_tokens = self.n_chars = self.n_bytes = self.n_docs_sep = 0

    def add_line(self, line: str) -> None:
        # Cut only before a line that starts with a non-space character: the pre-tokenizer never joins across
        # such a cut, so the ids equal those of tokenizing the whole split at once.
        if self.size >= _CHUNK_CHARS and (self.size >= _FORCE_CHUNK_CHARS or (line[:1] and not line[:1].isspace())):
            self.flush()
        self.buf.append(line)
        self.size += len(line)
        self.bar.update(len(line))

    def add_separator(self) -> None:
        self.n_docs_sep += 1
        if self.eot_id is None:
            self.buf.append(TEXT_SEPARATOR)
            self.size += len(TEXT_SEPARATOR)
            return
        self.flush()
        self._write([self.eot_id])

    def _write(self, ids) -> None:
        arr = np.asarray(ids, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= np.iinfo(self.dtype).max + 1):
            raise AssertionError("token id does not fit the bin dtype")  # the tokenizer broke its vocab_size
        self.f.write(arr.astype(self.dtype).tobytes())
        self.n_tokens += int(arr.size)

    def flush(self) -> None:
        if not self.buf:
            return
        text = "".join(self.buf)
        self.buf, self.size = [], 0
        self.n_chars += len(text)
        self.n_bytes += _utf8_len(text)
        self._write(self.tokenizer.encode(text))

    def close(self) -> dict:
        self.flush()
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        return {"n_tokens": self.n_tokens, "n_chars": self.n_chars, "n_bytes": self.n_bytes}


def _open_bin(path: Path, dtype: np.dtype, n_tokens: int) -> np.ndarray:
    if n_tokens == 0:  # np.memmap cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n_tokens,))


def _load_cached(path: Path, key: str) -> TokenBins | None:
    """The bins under ``path`` if complete and made for ``key``; None means (re)build them."""
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_VERSION or meta.get("key") != key:
            return None
        dtype = np.dtype(meta["dtype"])
        arrays = {}
        for name in ("train", "val"):
            n = int(meta["splits"][name]["n_tokens"])
            f = path / f"{name}.bin"
            if f.stat().st_size != n * dtype.itemsize:
                return None
            arrays[name] = _open_bin(f, dtype, n)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return TokenBins(train=arrays["train"], val=arrays["val"], meta=meta, path=path, reused=True)


def prepare_bins(
    paths,
    tokenizer: BPETokenizer,
    cfg: DataConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    known_corpus_hash: str | None = None,
) -> TokenBins:
    """Tokenize the corpus once into ``<cache_dir>/bins/<key>/{train,val}.bin`` + ``meta.json``; reuse it after.

    ``paths``: a file, a folder, or a list of them; ``None`` -> the default corpus (``meta['source_label']`` says
    so: print ``bins.describe()``). ``cache_dir`` is the cache root (default ``default_cache_dir()``). The key
    covers the corpus content, ``tokenizer.fingerprint()`` and ``cfg``; the files are built in a temporary folder
    and renamed into place, so an interrupted run leaves nothing half-written. ``known_corpus_hash``: the
    caller already computed ``corpus_hash(paths)`` (it reads the whole input; no need to do that twice).
    """
    cfg = (cfg or DataConfig()).validate()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    c_hash = known_corpus_hash or corpus_hash(paths)
    tok_fp = tokenizer.fingerprint()
    key = _cache_key(c_hash, tok_fp, cfg)
    out = root / "bins" / key
    cached = _load_cached(out, key)
    if cached is not None:
        return cached

    t0 = time.perf_counter()
    dstats = _count_chars(paths, cfg, progress, "dedup + count")  # pass 1
    vocab_size = int(tokenizer.vocab_size)
    dtype = _dtype_for(vocab_size)
    eot_id = getattr(tokenizer, "eot_id", None)
    source_label = DEFAULT_CORPUS_NAME if paths is None else ", ".join(str(p) for p in _as_list(paths))

    from tqdm import tqdm

    with atomic_directory(out) as tmp:
        bar = tqdm(total=dstats.chars_kept, desc="tokenizing", unit="char", unit_scale=True, disable=None if progress else True)
        writers = [_SplitWriter(tmp / f"{name}.bin", tokenizer, dtype, eot_id, bar) for name in ("train", "val")]
        check = DedupStats()
        try:
            for split, u in _route(_iter_units(paths, cfg, check), dstats.chars_kept, cfg.val_fraction):  # pass 2
                if u is None:
                    writers[split].add_separator()
                else:
                    writers[split].add_line(u)
            splits = {name: w.close() for name, w in zip(("train", "val"), writers)}
        finally:
            for w in writers:
                if not w.f.closed:
                    w.f.close()
            bar.close()
        if check.chars_kept != dstats.chars_kept:
            raise UserError(f"the input ({source_label}) changed while it was being read; run the command again")
        for name, s in splits.items():
            if s["n_tokens"] == 0:
                raise UserError(
                    f"the {name} split is empty ({dstats.chars_kept:,} characters after dedup with val_fraction "
                    f"{cfg.val_fraction}); give more text or change --val-fraction"
                )
        meta = {
            "format": FORMAT_VERSION,
            "key": key,
            "source": None if paths is None else [str(p) for p in _as_list(paths)],
            "source_label": source_label,
            "corpus_hash": c_hash,
            "tokenizer_fingerprint": tok_fp,
            "vocab_size": vocab_size,
            "dtype": dtype.name,
            "separator": "eot" if eot_id is not None else TEXT_SEPARATOR,
            "eot_id": eot_id,
            "config": dataclasses.asdict(cfg),
            "dedup": dataclasses.asdict(dstats),
            "splits": splits,
            "seconds": round(time.perf_counter() - t0, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    arrays = {name: _open_bin(out / f"{name}.bin", dtype, meta["splits"][name]["n_tokens"]) for name in ("train", "val")}
    return TokenBins(train=arrays["train"], val=arrays["val"], meta=meta, path=out, reused=False)


# ================================================================================================ batches
def check_length(data, block_size: int, name: str) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise UserError(f"block_size must be a positive integer, not {block_size!r}; e.g. --block-size 128")
    n = len(data)
    if n < block_size + 1:
        raise UserError(
            f"the {name} split has {n:,} tokens, fewer than block_size + 1 = {block_size + 1}; "
            "lower --block-size or give more text"
        )
    return n


def _gather(data, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows data[s : s + T + 1] for each start -> x (B, T) and y = x shifted by one (B, T), int64."""
    idx = starts[:, None] + np.arange(block_size + 1)[None, :]  # (B, T+1)
    if isinstance(data, np.memmap) and data.filename is not None:
        # Read through a fresh mapping that is dropped right after (nanoGPT does the same): pages touched by
        # random windows would otherwise stay mapped and count in the process's RSS, which then grows with the
        # corpus over a long run. The OS page cache still keeps hot pages, so this costs one mmap per batch.
        view = np.memmap(data.filename, dtype=data.dtype, mode="r", offset=data.offset, shape=data.shape)
        rows = np.asarray(view[idx], dtype=np.int64)
        del view
    else:
        rows = np.asarray(data[idx], dtype=np.int64)
    buf = torch.from_numpy(rows)  # one fancy-index read
    # clone, not contiguous(): with one row the slices are already contiguous and x, y would share memory
    return buf[:, :-1].clone(), buf[:, 1:].clone()


def _derive_seed(seed: int, rank: int) -> int:
    # a hash, not seed + rank: runs with seeds 1 and 2 must not share a stream between rank 1 and rank 0
    digest = hashlib.sha256(f"sifirdan-batches:{seed}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class BatchSampler:
    """Random training windows (nanoGPT's get_batch) from a token array, reproducible and resumable.

    Each rank draws from its own ``torch.Generator`` seeded from (seed, rank), so ranks read different windows.
    ``state_dict()`` is plain JSON (the generator state as base64), so a checkpoint holds no pickle; after
    ``load_state_dict`` the next batches are bit-identical to those the original run would have drawn.
    """

    def __init__(
        self,
        data: np.ndarray,
        batch_size: int,
        block_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        name: str = "train",
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size must be a positive integer, not {batch_size!r}; e.g. --batch-size 32")
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise UserError(f"rank {rank!r} is not in 0..world_size-1 (world_size {world_size!r}); check the launcher")
        self.n = check_length(data, block_size, name)
        self.data = data
        self.batch_size = batch_size
        self.block_size = block_size
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.batches = 0  # drawn so far (for logs and sanity checks on resume)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(_derive_seed(self.seed, rank))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), both int64 (batch_size, block_size) on the CPU; y[b, t] is the token after x[b, t]."""
        starts = torch.randint(self.n - self.block_size, (self.batch_size,), generator=self.generator).numpy()
        self.batches += 1
        return _gather(self.data, starts, self.block_size)

    def state_dict(self) -> dict[str, Any]:
        state = self.generator.get_state().numpy().tobytes()
        return {
            "version": 1,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "block_size": self.block_size,
            "n_tokens": self.n,
            "batches": self.batches,
            "generator": base64.b64encode(state).decode("ascii"),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("version") != 1 or not isinstance(state.get("generator"), str):
            raise UserError("the batch sampler state in this checkpoint is not recognised; resume from a sifirdan checkpoint")
        if state["rank"] != self.rank:
            raise UserError(f"this checkpoint's sampler state is for rank {state['rank']}, not rank {self.rank}; load each rank's own state")
        if state["n_tokens"] != self.n:
            raise UserError(
                f"the training data changed since the checkpoint ({state['n_tokens']:,} tokens then, {self.n:,} now); "
                "resume with the same data and tokenizer, or start a new run"
            )
        raw = np.frombuffer(base64.b64decode(state["generator"]), dtype=np.uint8).copy()
        self.generator.set_state(torch.from_numpy(raw))
        self.seed = int(state["seed"])
        self.batches = int(state["batches"])


def eval_windows(n_tokens: int, block_size: int) -> int:
    """How many windows ``iter_eval_batches`` yields for a split of ``n_tokens`` tokens."""
    return math.ceil((n_tokens - 1) / block_size)


def iter_eval_batches(
    data: np.ndarray, batch_size: int, block_size: int, name: str = "val"
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Cover a split once: every token after the first is a target exactly once.

    Windows start at 0, T, 2T, ... (no overlap, so no token is scored twice). When ``n - 1`` is not a multiple of
    T, the last window is the final T tokens of the split -- full context rather than a short stub -- and its
    targets already scored by the previous window are set to ``IGNORE_INDEX`` (-100, which the model's loss
    skips). Batches hold ``batch_size`` windows (the last one fewer). For an exact mean, weight each batch's
    mean loss by ``(y != IGNORE_INDEX).sum()``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, not {batch_size!r}; e.g. --batch-size 32")
    n = check_length(data, block_size, name)
    T = block_size
    full = (n - 1) // T
    tail = (n - 1) - full * T  # targets left after the full windows
    starts = np.arange(full, dtype=np.int64) * T
    if tail:
        starts = np.append(starts, n - 1 - T)
    for b in range(0, len(starts), batch_size):
        chunk = starts[b : b + batch_size]
        x, y = _gather(data, chunk, T)
        if tail and b + len(chunk) == len(starts):
            y[-1, : T - tail] = IGNORE_INDEX
        yield x, y
