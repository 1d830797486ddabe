"""The train/val split: the last ``val_fraction`` of the deduplicated characters, from a line start, is validation.

The cut is moved forward to the next line start so no line is shared by both splits (only when the last line of
the corpus straddles the target is that line cut). Separators do not count as characters here, so the split point
is the same whether documents are joined by ``<|endoftext|>`` or by ``"\\n\\n"``: ``standard_split`` (texts, in
memory), ``iter_split_texts`` (texts, streamed) and ``prepare_bins`` (tokens, ``bins.py``) always agree. Every
benchmark reports on this split; ``iter_train_texts`` feeds tokenizer training so a tokenizer never sees val text,
and ``val_overlap`` measures how much val text also occurs in train.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator

from sifirdan.data.config import DataConfig
from sifirdan.data.corpus import DEFAULT_CORPUS_NAME
from sifirdan.data.dedup import DedupStats, _iter_units
from sifirdan.errors import UserError

TEXT_SEPARATOR = "\n\n"  # between documents when there is no <|endoftext|> token (and in standard_split)
# Text handed to the tokenizer at once, cut at a line start that cannot split a pre-token. 256 Ki chars keeps the
# transient lists (pre-tokens, ids: ~50 bytes per token as Python objects) near 10 MiB; larger is not faster.
_CHUNK_CHARS = 1 << 18
_FORCE_CHUNK_CHARS = 8 << 20  # hard cap on the buffer when no safe cut turns up (costs at most a split pre-token)
# bins.py imports both for its tokenizer chunks: a test that patches them patches each module's own copy.


def _utf8_len(text: str) -> int:
    # surrogatepass: text read with --errors may hold lone surrogates; they count as the 3 bytes the tokenizer uses
    return len(text.encode("utf-8", "surrogatepass"))


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
    """The project's standard split of a *small* corpus, as text. Returns three values, not two::

        train_text, val_text, stats = standard_split("nutuk.txt")

    Dedup, then the last ``val_fraction`` of characters (from a line start) is val; documents are joined by
    ``"\\n\\n"``. ``paths=None`` is the default corpus. Holds the corpus in memory: for big inputs stream it with
    ``iter_split_texts`` instead (same split, same text). ``stats`` is a dict: ``"dedup"`` (the ``DedupStats``
    counts as a dict), ``"train"`` and ``"val"`` (each ``{"n_chars", "n_bytes"}``) and ``"source"`` (the paths
    as strings, or the default corpus's name).
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
