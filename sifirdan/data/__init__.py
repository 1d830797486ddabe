"""Data: corpora in (user files or the default corpus), token bins out.

The pipeline, one module per step (each module's docstring says why the step is there):

1. ``corpus``: read user files (text, jsonl, json, csv) or a named corpus (``catalog``: nutuk, nutuk-qa,
   ataturk; the bundled copies and their checksums) as documents.
2. ``dedup``: drop exact repeats of long lines, streamed (``DedupStats``).
3. ``split``: the last ``val_fraction`` of characters is validation (``standard_split``, ``iter_split_texts``).
4. ``bins``: tokenize each split once into cached ``train.bin`` / ``val.bin`` + ``meta.json`` (``prepare_bins``);
   bytes / chars per token and ``bits_per_unit``.
5. ``sampler``: random, resumable training windows (``BatchSampler``); ``eval_batches``: each split token once.

``config`` holds ``DataConfig``, which every step reads. Imports run one way: config <- dedup <- split <- bins,
and sampler <- eval_batches. ``IGNORE_INDEX`` is the loss's, from ``sifirdan.configs`` (data never imports
``sifirdan.model``).
"""

from sifirdan.data.bins import (
    TokenBins,
    bits_per_unit,
    bytes_per_token,
    chars_per_token,
    corpus_hash,
    default_cache_dir,
    prepare_bins,
)
from sifirdan.data.config import DataConfig
from sifirdan.data.corpus import (
    DEFAULT_CORPUS_NAME,
    default_corpus,
    iter_texts,
    read_text,
    resolve_inputs,
)
from sifirdan.data.dedup import DedupStats
from sifirdan.data.eval_batches import eval_windows, iter_eval_batches
from sifirdan.data.sampler import BatchSampler
from sifirdan.data.split import (
    iter_split_texts,
    iter_train_texts,
    standard_split,
    val_overlap,
)
from sifirdan.configs import IGNORE_INDEX

__all__ = [
    "DEFAULT_CORPUS_NAME",
    "IGNORE_INDEX",
    "BatchSampler",
    "DataConfig",
    "DedupStats",
    "TokenBins",
    "bits_per_unit",
    "bytes_per_token",
    "chars_per_token",
    "corpus_hash",
    "default_cache_dir",
    "default_corpus",
    "eval_windows",
    "iter_eval_batches",
    "iter_split_texts",
    "iter_texts",
    "iter_train_texts",
    "prepare_bins",
    "read_text",
    "resolve_inputs",
    "standard_split",
    "val_overlap",
]
