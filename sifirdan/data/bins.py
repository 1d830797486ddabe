"""Token bins: each split tokenized once into ``train.bin`` / ``val.bin`` + ``meta.json``, cached on disk by key.

Files: ``uint16`` ids when the vocabulary fits, else ``uint32``, under ``<cache root>/bins/<key>/`` where the key
hashes (corpus content, tokenizer fingerprint, data config). A second call with the same key reuses the files and
tokenizes nothing. The input is streamed twice (pass 1 counts characters after dedup to place the split, pass 2
tokenizes and appends to the growing files); the process holds one ~1 MiB block of input and a 256 Ki-char
chunk's tokens at a time. The files are built in a temporary folder and renamed into place.

Documents are separated by the tokenizer's ``<|endoftext|>`` id (so the model learns where a text ends and never
mistakes two speeches for one); a tokenizer without that token gets the text ``"\\n\\n"`` instead. Text that
merely *looks* like a special token is encoded as ordinary characters, so a document cannot inject control tokens.

Corpus hash: sha256 of every input file's raw bytes (streamed; ~1 s per GB), its suffix (which decides how it
is parsed) and its position in the sorted input list -- not its path or mtime, so moving or touching the corpus
keeps the cache and any edit invalidates it. A cache hit therefore reads the input once but tokenizes nothing.

Also here: bytes / characters per token of a split (from ``meta.json``) and ``bits_per_unit``, which turns a loss
in nats/token into bits per byte or per character with them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sifirdan.data.config import DataConfig
from sifirdan.data.catalog import default_cache_dir
from sifirdan.data.corpus import DEFAULT_CORPUS_NAME, default_corpus, resolve_inputs
from sifirdan.data.dedup import DedupStats, _iter_units
from sifirdan.data.split import (
    _CHUNK_CHARS,
    _FORCE_CHUNK_CHARS,
    TEXT_SEPARATOR,
    _as_list,
    _count_chars,
    _route,
    _utf8_len,
)
from sifirdan.errors import UserError
from sifirdan.fileio import atomic_directory

if TYPE_CHECKING:  # the data layer only needs encode / vocab_size / eot_id / fingerprint (duck typing)
    from sifirdan.tokenizer import BPETokenizer

FORMAT_VERSION = 1
_HASH_BLOCK = 1 << 20


# ================================================================================================ hashing / cache
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


def bits_per_unit(loss_nats_per_token: float, units_per_token: float | None) -> float | None:
    """Mean loss in nats/token -> bits per byte (pass ``bytes_per_token``) or per char (pass ``chars_per_token``).

    That is loss / ln 2 / (units per token). Unlike the loss, bits per byte does not depend on the tokenizer, so
    models with different vocabularies can be compared. None when ``units_per_token`` is None or 0 (not known) or
    the loss is not finite.
    """
    if not units_per_token or not math.isfinite(loss_nats_per_token):
        return None
    return loss_nats_per_token / math.log(2.0) / units_per_token


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

    from sifirdan import progress as progress_bars

    with atomic_directory(out) as tmp:
        bar = progress_bars.bar(dstats.chars_kept, "tokenizing", "char", enabled=progress, unit_scale=True)
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
