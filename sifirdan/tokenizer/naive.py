"""Learning BPE merges the slow, obvious way: read this one first (guide §2).

The whole algorithm:

1. every piece of text starts as its bytes, ids 0..255;
2. count how often each pair of neighbouring ids occurs (``get_stats``);
3. give the most frequent pair a new id and replace it everywhere (``merge``);
4. repeat from 2 until the vocabulary is big enough or no pair is left.

Step 2 recounts the whole corpus after every merge, so training costs O(merges x corpus): fine for a few
pages of text, far too slow for a book. ``sifirdan/tokenizer/train.py`` (and its C copy ``_fastbpe.c``)
learn exactly the same merges while doing far less work; the tests hold all three to the same output. Try
this one with ``BPETokenizer.train(text, vocab_size, backend="naive")``.

The corpus comes as distinct pieces with their counts -- ``words[i]`` occurs ``freqs[i]`` times, as
``count_pieces`` gives them -- so a pair inside a piece that occurs 5 times counts 5. Pairs never cross
from one piece into the next: cutting the text into pieces is the pre-tokenizer's job.

Two rules make the result unique, and the same as the fast trainers':

* ties: the pair with the highest count wins; among equal counts, the smallest ``(id_a, id_b)``;
* one id per byte string: if the merged bytes already are a token, that id is reused, and a pair that is
  already in the merge list is not listed twice. All trainers carry this as a safety rule; when training
  starts from plain bytes it never fires. Why: a span of a piece that starts and ends on token boundaries
  is merged the same way wherever it occurs (no merge reaches across its ends, or they would not be
  boundaries), so two such spans with the same bytes hold the same tokens at every step. When pair (p, q)
  made token t, every such span spelling t held [p][q] and became [t]; no later pair can spell t.
"""

from __future__ import annotations

from itertools import pairwise


def get_stats(ids: list[int], counts: dict | None = None, weight: int = 1) -> dict[tuple[int, int], int]:
    """How often each neighbouring pair occurs: ``[1, 2, 3, 1, 2]`` -> ``{(1, 2): 2, (2, 3): 1, (3, 1): 1}``.

    Pass ``counts`` to add into an existing table (one table for many pieces); each occurrence adds
    ``weight`` (the number of times the piece occurs)."""
    if counts is None:
        counts = {}
    for pair in pairwise(ids):  # (ids[0], ids[1]), (ids[1], ids[2]), ...
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge(ids: list[int], pair: tuple[int, int], idx: int) -> list[int]:
    """``ids`` with every ``pair`` replaced by ``idx``, scanning left to right.

    ``merge([5, 6, 5, 6, 7], (5, 6), 300)`` -> ``[300, 300, 7]``. An overlapping run is taken from the left:
    ``merge([1, 1, 1], (1, 1), 300)`` -> ``[300, 1]``."""
    out = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def learn_merges_naive(
    words: list[bytes], freqs: list[int], num_tokens: int, progress=None
) -> list[tuple[int, int, int]]:
    """Learn merges until there are ``num_tokens`` tokens (256 bytes + merges) or no pair is left.

    Same input and output as ``train.learn_merges``: returns ``[(id_a, id_b, id_new), ...]`` in rank order;
    new tokens get ids 256, 257, ... ``progress(1)`` is called for every new token when given."""
    pieces = [list(w) for w in words]         # each piece as a list of ids; byte b has id b
    vocab = [bytes([b]) for b in range(256)]  # id -> the bytes it stands for
    id_of = {t: i for i, t in enumerate(vocab)}
    merges: list[tuple[int, int, int]] = []
    merged: set[tuple[int, int]] = set()
    while len(vocab) < num_tokens:
        stats: dict[tuple[int, int], int] = {}
        for ids, f in zip(pieces, freqs, strict=True):  # 2. count every pair, from scratch
            get_stats(ids, stats, f)
        stats = {p: c for p, c in stats.items() if c > 0}  # a pair seen only in pieces given 0 times
        if not stats:
            break                              # every piece is a single token: nothing left to merge
        pair = min(stats, key=lambda p: (-stats[p], p))  # highest count, then the smallest pair
        new_bytes = vocab[pair[0]] + vocab[pair[1]]
        idx = id_of.get(new_bytes)
        if idx is None:                        # 3. a new token...
            idx = len(vocab)
            vocab.append(new_bytes)
            id_of[new_bytes] = idx
            if progress is not None:
                progress(1)
        if pair not in merged:
            merged.add(pair)
            merges.append((pair[0], pair[1], idx))
        pieces = [merge(ids, pair, idx) for ids in pieces]  # ...replaced everywhere
    return merges
