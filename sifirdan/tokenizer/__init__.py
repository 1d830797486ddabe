"""Byte-level BPE tokenizer: train on your text, encode/decode, save as a Hugging Face tokenizer.json.

    from sifirdan.tokenizer import BPETokenizer
    tok = BPETokenizer.train(open("nutuk.txt").read(), vocab_size=8192)
    ids = tok.encode("Ankara'da toplandık.")
    tok.decode(ids)             # "Ankara'da toplandık."
    tok.save("tokenizer.json")  # also loads in Hugging Face tokenizers / transformers

This package must not import ``sifirdan.data`` (data imports the tokenizer).
"""

from sifirdan.tokenizer.base import DEFAULT_SPECIAL_TOKENS, EOT, Tokenizer
from sifirdan.tokenizer.bpe import BPETokenizer
from sifirdan.tokenizer.pattern import DEFAULT_PATTERN, GPT4_PATTERN, TURKISH_PATTERN


def load_tokenizer(path) -> BPETokenizer:
    """Load a tokenizer.json (or a folder holding one)."""
    return BPETokenizer.load(path)


__all__ = [
    "BPETokenizer",
    "Tokenizer",
    "DEFAULT_SPECIAL_TOKENS",
    "EOT",
    "DEFAULT_PATTERN",
    "TURKISH_PATTERN",
    "GPT4_PATTERN",
    "load_tokenizer",
]
