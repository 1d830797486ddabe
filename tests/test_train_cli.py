"""``sifirdan pretrain`` / ``sifirdan eval`` end to end on a tiny text, plus user errors and signals."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sifirdan.cli as cli

REPO = Path(__file__).resolve().parents[1]
TINY = ["--vocab-size", "300", "--n-embd", "32", "--n-head", "2", "--n-layer", "2", "--block-size", "16",
        "--batch-size", "8", "--eval-iters", "2", "--threads", "1", "--sample-interval", "0"]




@pytest.fixture
def sifirdan_main(monkeypatch):
    # only our subcommands: others may not exist yet while the toolkit is being built
    monkeypatch.setattr(cli, "COMMANDS", ["pretrain", "eval"])
    return cli.main


def test_pretrain_then_eval(sifirdan_main, text_file, tmp_path, capsys):
    run = tmp_path / "run"
    rc = sifirdan_main(["pretrain", "--data", str(text_file), "--out", str(run), "--max-iters", "20",
                        "--eval-interval", "10", *TINY])
    assert rc == 0
    for name in ("metrics.jsonl", "loss.png", "tokenizer.json", "last/config.json", "last/model.safetensors",
                 "last/tokenizer.json", "best/model.safetensors"):
        assert (run / name).is_file(), name
    meta = json.loads((run / "last" / "config.json").read_text())
    assert meta["model"]["vocab_size"] == 300 and meta["train"]["max_iters"] == 20
    assert meta["data"]["val_fraction"] == 0.1 and meta["data_source"] == [str(text_file)]
    assert len(meta["tokenizer_fingerprint"]) == 64 and len(meta["corpus_hash"]) == 64
    capsys.readouterr()

    assert sifirdan_main(["eval", "--model", str(run), "--data", str(text_file), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r) == {"loss", "perplexity", "bits_per_byte", "bits_per_char", "tokens"}
    assert r["perplexity"] == pytest.approx(2.718281828 ** r["loss"], rel=1e-6)
    assert r["bits_per_char"] > r["bits_per_byte"] > 0  # Turkish letters take 2 bytes in UTF-8

    # resume: changed hyperparameters are refused with the list of differences; max_iters may grow
    assert sifirdan_main(["pretrain", "--resume", str(run), "--learning-rate", "0.5", "--n-layer", "3"]) == 2
    err = capsys.readouterr().err
    assert "--learning-rate 0.003 -> 0.5" in err and "--n-layer 2 -> 3" in err and err.count("\n") == 1
    assert sifirdan_main(["pretrain", "--resume", str(run), "--max-iters", "25"]) == 0
    assert json.loads((run / "last" / "config.json").read_text())["step"] == 25
    # an existing run is never overwritten
    assert sifirdan_main(["pretrain", "--data", str(text_file), "--out", str(run), *TINY]) == 2
    assert "--resume" in capsys.readouterr().err


def test_a_run_from_before_decay_embeddings_resumes_as_it_was_trained(sifirdan_main, text_file, tmp_path, capsys):
    """decay_embeddings became a field (default off) after runs had been saved with the embeddings decayed: such a
    run resumes with them decayed, so its optimizer's parameter groups match the saved state."""
    run = tmp_path / "run"
    assert sifirdan_main(["pretrain", "--data", str(text_file), "--out", str(run), "--max-iters", "6",
                          "--eval-interval", "3", "--decay-embeddings", *TINY]) == 0
    cfg = run / "last" / "config.json"
    meta = json.loads(cfg.read_text())
    assert meta["train"].pop("decay_embeddings") is True
    cfg.write_text(json.dumps(meta))  # as an older sifirdan wrote it
    from sifirdan.train.config import read_run_config

    assert read_run_config(run / "last")["train"]["decay_embeddings"] is True
    assert sifirdan_main(["pretrain", "--resume", str(run), "--max-iters", "8"]) == 0, capsys.readouterr().err
    assert json.loads(cfg.read_text())["step"] == 8


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--n-embd", "30", "--n-head", "4"], "must be divisible by n_head"),
        (["--device", "cuda"], "no CUDA GPU"),
    ],
)
def test_user_errors(sifirdan_main, text_file, tmp_path, capsys, extra, message):
    if "cuda" in extra:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    rc = sifirdan_main(["pretrain", "--data", str(text_file), "--out", str(tmp_path / "r"), *TINY, *extra])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("extra, message", [
    (["--preset", "huge"], "invalid choice: 'huge' (choose from 'nano', 'guide', 'small', 'medium')"),
    (["--lr-schedule", "linear"], "invalid choice: 'linear' (choose from 'cosine', 'constant')"),
])
def test_a_value_outside_the_choices_is_argparses_one_line(sifirdan_main, text_file, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        sifirdan_main(["pretrain", "--data", str(text_file), "--out", str(tmp_path / "r"), *TINY, *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_config_file_and_tokenizer_checks(sifirdan_main, text_file, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlearning_rat = 0.1\n")
    assert sifirdan_main(["pretrain", "--data", str(text_file), "--out", str(tmp_path / "r"), "--config", str(bad)]) == 2
    assert "unknown key 'learning_rat' in [train]; valid keys:" in capsys.readouterr().err

    from sifirdan.tokenizer import BPETokenizer

    tok = BPETokenizer.train(text_file.read_text(encoding="utf-8"), vocab_size=300)
    tok.save(tmp_path / "tok.json")
    args = ["pretrain", "--data", str(text_file), "--out", str(tmp_path / "r"), "--tokenizer", str(tmp_path / "tok.json")]
    assert sifirdan_main([*args, "--vocab-size", "280"]) == 2
    assert "tokenizer has 300 ids but --vocab-size is 280" in capsys.readouterr().err

    # precedence: config file < flags; no --vocab-size -> the tokenizer's size
    good = tmp_path / "good.toml"
    good.write_text('preset = "nano"\nmax_iters = 3\n[model]\nn_embd = 32\nn_layer = 1\nblock_size = 16\n'
                    "[train]\nbatch_size = 4\neval_iters = 1\nthreads = 1\n")
    assert sifirdan_main([*args, "--config", str(good), "--max-iters", "4", "--final-eval", "--no-compile"]) == 0
    meta = json.loads((tmp_path / "r" / "last" / "config.json").read_text())
    assert meta["model"]["vocab_size"] == 300 and meta["model"]["n_head"] == 2  # nano preset's n_head
    assert meta["model"]["n_layer"] == 1 and meta["train"]["max_iters"] == 4 and meta["preset"] == "nano"


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_checkpoint_and_exits(text_file, tmp_path, sig, code):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    launcher = "import sys, sifirdan.cli as c; c.COMMANDS = ['pretrain']; sys.exit(c.main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", launcher, "pretrain", "--data", str(text_file), "--out", str(run),
         "--max-iters", "1000000", "--log-interval", "1", "--eval-interval", "100000", *TINY],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            m = run / "metrics.jsonl"
            if m.is_file() and '"kind": "train"' in m.read_text():
                break
            if proc.poll() is not None:
                pytest.fail(f"training ended early: {proc.communicate()}")
            time.sleep(0.1)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert f"stopped by {signal.Signals(sig).name}" in err and f"--resume {run}" in err
    meta = json.loads((run / "last" / "config.json").read_text())
    assert meta["step"] >= 1 and (run / "last" / "trainer_state.json").is_file()
