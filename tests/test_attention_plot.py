"""`sifirdan attention`: recorded weights are a causal softmax, the PNG is written, bad input is refused."""

from __future__ import annotations

import matplotlib.image
import pytest
import torch

import sifirdan.cli as cli
from sifirdan.checkpoint import save_model
from sifirdan.cli.attention import MAX_TOKENS, attention_weights, token_label
from sifirdan.model import GPT, GPTConfig
from sifirdan.tokenizer import BPETokenizer

TEXT = "Türkiye'nin başkenti Ankara'dır.\nÇiğdem ağaçların altında şarkı söylüyor.\n" * 10


@pytest.fixture(autouse=True)
def _setup(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", ["generate", "attention"])


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(TEXT, vocab_size=290)


def make_model(tok, attention="sdpa"):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_embd=32, n_head=2, n_layer=2, attention=attention, init="pytorch"))


def test_weights_are_causal_rows_of_a_softmax_on_both_paths(tok):
    sdpa, explicit = make_model(tok, "sdpa"), make_model(tok, "explicit")
    ids = tok.encode("Türkiye'nin başkenti")
    w = attention_weights(sdpa, ids, layer=1)
    T = len(ids)
    assert w.shape == (2, T, T)
    assert torch.allclose(w.sum(-1), torch.ones(2, T), atol=1e-5)
    assert torch.all(w.triu(diagonal=1) == 0)  # no token looks ahead
    assert torch.allclose(w, attention_weights(explicit, ids, layer=1), atol=1e-6)
    attn = sdpa.blocks[1].attention
    assert attn.record_attention is False and attn.last_attention is None  # switched back after the pass


def test_token_labels_are_readable(tok):
    assert token_label(tok, tok.encode(" a")[0]) == "·a"
    assert token_label(tok, tok.encode("\n")[0]) == "⏎"
    half = tok._byte_ids["ş".encode()[0]]  # the first byte of a 2-byte letter on its own
    assert token_label(tok, half) == "\\xc5"


def test_cli_writes_a_png_per_layer_and_head(tok, tmp_path, capsys):
    model_dir = save_model(tmp_path / "m", make_model(tok), tok)
    out = tmp_path / "attn.png"
    code = cli.main(["attention", "--model", str(model_dir), "--text", "Ankara'dır.\nÇiğdem", "--out", str(out)])
    assert code == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(out)
    assert img.shape[0] > 200 and img.shape[1] > 400  # two panels side by side
    one = tmp_path / "one.png"
    assert cli.main(["attention", "--model", str(model_dir), "--text", "Ankara", "--out", str(one), "--layer", "-1", "--head", "1"]) == 0
    assert matplotlib.image.imread(one).shape[1] < img.shape[1]
    long_text = "Türkiye'nin başkenti Ankara'dır. " * 10
    assert cli.main(["attention", "--model", str(model_dir), "--text", long_text, "--out", str(one)]) == 0
    assert f"showing the first {MAX_TOKENS}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, match",
    [(["--layer", "2"], "--layer 2"), (["--head", "5"], "--head 5"), (["--layer", "x"], "--layer must be an integer"), (["--text", ""], "empty")],
)
def test_cli_bad_input(tok, tmp_path, capsys, extra, match):
    model_dir = save_model(tmp_path / "m", make_model(tok), tok)
    args = ["attention", "--model", str(model_dir), "--text", "Ankara", "--out", str(tmp_path / "a.png")]
    code = cli.main(args + extra)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and match in err
    assert not (tmp_path / "a.png").exists()
    code = cli.main(["attention", "--model", str(tmp_path / "none"), "--text", "a"])
    assert code == 2
