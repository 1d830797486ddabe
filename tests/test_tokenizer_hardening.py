"""Hostile or inconsistent tokenizer.json files are refused up front; foreign split patterns keep their gaps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sifirdan.errors import UserError
from sifirdan.tokenizer import BPETokenizer
from sifirdan.tokenizer.bpe import count_pieces
from sifirdan.tokenizer.pattern import COVERING_PATTERNS, make_splitter, split_isolated

TEXT = (
    "Merhaba, dünya! Türkiye'nin başkenti Ankara'dır; İstanbul'da 1919'dan beri...\n"
    "IĞDIR ılık İŞÇİ şeker ĞÜÇÖ ğüçö Âşık hâlâ -- ?!  çift  boşluk\t\tsekme\r\n\n"
) * 6


@pytest.fixture(scope="module")
def good() -> dict:
    """A valid tokenizer.json object: 256 bytes + some merges in model.vocab, six special tokens after them."""
    return BPETokenizer.train(TEXT, 320).to_json()


def _copy(obj: dict) -> dict:
    return json.loads(json.dumps(obj))


def _refused(tmp_path: Path, obj, *fields: str) -> str:
    """Load ``obj`` from a file; it must fail with one line that names every one of ``fields``."""
    path = tmp_path / "tokenizer.json"
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    with pytest.raises(UserError) as info:
        BPETokenizer.load(path)
    msg = str(info.value)
    assert "\n" not in msg
    for f in fields:
        assert f in msg, f"{f!r} not named in: {msg}"
    return msg


def _last_vocab_key(obj: dict) -> str:
    vocab = obj["model"]["vocab"]
    return max(vocab, key=vocab.get)


# ------------------------------------------------------------------------------------------- ids
def test_negative_or_non_integer_id_refused(good, tmp_path):
    for bad_id in (-1, True, "7", 3.0):
        obj = _copy(good)
        obj["model"]["vocab"][_last_vocab_key(obj)] = bad_id
        _refused(tmp_path, obj, "model.vocab", repr(bad_id))
    obj = _copy(good)
    obj["added_tokens"][2]["id"] = -5  # the original loader took this as a special token with id -5
    _refused(tmp_path, obj, "added_tokens[2].id", "-5")


def test_vocab_id_beyond_the_vocab_refused(good, tmp_path):
    obj = _copy(good)
    key = _last_vocab_key(obj)
    obj["model"]["vocab"][key] = 10**6  # would make vocab_size 1,000,001
    n = len(obj["model"]["vocab"]) + len(obj["added_tokens"])
    _refused(tmp_path, obj, f"model.vocab[{key!r}]", "1000000", f"0..{n - 1}")


def test_added_token_at_huge_id_refused(good, tmp_path):
    obj = _copy(good)
    obj["added_tokens"][-1]["id"] = 10**12  # a model would try to allocate 10**12 embedding rows
    k = len(obj["added_tokens"]) - 1
    _refused(tmp_path, obj, f"added_tokens[{k}].id", str(10**12))


def test_gap_in_ids_refused(good, tmp_path):
    obj = _copy(good)
    first = obj["added_tokens"][0]["id"]
    for t in obj["added_tokens"]:
        t["id"] += 1  # every id is unique and small, but `first` belongs to nobody
    _refused(tmp_path, obj, f"added_tokens[{len(obj['added_tokens']) - 1}].id", f"id {first} is unused")


def test_duplicate_vocab_id_refused(good, tmp_path):
    obj = _copy(good)
    vocab = obj["model"]["vocab"]
    key = _last_vocab_key(obj)
    other = next(s for s, i in vocab.items() if i == 300)
    vocab[key] = 300
    _refused(tmp_path, obj, f"model.vocab[{other!r}]", f"model.vocab[{key!r}]", "id 300")


# ------------------------------------------------------------------------------------------- merges
def test_duplicate_merge_refused(good, tmp_path):
    obj = _copy(good)
    merges = obj["model"]["merges"]
    merges.append(merges[3])  # HF would rank the pair by this last copy, we by the first: refuse instead
    _refused(tmp_path, obj, "model.merges[3]", f"model.merges[{len(merges) - 1}]")


# ------------------------------------------------------------------------------------------- special tokens
def test_duplicate_special_content_refused(good, tmp_path):
    obj = _copy(good)
    obj["added_tokens"][1]["content"] = obj["added_tokens"][0]["content"]
    _refused(tmp_path, obj, "added_tokens[0].content", "added_tokens[1].content")


def test_duplicate_special_id_refused(good, tmp_path):
    obj = _copy(good)
    obj["added_tokens"][4]["id"] = obj["added_tokens"][1]["id"]
    _refused(tmp_path, obj, "added_tokens[1].id", "added_tokens[4].id")


def test_added_token_on_another_tokens_id_refused(good, tmp_path):
    # the original loader skipped it silently: "<PAD>" would then encode as its characters, not as an id
    obj = _copy(good)
    obj["added_tokens"][1]["id"] = obj["model"]["vocab"][_last_vocab_key(obj)]
    _refused(tmp_path, obj, "added_tokens[1]", "model.vocab")


def test_added_tokens_out_of_id_order_refused(good, tmp_path):
    # HF numbers added tokens that are not in the vocab in list order: a shuffled list would mean other ids there
    import tokenizers

    obj = _copy(good)
    added = obj["added_tokens"]
    added[0]["id"], added[1]["id"] = added[1]["id"], added[0]["id"]
    hf = tokenizers.Tokenizer.from_str(json.dumps(obj))
    assert hf.token_to_id(added[0]["content"]) != added[0]["id"]  # why the rule exists
    _refused(tmp_path, obj, "added_tokens[1]", "id order")


def test_valid_file_still_loads(good, tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(good), encoding="utf-8")
    tok = BPETokenizer.load(path)
    assert tok.vocab_size == len(good["model"]["vocab"]) + len(good["added_tokens"])
    assert tok.decode(tok.encode(TEXT)) == TEXT


# ------------------------------------------------------------------------------------------- deep nesting
@pytest.mark.parametrize(
    "text",
    ["[" * 100_000, '{"a":' * 100_000, "[" * 100_000 + "]" * 100_000],
    ids=["open-arrays", "open-objects", "closed-arrays"],
)
def test_deeply_nested_json_refused(tmp_path, text):
    msg = _refused(tmp_path, text, "nests too deeply")
    assert str(tmp_path / "tokenizer.json") in msg


# ------------------------------------------------------------------------------------------- foreign split patterns
# Texts on which Oniguruma's \w (HF) and Python regex's \w agree: ASCII, Turkish letters, digits, punctuation,
# spaces, newlines, single emoji and flags. They differ e.g. on U+200D ZERO WIDTH JOINER (a \w for Python's
# regex, not for Oniguruma), so no ZWJ emoji sequences here.
WORD_TEXTS = [
    "Merhaba, dünya!",
    "Türkiye'nin başkenti Ankara'dır.",
    "  baştaki ve sondaki boşluklar  ",
    "satır\nsatır\r\n\r\n\tsekme",
    "IĞDIR ılık İŞÇİ şeker ĞÜÇÖ ğüçö Âşık hâlâ",
    "emoji 😀 ve bayrak 🇹🇷!!",
    "1919'dan 1938'e: 3.141.592 -- e-posta@tbmm.gov.tr",
    "...,;:!?",
    "",
    "x",
]


def _with_word_pattern(obj: dict) -> dict:
    obj = _copy(obj)
    obj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\w+"
    return obj


def test_word_pattern_keeps_the_gaps_like_hf(good, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    foreign = _with_word_pattern(good)
    hf = tokenizers.Tokenizer.from_str(json.dumps(foreign))
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(foreign), encoding="utf-8")
    ours = BPETokenizer.load(path)
    for text in WORD_TEXTS:
        ids = ours.encode(text)
        assert ids == hf.encode(text).ids, text
        assert ours.decode(ids) == text  # findall used to drop ", " and "!" here
        assert hf.decode(ids, skip_special_tokens=False) == text


def test_training_with_a_word_pattern_sees_the_gaps_and_matches_hf():
    tokenizers = pytest.importorskip("tokenizers")
    assert count_pieces(["Merhaba, dünya!"], r"\w+") == {"Merhaba": 1, ", ": 1, "dünya": 1, "!": 1}
    tok = BPETokenizer.train(TEXT, 340, pattern=r"\w+")
    # "; " and ", " only exist between \w+ matches: training counted the gaps, as encoding cuts them
    assert any(tok.vocab[new] in (b", ", b"; ", b"  ") for _, _, new in tok.merge_list)
    hf = tokenizers.Tokenizer.from_str(tok.to_json_str())
    for text in WORD_TEXTS + [TEXT]:
        ids = tok.encode(text)
        assert ids == hf.encode(text).ids, text
        assert tok.decode(ids) == text


@pytest.mark.parametrize("pattern", [r"\w+", r"x*", r"|ab", r"\b", r"(?=a)", r"a|", r"", r"(a)|b", r"(?<=a)b*"])
def test_splitter_matches_hf_split_isolated(pattern):
    """Empty matches included: they give no piece but still cut the text, and the search after one moves on
    the way Oniguruma does (Python's finditer would let "|ab" match "ab" where HF cuts "a", "b")."""
    pre_tokenizers = pytest.importorskip("tokenizers.pre_tokenizers")
    from tokenizers import Regex

    hf = pre_tokenizers.Split(Regex(pattern), "isolated")
    split = make_splitter(pattern)
    for text in ["", "abc", "axxb", "baab", "ab cd", "xaby", "bab", "a, b!", "ğü 😀 x\n"]:
        assert split(text) == [p for p, _ in hf.pre_tokenize_str(text)], (pattern, text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.characters(exclude_categories=()), max_size=200))
def test_covering_patterns_need_no_gap_handling(text):
    """The fast path (bare findall) for our own patterns gives exactly what the general splitter gives."""
    for pattern in COVERING_PATTERNS:
        assert make_splitter(pattern)(text) == split_isolated(regex.compile(pattern), text)
