"""`sifirdan generate` end to end on a saved tiny model, and its one-line errors."""

from __future__ import annotations

import pytest
import torch

import sifirdan.cli as cli
from sifirdan.checkpoint import save_model
from sifirdan.generate import MAX_NEW_TOKENS_CAP
from sifirdan.model import GPT, GPTConfig
from sifirdan.tokenizer import BPETokenizer

TEXT = "Türkiye'nin başkenti Ankara'dır. Çiğdem ağaçların altında şarkı söylüyor 🌞.\n" * 10


@pytest.fixture(autouse=True)
def _setup(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", ["generate", "attention"])
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = BPETokenizer.train(TEXT, vocab_size=300)
    torch.manual_seed(0)
    # untied: an untrained model with tied embeddings mostly repeats its input token, and from an empty prompt
    # that is the newline it starts from -- the empty-prompt test wants visible text
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_embd=32, n_head=2, n_layer=2, init="pytorch",
                          tie_weights=False))
    return save_model(tmp_path_factory.mktemp("ck") / "model", model, tok)


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_prints_prompt_then_completion(model_dir, capsys):
    code, out, _ = run(capsys, "generate", "--model", str(model_dir), "--prompt", "Ankara", "--seed", "3", "--max-new-tokens", "15")
    assert code == 0 and out.startswith("Ankara")
    code, only, _ = run(capsys, "generate", "--model", str(model_dir), "--prompt", "Ankara", "--seed", "3",
                        "--max-new-tokens", "15", "--completion-only")
    assert code == 0 and out == "Ankara" + only  # same seed: the same completion, prompt omitted


def test_stream_prints_the_same_samples(model_dir, capsys):
    args = ["generate", "--model", str(model_dir), "--prompt", "Çiğdem", "--seed", "7", "--max-new-tokens", "20",
            "--num-samples", "3", "--temperature", "1.2", "--top-k", "40", "--top-p", "0.9", "--repetition-penalty", "1.3"]
    code, batch, _ = run(capsys, *args)
    code2, streamed, _ = run(capsys, *args, "--stream")
    assert code == code2 == 0
    assert batch.count("--- sample") == 3
    assert streamed == batch  # sample k uses seed + k either way


def test_prompt_from_file_and_empty_prompt(model_dir, tmp_path, capsys):
    f = tmp_path / "p.txt"
    f.write_text("Işık", encoding="utf-8")
    code, out, _ = run(capsys, "generate", "--model", str(model_dir), "--input", str(f), "--max-new-tokens", "5", "--temperature", "0")
    assert code == 0 and out.startswith("Işık")
    code, out, _ = run(capsys, "generate", "--model", str(model_dir), "--max-new-tokens", "5", "--temperature", "0")
    assert code == 0 and out.strip() != ""


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--temperature", "-1"], "temperature"),
        (["--top-p", "1.5"], "top_p"),
        (["--top-p", "0"], "top_p"),
        (["--top-k", "-3"], "top_k"),
        (["--max-new-tokens", "0"], "max_new_tokens"),
        (["--max-new-tokens", str(MAX_NEW_TOKENS_CAP + 1)], str(MAX_NEW_TOKENS_CAP)),
        (["--seed", "abc"], "--seed must be an integer"),
        (["--seed", "1.5"], "--seed must be an integer"),
        (["--temperature", "hot"], "--temperature must be a number"),
        (["--length-decay", "150"], "--length-decay takes START,FACTOR"),
        (["--length-decay", "150,0.5"], "exponential_decay_length_penalty must be (start, factor)"),
        (["--prompt-boost", "4"], "--prompt-boost takes BOOST,FOLLOW"),
        (["--prompt-boost", "4,-2"], "prompt_boost must be (boost, follow)"),
        (["--input", "/nonexistent/prompt.txt"], "does not exist"),
    ],
)
def test_bad_flags_are_one_line_errors(model_dir, capsys, extra, match):
    code, out, err = run(capsys, "generate", "--model", str(model_dir), *extra)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("sifirdan: error:") and match in err


def test_missing_and_corrupt_model_dirs(tmp_path, capsys):
    code, _, err = run(capsys, "generate", "--model", str(tmp_path / "nope"), "--prompt", "a")
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json", encoding="utf-8")
    code, _, err = run(capsys, "generate", "--model", str(bad), "--prompt", "a")
    assert code == 2 and err.count("\n") == 1 and "config.json" in err


@pytest.mark.parametrize("value", ["1e-300", "1e-45", "1e-320"])
def test_tiny_temperature_or_top_p_is_greedy_not_a_traceback(model_dir, capsys, value):
    """Issue 19: 1e-300 underflowed to 0 in float32 and NaN logits ended the run with a RuntimeError."""
    base = ["generate", "--model", str(model_dir), "--prompt", "Ankara", "--max-new-tokens", "12", "--seed", "1"]
    code, greedy, _ = run(capsys, *base, "--temperature", "0")
    assert code == 0
    code, out, err = run(capsys, *base, "--temperature", value)
    assert code == 0 and out == greedy and "Traceback" not in err
    code, out, err = run(capsys, *base, "--top-p", value, "--num-samples", "2", "--stream")
    assert code == 0 and "Traceback" not in err and "\x00" not in out
    code, out, err = run(capsys, *base, "--repetition-penalty", value)
    assert code == 2 and err.count("\n") == 1 and "--repetition-penalty" in err
