"""``BPETokenizer``: a byte-level BPE tokenizer you can train on your own text."""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Iterable

import regex

from sifirdan.errors import UserError
from sifirdan.tokenizer.base import DEFAULT_SPECIAL_TOKENS, Tokenizer, text_to_bytes, validate_special_tokens
from sifirdan.tokenizer.naive import learn_merges_naive
from sifirdan.tokenizer.pattern import DEFAULT_PATTERN, make_splitter
from sifirdan.tokenizer.train import learn_merges


def count_pieces(texts: Iterable[str], pattern: str = DEFAULT_PATTERN) -> Counter:
    """Pre-tokenize a stream of texts and count each distinct piece (the only table training keeps).

    The pieces are exactly the ones ``encode`` cuts (the same ``make_splitter``), so a pattern that leaves
    gaps between its matches trains on those gaps too instead of on text the tokenizer never sees."""
    split = make_splitter(pattern)
    counts: Counter = Counter()
    for text in texts:
        if not isinstance(text, str):
            raise UserError(f"training texts must be str, got {type(text).__name__}; decode bytes first")
        counts.update(split(text))
    return counts


# Token bins store ids as uint32, and a vocabulary this large has no text left to learn merges from anyway;
# the bound keeps a typo (--vocab-size 100000000000000000000) from reaching the C core's size_t.
MAX_VOCAB_SIZE = 1 << 24


def check_train_args(vocab_size, special_tokens=None) -> list[str]:
    """The checks of ``BPETokenizer.train``'s arguments, callable before any text is read; returns the
    special tokens (``None`` -> ``DEFAULT_SPECIAL_TOKENS``)."""
    specials = validate_special_tokens(DEFAULT_SPECIAL_TOKENS if special_tokens is None else special_tokens)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise UserError(f"vocab_size must be an integer, not {vocab_size!r}")
    minimum = 256 + len(specials)
    if vocab_size > MAX_VOCAB_SIZE:
        raise UserError(f"vocab_size {vocab_size:,} is larger than any BPE vocabulary needs (at most "
                        f"{MAX_VOCAB_SIZE:,}); pass e.g. --vocab-size 8192")
    if vocab_size < minimum:
        raise UserError(
            f"vocab_size {vocab_size} is too small: 256 byte tokens + {len(specials)} special tokens need at "
            f"least {minimum}; pass --vocab-size {minimum} or more"
        )
    return specials


class BPETokenizer(Tokenizer):
    """Byte-level BPE: 256 byte tokens + learned merges + special tokens; never an unknown token."""

    # set by train(): what happened (read by the CLI and the benchmark)
    train_stats: dict | None = None

    @classmethod
    def train(
        cls,
        text_or_texts: str | Iterable[str],
        vocab_size: int,
        special_tokens: Iterable[str] | None = None,
        pattern: str | None = None,
        verbose: bool = False,
        backend: str = "auto",
    ) -> BPETokenizer:
        """Learn a tokenizer with ``vocab_size`` ids (256 bytes + merges + special tokens).

        ``text_or_texts`` is one string or any iterable of strings (streamed: only the table of distinct
        pre-tokens is held). Each text is pre-tokenized on its own, so training on ``[a, b]`` equals training
        on ``a + b`` whenever the cut between them is one the pattern also makes -- e.g. ``a`` ends with a
        newline and ``b`` starts with a non-space character (that is how ``iter_texts`` cuts files).
        ``special_tokens=None`` adds ``DEFAULT_SPECIAL_TOKENS``; ``[]`` adds none. If the text runs out of
        pairs before ``vocab_size`` is reached, training stops with a warning and returns the smaller
        tokenizer. ``backend`` picks the trainer (all learn the same merges): "auto" (the C core if built,
        else "python"), "c", "python" (the heap-based ``train.learn_merges``) or "naive" (``naive.py``, the
        guide's algorithm that recounts every pair after each merge: O(merges x corpus), for learning and
        small texts only).
        """
        specials = check_train_args(vocab_size, special_tokens)
        core = _train_backend(backend)  # before reading any text: a wrong name fails at once
        pattern = DEFAULT_PATTERN if pattern is None else pattern
        try:
            regex.compile(pattern)
        except regex.error as e:
            raise UserError(f"the pre-tokenizer pattern does not compile ({e}); fix the regex") from None
        t0 = time.perf_counter()
        texts = [text_or_texts] if isinstance(text_or_texts, str) else text_or_texts
        n_chars = 0

        def counted(it):
            nonlocal n_chars
            for t in it:
                if isinstance(t, str):
                    n_chars += len(t)
                yield t

        pieces = count_pieces(counted(texts), pattern)
        if not pieces:
            raise UserError("the training text is empty; pass a file with some text in it")
        words = [text_to_bytes(p) for p in pieces]
        freqs = list(pieces.values())
        t_count = time.perf_counter() - t0

        target = vocab_size - len(specials)
        bar = None
        progress = None
        if verbose:
            from sifirdan import progress as progress_bars

            bar = progress_bars.bar(target - 256, "BPE merges", "merge", leave=False)
            progress = bar.update
        try:
            merges = core(words, freqs, target, progress)
        finally:
            if bar is not None:
                bar.close()
        vocab = {i: bytes([i]) for i in range(256)}
        for a, b, new in merges:
            vocab.setdefault(new, vocab[a] + vocab[b])
        reached = len(vocab)
        if reached < target:
            warnings.warn(
                f"the training text has no more pairs to merge: stopped at vocab size {reached + len(specials)} "
                f"instead of {vocab_size}",
                stacklevel=2,
            )
        tok = cls(vocab=vocab, merges=merges, special_tokens={s: reached + k for k, s in enumerate(specials)}, pattern=pattern)
        fast = tok._fast_core()
        bpe = fast.encode if fast is not None else tok._bpe
        n_tokens = sum(f * len(bpe(w)) for w, f in zip(words, freqs))  # exact: encoding is per piece
        tok.train_stats = {
            "chars": n_chars,
            "pieces": sum(freqs),
            "unique_pieces": len(words),
            "merges": len(merges),
            "vocab_size": tok.vocab_size,
            "requested_vocab_size": vocab_size,
            "chars_per_token": n_chars / max(n_tokens, 1),
            "seconds_counting": t_count,
            "seconds": time.perf_counter() - t0,
            "backend": {learn_merges: "python", learn_merges_naive: "naive"}.get(core, "c"),
        }
        return tok


TRAIN_BACKENDS = ("auto", "c", "python", "naive")


def _train_backend(backend: str):
    """The merge learner for ``backend`` (one of ``TRAIN_BACKENDS``)."""
    if backend not in TRAIN_BACKENDS:
        raise UserError(f"unknown training backend {backend!r}; pick one of {', '.join(TRAIN_BACKENDS)}")
    if backend == "python":
        return learn_merges
    if backend == "naive":
        return learn_merges_naive
    try:
        from sifirdan.tokenizer import _fastbpe
    except ImportError:
        if backend == "c":
            raise UserError("the C core sifirdan.tokenizer._fastbpe is not built; run `pip install -e .` (needs a C compiler)") from None
        return learn_merges
    return _fastbpe.learn_merges
