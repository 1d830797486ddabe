"""Streaming: whole characters only, the stream equals decode(ids), stop strings never leak."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sifirdan.generate import Engine, GenerationConfig
from sifirdan.generate.text import IncrementalDetokenizer, StopStringMatcher
from sifirdan.model import GPT, GPTConfig
from sifirdan.tokenizer import BPETokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "Çiğdem ağaçların altında şarkı söylüyor. Işık, ölçü, üzüm, İstanbul 🌳👍🏽.\n" * 10


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(TEXT, vocab_size=300)


def byte_ids(tok, data: bytes) -> list[int]:
    """One id per byte: every multi-byte character is split across tokens."""
    return [tok._byte_ids[b] for b in data]


class Scripted(GPT):
    """A real GPT (so the KV cache runs) whose logits always pick the next id of a script."""

    def __init__(self, config, script):
        super().__init__(config)
        self.script, self.calls = script, 0

    def forward(self, idx, targets=None, **kw):
        logits, loss = super().forward(idx, targets, **kw)
        forced = torch.full_like(logits, -1e9)
        forced[..., self.script[min(self.calls, len(self.script) - 1)]] = 0.0
        self.calls += 1
        return forced, loss


def scripted_engine(tok, text: str) -> tuple[Engine, list[int]]:
    script = byte_ids(tok, text.encode("utf-8"))
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_embd=16, n_head=2, n_layer=1, dropout=0.0)
    return Engine(Scripted(cfg, script), tok), script


def test_stream_emits_whole_characters_turkish_and_emoji(tok):
    text = "Çiğdem ağaçları 🌳 şöyle: ığüşöç İ 👍🏽 son"
    engine, script = scripted_engine(tok, text)
    pieces = list(engine.stream("x", GenerationConfig(max_new_tokens=len(script), temperature=0)))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)  # no half character was ever printed
    assert len(pieces) == len(text)  # one byte per token: each character appears exactly when complete
    engine.model.calls = 0
    r = engine.generate("x", GenerationConfig(max_new_tokens=len(script), temperature=0))
    assert r.text == text == tok.decode(r.token_ids) and r.token_ids == script


def test_stream_of_a_cut_off_character_matches_decode(tok):
    data = "ağ🌳".encode("utf-8")[:-2]  # the emoji's last two bytes never come: the text ends mid-character
    engine, script = scripted_engine(tok, data.decode("utf-8", errors="ignore"))
    engine.model.script = byte_ids(tok, data)
    r = engine.generate("x", GenerationConfig(max_new_tokens=len(data), temperature=0))
    assert r.text == tok.decode(r.token_ids) and r.text.endswith("\ufffd")
    engine.model.calls = 0
    assert "".join(engine.stream("x", GenerationConfig(max_new_tokens=len(data), temperature=0))) == r.text


def test_stop_string_is_never_streamed(tok):
    engine, script = scripted_engine(tok, "Merhaba!\nKullanıcı: nasılsın")
    cfg = GenerationConfig(max_new_tokens=len(script), temperature=0, stop=("\nKullanıcı:",))
    pieces = list(engine.stream("x", cfg))
    assert "".join(pieces) == "Merhaba!"
    assert all("\n" not in p for p in pieces)  # "\nKul..." was held back, then dropped
    engine.model.calls = 0
    r = engine.generate("x", cfg)
    assert r.text == "Merhaba!" and r.finish_reason == "stop"


def test_random_model_stream_equals_generate_and_decode(tok):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_embd=32, n_head=2, n_layer=2, init="pytorch"))
    engine = Engine(model, tok)
    for seed in range(5):
        cfg = GenerationConfig(max_new_tokens=40, temperature=1.0, seed=seed, stop_token_ids=())
        r = engine.generate("Işık ", cfg)
        assert "".join(engine.stream("Işık ", cfg)) == r.text == tok.decode(r.token_ids)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=6), max_size=12),
    # odd endings, split across tokens: an encoded lone surrogate (decode keeps it), half an emoji, ...
    st.sampled_from([[], [b"\xed\xa0"], [b"\xed", b"\xa0\x80"], [b"\xed\xa0", b"\x80x"], [b"\xf0\x9f", b"\x8c"], [b"\xf0\x9f"]]),
)
def test_incremental_detokenizer_equals_decode(chunks, tail):
    tok = _TOK
    chunks = chunks + tail
    all_ids, out = [], []
    detok = IncrementalDetokenizer(tok)
    for c in chunks:
        ids = byte_ids(tok, c)
        all_ids += ids
        out.append(detok.push(ids))
    out.append(detok.flush())
    assert "".join(out) == tok.decode(all_ids)


_TOK = BPETokenizer.train(TEXT, vocab_size=300)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab\nK:ş", max_size=30), st.integers(1, 5))
def test_stop_matcher_equals_cutting_the_whole_text(text, step):
    stops = ("\nK:", "şş", "bab")
    m = StopStringMatcher(stops)
    emitted, stopped = [], False
    for i in range(0, len(text), step):
        piece, stopped = m.push(text[i : i + step])
        emitted.append(piece)
        if stopped:
            break
    if not stopped:
        emitted.append(m.flush())
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    assert "".join(emitted) == (text[: min(hits)] if hits else text)
    assert stopped == bool(hits)
