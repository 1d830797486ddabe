"""``sifirdan tokenizer ...`` in-process: exit codes, one-line errors, no partial output files."""

from __future__ import annotations

import importlib.util
import json

import pytest

import sifirdan.cli as cli

TEXT = "Türkiye'nin başkenti Ankara'dır. Efendiler! İstanbul'da 1919'da toplandık.\n" * 40


@pytest.fixture(autouse=True)
def only_tokenizer_command(monkeypatch):
    # the other subcommand modules may not exist yet; build the CLI with this one only
    monkeypatch.setattr(cli, "COMMANDS", ["tokenizer"])


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


@pytest.fixture
def trained(tmp_path, corpus, capsys):
    out = tmp_path / "tok.json"
    code, stdout, _ = run(capsys, "tokenizer", "train", "--input", str(corpus), "--vocab-size", "300", "--out", str(out), "--quiet")
    assert code == 0
    return out, stdout


def test_train_writes_file_and_prints_stats(trained):
    out, stdout = trained
    assert json.loads(out.read_text(encoding="utf-8"))["model"]["type"] == "BPE"
    assert "vocab size 300" in stdout and "merges" in stdout and "chars/token" in stdout


def test_train_jsonl_with_text_field(tmp_path, capsys):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"body": line}) for line in TEXT.splitlines()), encoding="utf-8")
    out = tmp_path / "t.json"
    assert run(capsys, "tokenizer", "train", "--input", str(p), "--vocab-size", "280", "--out", str(out), "--text-field", "body", "--quiet")[0] == 0
    code, _, err = run(capsys, "tokenizer", "train", "--input", str(p), "--vocab-size", "280", "--out", str(tmp_path / "u.json"), "--quiet")
    assert code == 2 and "--text-field" in err and not (tmp_path / "u.json").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--vocab-size", "100"], "too small"),
        (["--vocab-size", "300", "--special-tokens", "<a>", "<a>"], "given twice"),
    ],
)
def test_train_bad_input_exit_2_no_file(tmp_path, corpus, capsys, extra, message):
    out = tmp_path / "tok.json"
    code, stdout, err = run(capsys, "tokenizer", "train", "--input", str(corpus), "--out", str(out), "--quiet", *extra)
    assert code == 2
    assert message in err and err.count("\n") == 1 and err.startswith("sifirdan: error:")
    assert not out.exists() and list(tmp_path.iterdir()) == [corpus]


def test_train_missing_and_empty_and_non_utf8(tmp_path, capsys):
    out = tmp_path / "tok.json"
    code, _, err = run(capsys, "tokenizer", "train", "--input", str(tmp_path / "nope.txt"), "--out", str(out))
    assert code == 2 and "does not exist" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    code, _, err = run(capsys, "tokenizer", "train", "--input", str(empty), "--out", str(out), "--quiet")
    assert code == 2 and "empty" in err
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Türkçe".encode("cp1254"))
    code, _, err = run(capsys, "tokenizer", "train", "--input", str(latin), "--out", str(out), "--quiet")
    assert code == 2 and "UTF-8" in err and "--errors replace" in err
    assert not out.exists()
    assert run(capsys, "tokenizer", "train", "--input", str(latin), "--out", str(out), "--quiet", "--errors", "replace", "--vocab-size", "262")[0] == 0


def test_train_without_input_uses_default_corpus(tmp_path, capsys):
    out = tmp_path / "tok.json"
    code, _, err = run(capsys, "tokenizer", "train", "--vocab-size", "270", "--out", str(out), "--quiet")
    assert code == 0, err
    assert "no --input given: training on the default corpus, nutuk" in err and "1.69 M characters" in err


def test_encode_decode_roundtrip(trained, capsys):
    tok = str(trained[0])
    code, out, _ = run(capsys, "tokenizer", "encode", "--tokenizer", tok, "--text", "Ankara'da <RESP>")
    assert code == 0
    ids = out.split()
    assert all(i.isdigit() for i in ids)
    code, out2, _ = run(capsys, "tokenizer", "encode", "--tokenizer", tok, "--text", "Ankara'da <RESP>", "--allow-special")
    assert len(out2.split()) < len(ids) and "298" in out2.split()  # <RESP> is id 256 + 38 merges + 4
    code, out, _ = run(capsys, "tokenizer", "decode", "--tokenizer", tok, "--ids", " ".join(ids))
    assert code == 0


def test_decode_prints_text(tmp_path, capfdbinary):
    from sifirdan.tokenizer import BPETokenizer

    tok = BPETokenizer.train(TEXT, 300)
    path = tok.save(tmp_path / "tok.json")
    ids = tok.encode("İzmir'de ş ğ 😀")
    assert cli.main(["tokenizer", "decode", "--tokenizer", str(path), "--ids", " ".join(map(str, ids))]) == 0
    assert capfdbinary.readouterr().out == "İzmir'de ş ğ 😀".encode()


def test_encode_file_and_stats(trained, corpus, capsys):
    tok = str(trained[0])
    code, out, _ = run(capsys, "tokenizer", "encode", "--tokenizer", tok, "--input", str(corpus))
    assert code == 0 and len(out.split()) > 100
    code, out, _ = run(capsys, "tokenizer", "stats", "--tokenizer", tok, "--input", str(corpus))
    assert code == 0
    assert "chars/token" in out and "bytes/token" in out and "longest tokens" in out and "␣" in out


def test_decode_errors(trained, tmp_path, capsys):
    tok = str(trained[0])
    code, _, err = run(capsys, "tokenizer", "decode", "--tokenizer", tok, "--ids", "1 2 99999")
    assert code == 2 and "99999" in err and "vocab size 300" in err
    code, _, err = run(capsys, "tokenizer", "decode", "--tokenizer", tok, "--ids", "1 two")
    assert code == 2 and "'two'" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    code, _, err = run(capsys, "tokenizer", "encode", "--tokenizer", str(bad), "--text", "x")
    assert code == 2 and err.count("\n") == 1
