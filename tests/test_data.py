"""Pre-training data: dedup, the standard split, cached token bins, batch sampling and eval windows."""

import json

import numpy as np
import pytest
import torch

from sifirdan.data import (
    IGNORE_INDEX,
    BatchSampler,
    DataConfig,
    bits_per_unit,
    eval_windows,
    iter_eval_batches,
    iter_split_texts,
    iter_train_texts,
    prepare_bins,
    standard_split,
    val_overlap,
)
from sifirdan.data import bins as data_bins
from sifirdan.data import split as data_split
from sifirdan.errors import UserError
from sifirdan.tokenizer import BPETokenizer

LONG_A = "Türkiye Cumhuriyeti'nin temelleri bu günlerde atıldı, efendiler."  # >= 40 chars
LONG_B = "Ankara'da toplanan Meclis milletin iradesini temsil ediyordu."
WORDS = "ve bir bu da ile için çok daha en gibi millet ordu meclis hükümet Ankara İstanbul şehir köy".split()


def _prose(n_lines: int, seed: int = 0) -> str:
    """Distinct pseudo-Turkish lines, most of them long."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n_lines):
        k = int(rng.integers(3, 14))
        lines.append(f"{i} " + " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), k)) + ".")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(_prose(300, seed=1) + LONG_A + LONG_B, vocab_size=300)


@pytest.fixture
def corpus_file(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(_prose(400), encoding="utf-8")
    return p


# ------------------------------------------------------------------------------------------- dedup + split
def test_dedup_drops_repeated_long_lines_and_keeps_short_ones(tmp_path):
    text = f"{LONG_A}\nkısa\n  {LONG_A}  \nkısa\n{LONG_B}\n{LONG_A}\nson"
    p = tmp_path / "a.txt"
    p.write_text(text, encoding="utf-8")
    train, val, stats = standard_split(p, DataConfig(val_fraction=0.5))
    whole = train + val
    assert whole == f"{LONG_A}\nkısa\nkısa\n{LONG_B}\nson"
    d = stats["dedup"]
    assert d["lines"] == 7 and d["lines_removed"] == 2
    assert d["chars_removed"] == len(f"  {LONG_A}  \n") + len(f"{LONG_A}\n")
    assert d["chars"] == len(text)
    # off: nothing dropped
    train, val, stats = standard_split(p, DataConfig(dedup=False, val_fraction=0.5))
    assert train + val == text and stats["dedup"]["lines_removed"] == 0
    # the threshold is configurable: with 100 chars, LONG_A counts as short and is kept
    train, val, _ = standard_split(p, DataConfig(dedup_min_chars=100, val_fraction=0.5))
    assert train + val == text


def test_split_proportions_and_line_boundary(corpus_file):
    text = corpus_file.read_text(encoding="utf-8")
    for vf in (0.1, 0.25, 0.5):
        train, val, stats = standard_split(corpus_file, DataConfig(val_fraction=vf))
        assert train + val == text  # distinct lines: dedup removes nothing
        assert abs(len(val) / len(text) - vf) < 0.01
        assert train.endswith("\n") and val[:1] != "\n"  # cut at a line start
        assert stats["val"]["n_chars"] == len(val)


def test_a_single_long_line_is_cut_at_the_target(tmp_path):
    p = tmp_path / "one.txt"
    p.write_text("x" * 1000, encoding="utf-8")
    train, val, _ = standard_split(p, DataConfig(val_fraction=0.1))
    assert (len(train), len(val)) == (900, 100)


def test_dedup_removes_val_copies_of_train(tmp_path):
    base = _prose(200)
    p = tmp_path / "rep.txt"
    p.write_text(base + base[: len(base) // 3], encoding="utf-8")  # the tail repeats the beginning
    train, val, _ = standard_split(p, DataConfig(dedup=False, val_fraction=0.2))
    assert val_overlap(train, val) > 0.9
    train, val, _ = standard_split(p, DataConfig(val_fraction=0.2))
    assert val_overlap(train, val) == 0.0


def test_streaming_split_equals_standard_split(tmp_path, monkeypatch):
    monkeypatch.setattr(data_split, "_CHUNK_CHARS", 200)  # many pieces
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text(
        "\n".join(json.dumps({"text": t}) for t in [LONG_A, "bir\niki", LONG_A, _prose(30, 3)]), encoding="utf-8"
    )
    (tmp_path / "d" / "b.txt").write_text(_prose(60, 4), encoding="utf-8")
    cfg = DataConfig(val_fraction=0.3)
    train, val, _ = standard_split(tmp_path / "d", cfg)
    assert "".join(iter_split_texts(tmp_path / "d", cfg, "train", separator="\n\n")) == train
    assert "".join(iter_split_texts(tmp_path / "d", cfg, "val", separator="\n\n")) == val
    pieces = list(iter_train_texts(tmp_path / "d", cfg))
    marked = list(iter_split_texts(tmp_path / "d", cfg, "train", separator="<SEP>"))
    assert len(pieces) > 3 and [q for q in marked if q != "<SEP>"] == pieces  # documents come as separate texts
    assert "".join(marked).replace("<SEP>", "\n\n") == train
    first_val_line = val.split("\n")[0]
    assert first_val_line and "\n" + first_val_line + "\n" not in "\n" + "".join(pieces)  # no val text


# ------------------------------------------------------------------------------------------- token bins
def test_bins_decode_to_the_exact_split_text(tmp_path, tok, monkeypatch):
    monkeypatch.setattr(data_bins, "_CHUNK_CHARS", 500)  # the writer tokenizes in many chunks
    monkeypatch.setattr(data_split, "_CHUNK_CHARS", 500)
    p = tmp_path / "c.txt"
    p.write_text(_prose(300) + LONG_A + "\n" + LONG_A + "\n", encoding="utf-8")
    cfg = DataConfig()
    train, val, _ = standard_split(p, cfg)
    bins = prepare_bins(p, tok, cfg, cache_dir=tmp_path / "cache", progress=False)
    assert bins.train.dtype == np.uint16 and isinstance(bins.train, np.memmap)
    assert tok.decode(bins.train.tolist()) == train
    assert tok.decode(bins.val.tolist()) == val
    assert bins.train.tolist() == tok.encode(train)  # chunking at safe cuts changes no id
    m = json.loads((bins.path / "meta.json").read_text(encoding="utf-8"))
    assert m["splits"]["train"] == {"n_tokens": len(bins.train), "n_chars": len(train), "n_bytes": len(train.encode())}
    assert m["dedup"]["lines_removed"] == 1 and m["tokenizer_fingerprint"] == tok.fingerprint()
    assert m["vocab_size"] == tok.vocab_size and m["dtype"] == "uint16"
    assert bins.bytes_per_token("val") == pytest.approx(len(val.encode()) / len(bins.val))
    assert bins.chars_per_token("train") == pytest.approx(len(train) / len(bins.train))
    assert bits_per_unit(np.log(2) * 3.0, 3.0) == pytest.approx(1.0)
    x, y = BatchSampler(bins.train, 2, 32, seed=0).next_batch()  # the sampler reads the memmap directly
    assert torch.equal(x[:, 1:], y[:, :-1]) and int(x.max()) < tok.vocab_size


def test_bin_dtype_fits_the_vocabulary():
    assert data_bins._dtype_for(300) == np.uint16 and data_bins._dtype_for(65536) == np.uint16  # ids 0..65535
    assert data_bins._dtype_for(65537) == np.uint32 and data_bins._dtype_for(100_000) == np.uint32


def test_bits_per_unit_and_ignore_index_have_one_definition():
    from sifirdan.model.gpt import IGNORE_INDEX as LOSS_IGNORE_INDEX
    from sifirdan.train import metrics as M

    assert IGNORE_INDEX == IGNORE_INDEX == LOSS_IGNORE_INDEX == -100
    assert M.bits_per_unit is bits_per_unit  # the trainer calls M.bits_per_unit
    assert bits_per_unit(2.0, 1.5) == pytest.approx(2.0 / np.log(2) / 1.5)
    # units per token not known (None, 0) or a non-finite loss: no value rather than an exception or nan
    assert bits_per_unit(1.0, None) is None and bits_per_unit(1.0, 0) is None
    assert bits_per_unit(float("nan"), 3.0) is None and bits_per_unit(float("inf"), 3.0) is None


def test_documents_are_separated_by_eot(tmp_path, tok):
    docs = [_prose(20, 5), "<|endoftext|> bu bir metin", _prose(20, 6)]
    p = tmp_path / "r.jsonl"
    p.write_text("\n".join(json.dumps({"text": t}) for t in docs), encoding="utf-8")
    bins = prepare_bins(p, tok, DataConfig(val_fraction=0.2), cache_dir=tmp_path, progress=False)
    ids = np.concatenate([bins.train, bins.val]).tolist()
    assert ids.count(tok.eot_id) == 2  # between documents only: the lookalike in the text is ordinary text
    pieces, cur = [], []
    for i in ids:
        if i == tok.eot_id:
            pieces.append(tok.decode(cur))
            cur = []
        else:
            cur.append(i)
    pieces.append(tok.decode(cur))
    assert pieces == docs
    assert bins.meta["separator"] == "eot"
    # a tokenizer without <|endoftext|> gets "\n\n" text instead
    plain = BPETokenizer.train(_prose(100), vocab_size=280, special_tokens=[])
    bins = prepare_bins(p, plain, DataConfig(val_fraction=0.2), cache_dir=tmp_path, progress=False)
    assert plain.decode(np.concatenate([bins.train, bins.val]).tolist()) == "\n\n".join(docs)


def test_cache_reuse_and_keys(tmp_path, tok, corpus_file, monkeypatch):
    calls = []
    real = tok.encode
    monkeypatch.setattr(tok, "encode", lambda text, *a, **k: calls.append(len(text)) or real(text, *a, **k))
    cache = tmp_path / "cache"
    first = prepare_bins(corpus_file, tok, cache_dir=cache, progress=False)
    assert calls and not first.reused
    calls.clear()
    second = prepare_bins(corpus_file, tok, cache_dir=cache, progress=False)
    assert second.reused and calls == []  # nothing tokenized the second time
    assert second.path == first.path and np.array_equal(second.train, first.train)
    # a different tokenizer, config or corpus -> a different cache entry
    other = BPETokenizer.train(_prose(100, 9), vocab_size=290)
    assert prepare_bins(corpus_file, other, cache_dir=cache, progress=False).path != first.path
    assert prepare_bins(corpus_file, tok, DataConfig(val_fraction=0.2), cache_dir=cache, progress=False).path != first.path
    corpus_file.write_text(corpus_file.read_text(encoding="utf-8") + "yeni satır\n", encoding="utf-8")
    changed = prepare_bins(corpus_file, tok, cache_dir=cache, progress=False)
    assert changed.path != first.path and not changed.reused
    # a damaged entry is rebuilt, not trusted
    expected_val = np.array(first.val)  # a copy: the damage below truncates the file first.val maps
    (first.path / "val.bin").write_bytes(b"\x00")
    corpus_file.write_text(corpus_file.read_text(encoding="utf-8")[: -len("yeni satır\n")], encoding="utf-8")
    rebuilt = prepare_bins(corpus_file, tok, cache_dir=cache, progress=False)
    assert not rebuilt.reused and np.array_equal(rebuilt.val, expected_val)
    assert not list(cache.glob("bins/.*"))  # no temporary folders left behind


def test_default_cache_dir_from_env(tmp_path, tok, corpus_file, monkeypatch):
    monkeypatch.setenv("SIFIRDAN_CACHE", str(tmp_path / "envcache"))
    bins = prepare_bins(corpus_file, tok, progress=False)
    assert bins.path.parent == tmp_path / "envcache" / "bins"


# ------------------------------------------------------------------------------------------- batches
def test_batch_sampler_determinism_resume_and_ranks():
    data = np.arange(5000, dtype=np.uint16)
    a = BatchSampler(data, batch_size=4, block_size=16, seed=7)
    b = BatchSampler(data, batch_size=4, block_size=16, seed=7)
    x, y = a.next_batch()
    assert x.dtype == torch.int64 and x.shape == (4, 16) and torch.equal(y, x + 1)
    assert torch.equal(x, b.next_batch()[0])
    for _ in range(3):
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))  # plain JSON survives a round trip
    expected = [a.next_batch() for _ in range(3)]
    c = BatchSampler(data, batch_size=4, block_size=16, seed=123)
    c.load_state_dict(state)
    for xe, ye in expected:
        xc, yc = c.next_batch()
        assert torch.equal(xc, xe) and torch.equal(yc, ye)
    r0 = BatchSampler(data, 8, 16, seed=7, rank=0, world_size=2).next_batch()[0]
    r1 = BatchSampler(data, 8, 16, seed=7, rank=1, world_size=2).next_batch()[0]
    assert not torch.equal(r0, r1)
    with pytest.raises(UserError, match="rank 0"):
        BatchSampler(data, 8, 16, seed=7, rank=1, world_size=2).load_state_dict(state)
    with pytest.raises(UserError, match="data changed"):
        BatchSampler(data[:4000], 4, 16, seed=7).load_state_dict(state)


def test_batch_sampler_reaches_the_last_token():
    data = np.arange(11, dtype=np.uint16)  # exactly block_size + 1 tokens: one possible window
    x, y = BatchSampler(data, 3, 10, seed=0).next_batch()
    assert x[0].tolist() == list(range(10)) and y[0].tolist() == list(range(1, 11))


@pytest.mark.parametrize("n", [17, 33, 34, 50])
def test_eval_windows_predict_every_token_once(n):
    data = np.arange(n, dtype=np.uint32) + 100
    T = 8
    seen = []
    rows = 0
    for x, y in iter_eval_batches(data, batch_size=3, block_size=T):
        assert x.shape[1] == T and x.shape[0] <= 3
        keep = y != IGNORE_INDEX
        assert torch.equal(y[keep] - 1, x[keep])  # every kept target is the token after its input
        assert keep[:, -1].all() and (keep.sum(1) > 0).all()  # only a prefix of the tail window is masked
        rows += x.shape[0]
        seen += y[keep].tolist()
    assert sorted(seen) == list(range(101, 100 + n))  # each token after the first, exactly once
    assert rows == eval_windows(n, T)


# ------------------------------------------------------------------------------------------- errors
def test_errors_name_the_problem_and_the_fix(tmp_path, tok):
    short = np.arange(10, dtype=np.uint16)
    with pytest.raises(UserError, match="lower --block-size or give more text"):
        BatchSampler(short, 2, 16, seed=0)
    with pytest.raises(UserError, match="block_size"):
        next(iter_eval_batches(short, 2, 10))
    for vf in (0, 1, -0.1, 1.5, float("nan")):
        with pytest.raises(UserError, match="val_fraction"):
            standard_split(tmp_path, DataConfig(val_fraction=vf))
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(UserError, match="is empty; pass a file with text"):
        standard_split(empty)
    with pytest.raises(UserError, match="is empty; pass a file with text"):
        prepare_bins(empty, tok, cache_dir=tmp_path, progress=False)

    tiny = tmp_path / "tiny.txt"
    tiny.write_text("a", encoding="utf-8")
    with pytest.raises(UserError, match="val split is empty"):
        prepare_bins(tiny, tok, cache_dir=tmp_path, progress=False)
    with pytest.raises(UserError, match="does not exist"):
        prepare_bins(tmp_path / "nope.txt", tok, cache_dir=tmp_path, progress=False)
    with pytest.raises(UserError) as e:
        BatchSampler(short, 2, 16, seed=0)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------- real corpus
def test_default_corpus(tmp_path, tok):
    from sifirdan.data import DEFAULT_CORPUS_NAME, default_corpus

    train, val, stats = standard_split(None)
    assert stats["source"] == DEFAULT_CORPUS_NAME and stats["dedup"]["documents"] == len(default_corpus())
    bins = prepare_bins(None, tok, cache_dir=tmp_path, progress=False)
    assert DEFAULT_CORPUS_NAME in bins.describe() and bins.meta["source"] is None
    seps = {sp: list(iter_split_texts(None, DataConfig(), sp, separator="<SEP>")).count("<SEP>") for sp in ("train", "val")}
    # the default corpus (Nutuk) is one document: no separator; a multi-document corpus is covered above
    assert seps["train"] + seps["val"] == sum(1 for t in default_corpus() if t) - 1
    assert int((bins.train == tok.eot_id).sum()) == seps["train"] and int((bins.val == tok.eot_id).sum()) == seps["val"]
    # eot separators are tokens but not characters: meta counts the documents' own text only
    assert bins.meta["splits"]["val"]["n_chars"] == len(val) - 2 * seps["val"]
    assert bins.meta["splits"]["train"]["n_chars"] == len(train) - 2 * seps["train"]


def test_nutuk_dedup_and_val_overlap(nutuk_path):
    train, val, stats = standard_split(nutuk_path)
    removed = stats["dedup"]["chars_removed"] / stats["dedup"]["chars"]
    assert 0.10 < removed < 0.20  # ~15 % of Nutuk repeats
    assert val_overlap(train, val) == 0.0
    train_raw, val_raw, _ = standard_split(nutuk_path, DataConfig(dedup=False))
    assert val_overlap(train_raw, val_raw) > 0.25  # ~34 % without dedup
