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
"""

from __future__ import annotations

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

DEFAULT_PATTERN = TURKISH_PATTERN
