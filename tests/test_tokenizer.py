"""Byte-level BPE tokenizer: losslessness, pre-tokenizer, special tokens, training, file format, HF parity."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import regex
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sifirdan.errors import UserError
from sifirdan.tokenizer import DEFAULT_SPECIAL_TOKENS, GPT4_PATTERN, TURKISH_PATTERN, BPETokenizer
from sifirdan.tokenizer.base import merge_pair, text_to_bytes
from sifirdan.tokenizer.bpe import count_pieces
from sifirdan.tokenizer.naive import get_stats, learn_merges_naive, merge
from sifirdan.tokenizer.train import learn_merges

try:
    from sifirdan.tokenizer import _fastbpe
except ImportError:  # the C core is optional
    _fastbpe = None

needs_c = pytest.mark.skipif(_fastbpe is None, reason="the optional C core is not built (pip install -e .)")
# every trainer a BPETokenizer.train(backend=...) can pick; they must all learn the same merges
BACKENDS = [pytest.param("naive"), pytest.param("python"), pytest.param("c", marks=needs_c)]
CHECKED_BACKENDS = [pytest.param("naive"), pytest.param("c", marks=needs_c)]  # each compared with "python"


def trainer(backend: str):
    """The merge learner behind ``backend``, called as learner(words, freqs, num_tokens)."""
    if backend == "c":
        return lambda words, freqs, num_tokens: _fastbpe.learn_merges(words, freqs, num_tokens, None)
    return {"naive": learn_merges_naive, "python": learn_merges}[backend]


HYP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SAMPLE = (
    "Türkiye'nin başkenti Ankara'dır. Ankara'da, İstanbul'da ve İzmir'de 1919'dan beri toplantılar yapıldı.\n"
    "Efendiler! Milletin istiklalini yine milletin azim ve kararı kurtaracaktır.\r\n"
    "IĞDIR ılık İŞÇİ şeker ĞÜÇÖ ğüçö Âşık hâlâ Îmân kâtip\t\ttab\n"
    "Sayılar: 3.141.592, 1881–1938; e-posta: ata@tbmm.gov.tr 😀 👨‍👩‍👧 café\u0301\n\n"
) * 8


def nutuk_text() -> str:
    from sifirdan.data import catalog

    return catalog.get("nutuk").documents()[0]  # the bundled copy (equal to the guide's: tests/test_catalog.py)


def split(text: str):
    cut = int(len(text) * 0.9)
    return text[:cut], text[cut:]


@pytest.fixture(scope="module")
def small() -> BPETokenizer:
    return BPETokenizer.train(SAMPLE, 400)


@pytest.fixture(scope="module")
def nutuk_tok(tmp_path_factory):
    train, val = split(nutuk_text())
    tok = BPETokenizer.train(train, 8192)
    path = tok.save(tmp_path_factory.mktemp("tok") / "tokenizer.json")
    return tok, path, val


# ------------------------------------------------------------------------------------------- losslessness
TRICKY = [
    "",
    "İ ı I i İstanbul ırmak IĞDIR iğdir",
    "Ş ş Ğ ğ Ç ç Ö ö Ü ü Â â Î î Û û",
    "e\u0301 a\u0302\u0323 \u0301başta birleşik işaret",
    "😀 👨‍👩‍👧‍👦 🏳️‍🌈 👍🏽 🇹🇷",
    "satır\r\nsatır\r\n\r\n",
    "\t\ttab\t",
    "a\x00b\x00\x00",
    " " * 1000,
    "x" + " " * 1000 + "y\n" * 3,
    "\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u2028\u2029\u3000\ufeff\u200b",
    "Ankara'da Türkiye’nin 'tırnak' ''",
    "<|endoftext|></RESP><INST>",
    "\ud83d lone \udfff surrogates \ud83d\ude00",
]


@pytest.mark.parametrize("text", TRICKY)
def test_roundtrip_tricky(small, text):
    ids = small.encode(text)
    assert small.decode(ids) == text
    assert all(0 <= i < small.vocab_size for i in ids)


@HYP
@given(st.text(alphabet=st.characters(exclude_categories=()), max_size=200))
def test_roundtrip_any_str(small, text):
    """Every Python str round-trips, including lone surrogates (encoded with surrogatepass)."""
    assert small.decode(small.encode(text)) == text


def test_lone_surrogate_bytes_and_invalid_utf8(small):
    assert small.decode_bytes(small.encode("\ud800")) == b"\xed\xa0\x80"
    # ids that end inside a character (a model can emit those) decode to U+FFFD, not an exception
    ids = small.encode("ş")
    assert small.decode_bytes(ids) == "ş".encode()
    assert small.decode([ids[0]] if len(ids) == 2 else [small._byte_ids[0xC5]]) == "\ufffd"


def test_roundtrip_all_of_nutuk():
    text = nutuk_text()
    tok = BPETokenizer.train(text[:200_000], 1000)
    assert tok.decode(tok.encode(text)) == text


# ------------------------------------------------------------------------------------------- pre-tokenizer
@pytest.mark.parametrize(
    "text, pieces",
    [
        ("Ankara'da", ["Ankara", "'da"]),
        ("Türkiye'nin", ["Türkiye", "'nin"]),
        (" Türkiye’nin", [" Türkiye", "’nin"]),
        ("1919'da", ["191", "9", "'da"]),
        ("a\u0302b", ["a\u0302b"]),
        ("Efendiler!\n\nBiz", ["Efendiler", "!\n\n", "Biz"]),
        ("a   b", ["a", "  ", " b"]),
    ],
)
def test_pattern_examples(text, pieces):
    assert regex.findall(TURKISH_PATTERN, text) == pieces


def test_gpt4_pattern_is_inconsistent_on_apostrophes():
    assert regex.findall(GPT4_PATTERN, "Ankara'da") == ["Ankara", "'d", "a"]
    assert regex.findall(GPT4_PATTERN, "Türkiye'nin") == ["Türkiye", "'nin"]


@HYP
@given(st.text(alphabet=st.characters(exclude_categories=()), max_size=300))
def test_pattern_covers_every_character(text):
    assert "".join(regex.findall(TURKISH_PATTERN, text)) == text


# ------------------------------------------------------------------------------------------- special tokens
def test_default_special_tokens(small):
    assert list(small.special_tokens) == list(DEFAULT_SPECIAL_TOKENS)
    assert small.vocab_size == 400
    assert small.eot_id == small.special_tokens["<|endoftext|>"] == 394
    assert BPETokenizer.train(SAMPLE, 300, special_tokens=[]).special_tokens == {}
    assert BPETokenizer.train(SAMPLE, 300, special_tokens=[]).eot_id is None


def test_special_tokens_are_atomic_only_when_allowed(small):
    text = "merhaba<|endoftext|><RESP>cevap</RESP>"
    ids = small.encode(text, allowed_special="all")
    sp = small.special_tokens
    assert sp["<|endoftext|>"] in ids and sp["<RESP>"] in ids and sp["</RESP>"] in ids
    assert small.decode(ids) == text
    # default: a user cannot inject control tokens through the text
    plain = small.encode(text)
    assert not set(plain) & set(sp.values())
    assert small.decode(plain) == text
    only = small.encode(text, allowed_special={"<RESP>"})
    assert sp["<RESP>"] in only and sp["</RESP>"] not in only
    with pytest.raises(UserError, match="unknown special token"):
        small.encode("x", allowed_special={"<NOPE>"})
    assert small.id_to_token_bytes(sp["<PAD>"]) == b"<PAD>"


def test_add_special_tokens_keeps_ids(small, tmp_path):
    tok = BPETokenizer.load(small.save(tmp_path / "t.json"))
    before = dict(tok.special_tokens)
    ids = tok.encode(SAMPLE)
    assert tok.add_special_tokens(["<SYS>", "<|endoftext|>", "<SYS>", "</SYS>"]) == 2
    assert {k: tok.special_tokens[k] for k in before} == before
    assert tok.special_tokens["<SYS>"] == 400 and tok.special_tokens["</SYS>"] == 401
    assert tok.vocab_size == 402
    assert tok.encode(SAMPLE) == ids
    assert tok.encode("<SYS>", allowed_special="all") == [400]
    assert tok.add_special_tokens([]) == 0
    with pytest.raises(UserError):
        tok.add_special_tokens([""])
    assert BPETokenizer.load(tok.save(tmp_path / "t2.json")).special_tokens == tok.special_tokens


# ------------------------------------------------------------------------------------------- training
def test_training_is_deterministic(tmp_path):
    a = BPETokenizer.train(SAMPLE, 450).save(tmp_path / "a.json")
    b = BPETokenizer.train(SAMPLE, 450).save(tmp_path / "b.json")
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_merge_follows_the_tie_rule(backend):
    # "ab" and "cd" both occur twice: equal counts -> the smaller pair (97, 98) wins
    tok = BPETokenizer.train("cd\nab\ncd\nab", 257, special_tokens=[], backend=backend)
    assert tok.merge_list[0] == (97, 98, 256)
    assert tok.train_stats["backend"] == backend


def test_unknown_backend_is_refused():
    with pytest.raises(UserError, match="unknown training backend 'fast'.*naive"):
        BPETokenizer.train(SAMPLE, 300, backend="fast")


@pytest.mark.parametrize("backend", BACKENDS)
def test_vocab_larger_than_text_can_reach_warns(backend):
    with pytest.warns(UserWarning, match="stopped at vocab size"):
        tok = BPETokenizer.train("abc abc", 5000, backend=backend)
    assert tok.vocab_size < 5000
    assert tok.decode(tok.encode("abc abd")) == "abc abd"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(vocab_size=100), "too small"),
        (dict(vocab_size=261), "at least 262"),
        (dict(vocab_size=300, special_tokens=["<a>", "<a>"]), "given twice"),
        (dict(vocab_size=300, special_tokens=[""]), "empty"),
        (dict(vocab_size="300"), "integer"),
    ],
)
def test_training_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        BPETokenizer.train(SAMPLE, **kwargs)


@pytest.mark.parametrize("empty", ["", [], ["", ""]])
def test_empty_training_text(empty):
    with pytest.raises(UserError, match="empty"):
        BPETokenizer.train(empty, 300)


def test_streaming_equals_concatenation():
    """Texts are pre-tokenized one by one: [a, b] == a + b when the cut is after a newline before a non-space."""
    parts = SAMPLE.split("\n")
    chunks = [p + "\n" for p in parts[:-1] if p and not p[0].isspace()]
    joined = "".join(chunks)
    a = BPETokenizer.train(iter(chunks), 420)
    b = BPETokenizer.train(joined, 420)
    assert a.merge_list == b.merge_list


@pytest.mark.parametrize("backend", CHECKED_BACKENDS)
@pytest.mark.filterwarnings("ignore:the training text has no more pairs")
def test_trainers_match_python_reference(backend):
    """naive == heap-based Python == C on real text (the naive trainer is slow: small texts only)."""
    texts = [SAMPLE]
    nutuk = nutuk_text()
    texts.append(nutuk[:5_000] if backend == "naive" else nutuk[:300_000])
    for text in texts:
        for vocab in (300, 1500):
            py = BPETokenizer.train(text, vocab, backend="python")
            other = BPETokenizer.train(text, vocab, backend=backend)
            assert py.merge_list == other.merge_list
            assert py.to_json_str() == other.to_json_str()
            ids = [py._bpe(text_to_bytes(p)) for p in py._compiled.findall(text)]
            encode = other._fast_core().encode if _fastbpe is not None else other._bpe  # C encoder vs Python's
            assert ids == [encode(text_to_bytes(p)) for p in other._compiled.findall(text)]


WORDS = st.lists(
    st.tuples(st.binary(max_size=12) | st.lists(st.sampled_from(b"ab\x00"), max_size=14).map(bytes), st.integers(0, 50)),
    max_size=40,
)


@pytest.mark.parametrize("backend", CHECKED_BACKENDS)
@settings(max_examples=60, deadline=None)
@given(WORDS, st.integers(200, 400))
def test_trainers_match_python_on_random_words(backend, items, vocab):
    """Random pieces (few-letter ones give overlapping runs like b"aaaa" and many ties), counts from 0."""
    words = list(dict(items))
    freqs = [dict(items)[w] for w in words]
    assert trainer(backend)(words, freqs, vocab) == learn_merges(words, freqs, vocab)


# pinned cases: (words, freqs, num_tokens) -> the merges every trainer must learn
A, B, C, D = 97, 98, 99, 100
PINNED = {
    "tie: equal counts, the smaller pair first": ([b"cd", b"ab"], [2, 2], 300, [(A, B, 256), (C, D, 257)]),
    "tie: same first id, smaller second id": ([b"ac", b"ab"], [1, 1], 257, [(A, B, 256)]),
    "tie in a run: (256, a) before (256, 256)": ([b"aaaaa"], [1], 300, [(A, A, 256), (256, A, 257), (256, 257, 258)]),
    "higher count beats the smaller pair": ([b"ab", b"cd"], [1, 2], 257, [(C, D, 256)]),
    # "abc" could be spelled ab+c or a+bc; whichever pair comes first, the other never forms
    "abc: ab first, then bc, then ab+c": ([b"ab", b"bc", b"abc"], [3, 2, 1], 300, [(A, B, 256), (B, C, 257), (256, C, 258)]),
    "abc: bc first, then ab, then a+bc": ([b"ab", b"bc", b"abc"], [2, 3, 1], 300, [(B, C, 256), (A, B, 257), (A, 256, 258)]),
    "no pair left before the vocab size": ([b"ab", b"ab\x00"], [5, 1], 1000, [(A, B, 256), (256, 0, 257)]),
    "only single bytes: nothing to merge": ([b"a", b"b", b""], [3, 1, 9], 1000, []),
    "a piece given 0 times counts nothing": ([b"ab", b"cd"], [0, 1], 300, [(C, D, 256)]),
    "empty input": ([], [], 1000, []),
    "vocab size 256: no merges": ([b"abab"], [4], 256, []),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(PINNED))
def test_trainers_pinned_cases(backend, case):
    words, freqs, num_tokens, expected = PINNED[case]
    assert trainer(backend)(words, freqs, num_tokens) == expected


@HYP
@given(WORDS, st.integers(256, 400))
def test_training_never_reuses_an_id(items, vocab):
    """The rule "merged bytes that are already a token reuse its id" never fires when training starts
    from bytes (naive.py says why): new ids are 256, 257, ... in rank order, each a distinct string."""
    words = list(dict(items))
    freqs = [dict(items)[w] for w in words]
    merges = learn_merges_naive(words, freqs, vocab)
    assert [new for _, _, new in merges] == list(range(256, 256 + len(merges)))
    spelled = {i: bytes([i]) for i in range(256)}
    for a, b, new in merges:
        spelled[new] = spelled[a] + spelled[b]
    assert len(set(spelled.values())) == len(spelled)


def test_naive_progress_counts_new_tokens():
    calls = []
    merges = learn_merges_naive([b"abcd"], [1], 1000, progress=calls.append)
    assert len(merges) == 3 and calls == [1, 1, 1]


def test_get_stats_and_merge_examples():
    assert get_stats([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert get_stats([]) == {} and get_stats([7]) == {}
    counts = get_stats([1, 2], weight=5)
    assert get_stats([1, 2, 1], counts, 2) is counts and counts == {(1, 2): 7, (2, 1): 2}
    assert merge([5, 6, 5, 6, 7], (5, 6), 300) == [300, 300, 7]
    assert merge([1, 1, 1], (1, 1), 300) == [300, 1]
    assert merge([1, 1, 1, 1], (1, 1), 300) == [300, 300]
    assert merge([], (1, 2), 300) == [] and merge([1], (1, 2), 300) == [1]


@HYP
@given(st.lists(st.integers(0, 3), max_size=30), st.integers(0, 3), st.integers(0, 3))
def test_merge_is_the_encoders_merge_pair(ids, a, b):
    assert merge(ids, (a, b), 9) == merge_pair(ids, a, b, 9)


def test_count_pieces_streams():
    c = count_pieces(["Ankara'da ", "Ankara'da "])
    assert c["Ankara"] == 2 and c["'da"] == 2


# ------------------------------------------------------------------------------------------- file format
def test_save_load_roundtrip(small, tmp_path):
    path = small.save(tmp_path / "sub" / "tokenizer.json")
    tok = BPETokenizer.load(path)
    assert tok.encode(SAMPLE, allowed_special="all") == small.encode(SAMPLE, allowed_special="all")
    assert tok.fingerprint() == small.fingerprint()
    assert tok.special_tokens == small.special_tokens
    assert BPETokenizer.load(tmp_path / "sub").vocab_size == small.vocab_size  # a folder works too
    obj = json.loads(path.read_text(encoding="utf-8"))
    assert obj["model"]["type"] == "BPE" and obj["model"]["byte_fallback"] is False and obj["model"]["unk_token"] is None
    assert obj["normalizer"] is None and obj["decoder"]["type"] == "ByteLevel"
    assert [s["type"] for s in obj["pre_tokenizer"]["pretokenizers"]] == ["Split", "ByteLevel"]
    assert all(t["special"] for t in obj["added_tokens"])
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temp files left


def test_fingerprint_changes_with_content(small):
    other = BPETokenizer.train(SAMPLE, 401)
    assert other.fingerprint() != small.fingerprint()


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj, encoding="utf-8")
    return path


def test_load_errors(small, tmp_path):
    good = small.to_json()
    with pytest.raises(UserError, match="does not exist"):
        BPETokenizer.load(tmp_path / "nope.json")
    with pytest.raises(UserError, match="not valid JSON"):
        BPETokenizer.load(_write(tmp_path / "a.json", "hello, not json"))
    with pytest.raises(UserError, match="truncated"):
        BPETokenizer.load(_write(tmp_path / "b.json", small.to_json_str()[:5000]))
    wp = {"model": {"type": "WordPiece", "vocab": {"a": 0}}, "normalizer": None}
    with pytest.raises(UserError, match="WordPiece model, not BPE"):
        BPETokenizer.load(_write(tmp_path / "c.json", wp))
    uni = {"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}
    with pytest.raises(UserError, match="Unigram"):
        BPETokenizer.load(_write(tmp_path / "d.json", uni))
    not_bytelevel = json.loads(json.dumps(good))
    not_bytelevel["pre_tokenizer"] = {"type": "Whitespace"}
    with pytest.raises(UserError, match="ByteLevel"):
        BPETokenizer.load(_write(tmp_path / "e.json", not_bytelevel))
    bad_merges = json.loads(json.dumps(good))
    bad_merges["model"]["merges"][3] = "zzzq qqqz"
    with pytest.raises(UserError, match="merge #3"):
        BPETokenizer.load(_write(tmp_path / "f.json", bad_merges))
    bad_vocab = json.loads(json.dumps(good))
    bad_vocab["model"]["vocab"] = {"a": 0, "b": 1}
    with pytest.raises(UserError, match="single-byte"):
        BPETokenizer.load(_write(tmp_path / "g.json", bad_vocab))
    for p in tmp_path.iterdir():  # one line each
        try:
            BPETokenizer.load(p)
        except UserError as e:
            assert "\n" not in str(e)


def test_decode_out_of_range(small):
    with pytest.raises(UserError, match=r"token id 400 .*vocab size 400"):
        small.decode([1, 400])
    with pytest.raises(UserError, match="-1"):
        small.decode([-1])


# ------------------------------------------------------------------------------------------- Hugging Face parity
def test_hf_tokenizers_identical_on_nutuk_val(nutuk_tok):
    tokenizers = pytest.importorskip("tokenizers")
    tok, path, val = nutuk_tok
    hf = tokenizers.Tokenizer.from_file(str(path))
    ids = tok.encode(val)
    assert hf.encode(val).ids == ids
    assert hf.decode(ids, skip_special_tokens=False) == val
    assert BPETokenizer.load(path).encode(val) == ids
    assert len(val) / len(ids) > 4.0  # chars/token at vocab 8192


ODD = "a\x0b b\x0c\x1c\x1d x\x85 y\xa0z\u2028 q\u3000 \u3000w  \t\n\n  Ankara'da İı 1234567 😀‍👍 e\u0301 ’ın \x00"


@HYP
@given(st.text(max_size=200) | st.text(alphabet="aİıŞ'’ \t\n\r\x0b\x0c\x1c\x85\xa0\u2028\u3000\u0301<>|1😀", max_size=80))
def test_hf_tokenizers_identical_on_random_text(small_hf, text):
    tok, hf = small_hf
    assume(not any(s in text for s in tok.special_tokens))
    ids = tok.encode(text)
    assert hf.encode(text).ids == ids
    assert hf.decode(ids, skip_special_tokens=False) == text


@pytest.fixture(scope="module")
def small_hf(small, tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    path = small.save(tmp_path_factory.mktemp("hf") / "tokenizer.json")
    hf = tokenizers.Tokenizer.from_file(str(path))
    assert hf.encode(ODD).ids == small.encode(ODD)
    return small, hf


def test_hf_special_tokens_match(small_hf):
    tok, hf = small_hf
    text = "soru<INST>ne?</INST><RESP>bu</RESP><|endoftext|>"
    assert hf.encode(text).ids == tok.encode(text, allowed_special="all")


def test_transformers_fast_tokenizer_loads(small, tmp_path):
    transformers = pytest.importorskip("transformers")
    path = small.save(tmp_path / "tokenizer.json")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    text = "Türkiye'nin başkenti Ankara'dır."
    assert fast.encode(text) == small.encode(text)
    assert fast.decode(small.encode(text)) == text
    assert fast.convert_tokens_to_ids("<|endoftext|>") == small.eot_id


def test_library_does_not_import_hf_or_data():
    import subprocess
    import sys

    code = (
        "import sys, sifirdan.tokenizer as t; t.BPETokenizer.train('abc abd', 300);"
        "bad=[m for m in ('tokenizers','transformers','sifirdan.data','torch') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_encode_batch_and_cache(small):
    texts = ["Ankara'da", "", "İzmir'de 😀"]
    assert small.encode_batch(texts) == [small.encode(t) for t in texts]
    with pytest.raises(UserError):
        small.encode(b"bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert small.decode(small.encode("x" * 5000)) == "x" * 5000
