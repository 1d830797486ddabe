"""Pre-tokenization: the regex that cuts text into pieces before BPE sees it.

BPE never merges across two pieces, so the pattern decides what a token *can* be. Ours is the GPT-4
(cl100k) pattern adapted to Turkish:

* An apostrophe suffix is always its own piece: ``Ankara'da`` -> ``Ankara | 'da``, ``Türkiye'nin`` ->
  ``Türkiye | 'nin``. (GPT-4's English contraction rule ``'(?i:[sdmt]|ll|ve|re)`` splits the first as
  ``Ankara | 'd | a`` and the second as ``Türkiye | 'nin``: the same suffix is cut differently depending on
  which letter it starts with.) Both the ASCII ``'`` and the typographic ``’`` count.
* Combining marks (``\\p{M}``) belong to the letters they decorate (``a`` + U+0302 stays one piece).
* Digits come in groups of at most three (``1919`` -> ``191 | 9``), so numbers cannot eat the vocabulary.
* Whitespace is spelled out as the Unicode ``White_Space`` set instead of ``\\s``: Python's ``regex`` and
  Oniguruma (the engine inside Hugging Face ``tokenizers``) then agree on every character, so both give the
  same pieces and the same ids. ``\\x1c``-``\\x1f`` are *not* whitespace here (they are in ``str.isspace``).

Every character of any text is matched by some alternative, so joining the pieces gives the text back.

A foreign pattern need not do that: a Hugging Face ``Split(Regex, behavior="Isolated")`` keeps the text
*between* matches as pieces too (``\\w+`` cuts ``"a, b"`` into ``a | ", " | b``). ``make_splitter`` does the
same for any pattern, and keeps plain ``findall`` for the patterns below, which match every character.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import regex

# Unicode White_Space (PropList.txt), written out so that both regex engines use the same set.
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_S = f"[{WHITESPACE}]"
_NOT_S = f"[^{WHITESPACE}]"

TURKISH_PATTERN = "|".join(
    [
        r"['’][\p{L}\p{M}]+",  # apostrophe suffix: 'da  'nin  ’ın
        r"[^\r\n\p{L}\p{N}\p{M}]?[\p{L}\p{M}]+",  # a word, with one leading space or punctuation mark
        r"\p{N}{1,3}",  # digits, in groups of up to three
        rf" ?[^{WHITESPACE}\p{{L}}\p{{N}}\p{{M}}]+[\r\n]*",  # punctuation / symbols / emoji
        rf"{_S}*[\r\n]+",  # whitespace that ends in line breaks
        rf"{_S}+(?!{_NOT_S})",  # whitespace, leaving the last space to the next word
        rf"{_S}+",
    ]
)

# The GPT-4 (tiktoken cl100k_base) pattern, for comparison in the benchmark.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

# GPT-2's pattern: what a Hugging Face ByteLevel pre-tokenizer with use_regex=true applies.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# llama.cpp's "ufakzeka" pre-tokenizer (``tokenizer.ggml.pre = "ufakzeka"``, src/llama-vocab.cpp), the Qwen2
# pattern without English contractions: a Turkish apostrophe suffix stays one piece ('da, 'nin), as in ours.
# It differs from ours in two places: digits are cut one by one (``1919`` -> ``1 | 9 | 1 | 9``, ours:
# ``191 | 9``), and a combining mark is not part of a word. A tokenizer trained with it (`sifirdan tokenizer
# train --pre-tokenizer llama.cpp`) is split by llama.cpp exactly as by sifirdan; GGUF_PRE names llama.cpp's.
LLAMACPP_TURKISH_PATTERN = r"""[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

DEFAULT_PATTERN = TURKISH_PATTERN

# `--pre-tokenizer NAME` -> pattern
PRE_TOKENIZERS = {"turkish": TURKISH_PATTERN, "llama.cpp": LLAMACPP_TURKISH_PATTERN}


# Patterns known to match every character of every text with no empty match, so that ``findall`` alone
# already yields HF's Isolated pieces (tests/test_tokenizer_hardening.py checks it against the general path).
COVERING_PATTERNS = frozenset({TURKISH_PATTERN, GPT4_PATTERN, GPT2_PATTERN, LLAMACPP_TURKISH_PATTERN})


def make_splitter(pattern: str) -> Callable[[str], list[str]]:
    """text -> the pieces Hugging Face's ``Split(pattern, behavior="Isolated")`` makes of it.

    Decided once per pattern, so the common case stays a bare ``findall`` (no Python work per piece).
    """
    compiled = regex.compile(pattern)
    if pattern in COVERING_PATTERNS:
        return compiled.findall
    return partial(split_isolated, compiled)


def split_isolated(compiled: regex.Pattern, text: str) -> list[str]:
    """Every match is a piece, and so is every non-empty stretch of text before, between and after them.

    Empty matches give no piece but still cut the text around them, as in HF. (A pattern with groups also
    works: ``findall`` would return the groups, this keeps whole matches.)
    """
    pieces = []
    prev = 0
    for m in compiled.finditer(text):
        start, end = m.span()
        if start == end:
            # Python and Oniguruma disagree on where to search after an empty match, so do it HF's way
            return _split_isolated_like_oniguruma(compiled, text)
        if start != prev:
            pieces.append(text[prev:start])
        pieces.append(text[start:end])
        prev = end
    if prev != len(text):
        pieces.append(text[prev:])
    return pieces


def _split_isolated_like_oniguruma(compiled: regex.Pattern, text: str) -> list[str]:
    """``split_isolated`` with the match loop of the ``onig`` crate that HF uses.

    After an empty match Python's ``finditer`` searches again *at the same position* for a non-empty match
    (``|ab`` on "abc" gives "", "ab"), while onig refuses an empty match where the last match ended and moves
    on one character (giving "a", "b", "c"). Only patterns that can match empty get here.
    """
    pieces = []
    n = len(text)
    prev = pos = 0
    last_end = -1
    while pos <= n:
        m = compiled.search(text, pos)
        if m is None:
            break
        start, end = m.span()
        if start == end == last_end:
            pos += 1
            continue
        pos = last_end = end
        if start != prev:
            pieces.append(text[prev:start])
        if end != start:
            pieces.append(text[start:end])
        prev = end
    if prev != n:
        pieces.append(text[prev:])
    return pieces
