"""Compatibility module: the old one-file home of the data pipeline, kept so ``sifirdan.data.dataset`` imports work.

The code now lives in one module per concern (see ``sifirdan.data``): ``config`` (DataConfig), ``dedup``,
``split``, ``bins``, ``sampler``, ``eval_batches``. This module defines nothing; it re-exports every name the old
module had, so ``from sifirdan.data.dataset import ...`` keeps working. New code imports from ``sifirdan.data`` or
from the module named after the step.

Not re-exported: the tuning constants ``_CHUNK_CHARS``, ``_FORCE_CHUNK_CHARS`` (``split``, copied by ``bins``) and
``_HASH_BLOCK`` (``bins``). Setting a copy here would change nothing, so patching one here fails loudly instead;
patch it in the module that reads it.
"""

from sifirdan.data.bins import (
    FORMAT_VERSION,
    TokenBins,
    _cache_key,
    _dtype_for,
    _load_cached,
    _open_bin,
    _SplitWriter,
    bits_per_unit,
    bytes_per_token,
    chars_per_token,
    corpus_hash,
    default_cache_dir,
    prepare_bins,
)
from sifirdan.data.config import DataConfig
from sifirdan.data.dedup import (
    RECORD_SUFFIXES,
    DedupStats,
    _iter_pieces,
    _iter_raw_lines,
    _iter_units,
)
from sifirdan.data.eval_batches import eval_windows, iter_eval_batches
from sifirdan.data.sampler import BatchSampler, _derive_seed, _gather, check_length
from sifirdan.data.split import (
    TEXT_SEPARATOR,
    _as_list,
    _count_chars,
    _route,
    _utf8_len,
    iter_split_texts,
    iter_train_texts,
    standard_split,
    val_overlap,
)
from sifirdan.model.gpt import IGNORE_INDEX

__all__ = [
    "FORMAT_VERSION",
    "IGNORE_INDEX",
    "RECORD_SUFFIXES",
    "TEXT_SEPARATOR",
    "BatchSampler",
    "DataConfig",
    "DedupStats",
    "TokenBins",
    "_SplitWriter",
    "_as_list",
    "_cache_key",
    "_count_chars",
    "_derive_seed",
    "_dtype_for",
    "_gather",
    "_iter_pieces",
    "_iter_raw_lines",
    "_iter_units",
    "_load_cached",
    "_open_bin",
    "_route",
    "_utf8_len",
    "bits_per_unit",
    "bytes_per_token",
    "chars_per_token",
    "check_length",
    "corpus_hash",
    "default_cache_dir",
    "eval_windows",
    "iter_eval_batches",
    "iter_split_texts",
    "iter_train_texts",
    "prepare_bins",
    "standard_split",
    "val_overlap",
]
