"""Checkpoints: round trip, tied weights, pickle-free trainer state, clear errors, disk-full safety."""

import errno
import json
import random

import numpy as np
import pytest
import torch

import sifirdan
from sifirdan import checkpoint as ckpt
from sifirdan.errors import UserError
from sifirdan.fileio import sha256_hex
from sifirdan.model import GPT, GPTConfig
from sifirdan.model.config import GUIDE_BLOCK
from sifirdan.tokenizer import BPETokenizer

TEXT = "Türk milleti, Ankara'da toplanan Büyük Millet Meclisi ile egemenliğini kazandı.\n" * 20


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(TEXT, vocab_size=300)


def tiny(vocab, tie=False):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, block_size=16, n_embd=32, n_head=2, n_layer=2, tie_weights=tie))


@pytest.mark.parametrize("tie", [False, True])
def test_round_trip_identical_logits(tmp_path, tok, tie):
    model = tiny(tok.vocab_size, tie).eval()
    ckpt.save_model(tmp_path / "ck", model, tok, {"note": "hi"})
    assert {p.name for p in (tmp_path / "ck").iterdir()} == {"config.json", "model.safetensors", "tokenizer.json"}
    loaded, tok2 = sifirdan.load_model(tmp_path / "ck")
    x = torch.randint(0, tok.vocab_size, (2, 16))
    assert torch.equal(model(x)[0], loaded(x)[0])
    assert not loaded.training
    assert tok2.fingerprint() == tok.fingerprint()
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert meta["note"] == "hi" and meta["model"]["tie_weights"] is tie
    if tie:  # stored once, and still shared after loading
        assert meta["tied_weights"] == {"lm_head.weight": "embeddings.token_embedding.weight"}
        assert loaded.lm_head.weight is loaded.embeddings.token_embedding.weight


def test_run_dir_prefers_best(tmp_path, tok):
    a, b = tiny(tok.vocab_size), tiny(tok.vocab_size)
    with torch.no_grad():
        b.ln_f.weight.fill_(1.5)
    ckpt.save_model(tmp_path / "run" / "last", a, tok)
    assert ckpt.resolve_checkpoint_dir(tmp_path / "run") == tmp_path / "run" / "last"
    ckpt.save_model(tmp_path / "run" / "best", b, tok)
    model, _ = sifirdan.load_model(tmp_path / "run")
    assert torch.all(model.ln_f.weight == 1.5)


def test_trainer_state_without_pickle(tmp_path, tok):
    model = tiny(tok.vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, tok.vocab_size, (2, 16))
    model(x, x)[1].backward()
    opt.step()
    state = {
        "optimizer": opt.state_dict(),
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        "step": 7,
        "best": None,
        "pair": (1, "a"),
    }
    ckpt.save_checkpoint(tmp_path / "ck", model, tok, {}, state)
    raw = (tmp_path / "ck" / "trainer_state.json").read_bytes()
    assert b"\x80" not in raw[:2]  # JSON, not a pickle stream
    back = ckpt.load_trainer_state(tmp_path / "ck")
    assert back["step"] == 7 and back["best"] is None and back["pair"] == (1, "a")
    assert back["rng"]["python"] == random.getstate()
    assert torch.equal(back["rng"]["torch"], torch.get_rng_state())
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(back["optimizer"])
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(v, opt2.state_dict()["state"][0][k])


def test_missing_paths(tmp_path, tok):
    with pytest.raises(UserError, match="does not exist"):
        sifirdan.load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no checkpoint"):
        sifirdan.load_model(tmp_path / "empty")
    ckpt.save_model(tmp_path / "ck", tiny(tok.vocab_size), tok)
    (tmp_path / "ck" / "tokenizer.json").unlink()
    with pytest.raises(UserError, match="tokenizer.json is missing"):
        sifirdan.load_model(tmp_path / "ck")


def test_corrupt_and_truncated_files(tmp_path, tok):
    ck = tmp_path / "ck"
    ckpt.save_model(ck, tiny(tok.vocab_size), tok)
    weights = (ck / "model.safetensors").read_bytes()

    (ck / "model.safetensors").write_bytes(weights[: len(weights) // 2])  # truncated
    with pytest.raises(UserError, match="model.safetensors.*(truncated|corrupted)"):
        sifirdan.load_model(ck)

    flipped = bytearray(weights)
    flipped[-10] ^= 0xFF  # one bit-flipped weight: only the checksum notices
    (ck / "model.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(UserError, match="checksum"):
        sifirdan.load_model(ck)

    (ck / "model.safetensors").write_bytes(weights)
    sifirdan.load_model(ck)  # intact again
    cfg = (ck / "config.json").read_text()
    (ck / "config.json").write_text(cfg[: len(cfg) // 2])
    with pytest.raises(UserError, match="config.json is not valid JSON"):
        sifirdan.load_model(ck)


def test_disk_full_keeps_previous_checkpoint(tmp_path, tok, monkeypatch):
    old = tiny(tok.vocab_size)
    ckpt.save_model(tmp_path / "run" / "last", old, tok)
    real_open = open

    def full_disk(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        if "w" in mode and str(path).endswith("model.safetensors"):
            f.close()
            raise OSError(errno.ENOSPC, "No space left on device")
        return f

    monkeypatch.setattr(ckpt, "open", full_disk, raising=False)
    new = tiny(tok.vocab_size)
    with torch.no_grad():
        new.ln_f.weight.fill_(5.0)
    with pytest.raises(OSError):
        ckpt.save_model(tmp_path / "run" / "last", new, tok)
    monkeypatch.undo()
    model, _ = sifirdan.load_model(tmp_path / "run")
    assert torch.equal(model.ln_f.weight, old.ln_f.weight)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["last"]  # no temporary leftovers


def _as_saved_before_lm_head_bias(ck) -> None:
    """Rewrite a checkpoint as sifirdan wrote it before ``lm_head_bias`` was a field: no such key in
    config.json nor in the weights' architecture record (the checksums made to fit)."""
    from safetensors.torch import load, save

    raw = (ck / "model.safetensors").read_bytes()
    _, metadata = ckpt.read_safetensors_header(ck / "model.safetensors")
    arch = json.loads(metadata[ckpt.ARCH_KEY])
    del arch["lm_head_bias"]
    data = save(load(raw), metadata={**metadata, ckpt.ARCH_KEY: json.dumps(arch, sort_keys=True)})
    (ck / "model.safetensors").write_bytes(data)
    meta = json.loads((ck / "config.json").read_text())
    del meta["model"]["lm_head_bias"]
    meta["sha256"]["model.safetensors"] = sha256_hex(data)
    (ck / "config.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("bias", [True, False])
def test_checkpoints_from_before_lm_head_bias_load_as_they_were_saved(tmp_path, tok, bias):
    # then the LM head had a bias exactly when the other layers did, and every block was the guide's
    torch.manual_seed(0)
    old = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_embd=32, n_head=2, n_layer=2, bias=bias,
                        lm_head_bias=bias, init="pytorch", **GUIDE_BLOCK)).eval()
    ckpt.save_model(tmp_path / "ck", old, tok)
    _as_saved_before_lm_head_bias(tmp_path / "ck")
    assert "lm_head_bias" not in json.loads((tmp_path / "ck" / "config.json").read_text())["model"]
    loaded, _ = sifirdan.load_model(tmp_path / "ck")
    assert loaded.config.lm_head_bias is bias and (loaded.lm_head.bias is not None) is bias
    x = torch.randint(0, tok.vocab_size, (2, 16))
    assert torch.equal(old(x)[0], loaded(x)[0])
    assert ckpt.read_config(tmp_path / "ck")["model"]["lm_head_bias"] is bias  # what a resumed run is built from
    # saving it again writes the field: the next load needs no guess
    ckpt.save_model(tmp_path / "again", loaded, tok)
    assert json.loads((tmp_path / "again" / "config.json").read_text())["model"]["lm_head_bias"] is bias
