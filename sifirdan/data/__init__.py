"""Data: corpora in (user files or the default corpus), token bins out."""

from sifirdan.data.corpus import (
    DEFAULT_CORPUS_NAME,
    default_corpus,
    default_corpus_records,
    iter_texts,
    read_text,
    resolve_inputs,
)

__all__ = [
    "DEFAULT_CORPUS_NAME",
    "default_corpus",
    "default_corpus_records",
    "iter_texts",
    "read_text",
    "resolve_inputs",
]
