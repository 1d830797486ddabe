"""The corpus readers: lossless streaming, formats, the default corpus, and one-line errors."""

import json

import pytest

from sifirdan.data import corpus
from sifirdan.errors import UserError


def test_plain_file_streams_losslessly(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "BLOCK_BYTES", 64)  # force many blocks
    text = "Türkiye'nin başkenti Ankara'dır.\r\n  İstanbul\tŞişli 😀\n\n\n" * 20 + "son satır"
    p = tmp_path / "a.txt"
    p.write_bytes(text.encode("utf-8"))
    pieces = list(corpus.iter_texts(p))
    assert "".join(pieces) == text
    assert len(pieces) > 1
    # every cut is right after a newline and before a non-space character
    for piece in pieces[:-1]:
        assert piece.endswith("\n")


def test_jsonl_json_csv_and_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text('{"text": "bir"}\n\n{"text": "iki"}\n', encoding="utf-8")
    (tmp_path / "d" / "b.json").write_text(json.dumps([{"text": "üç"}, "dört"]), encoding="utf-8")
    (tmp_path / "d" / "c.csv").write_text('text,x\n"beş, altı",1\n', encoding="utf-8")
    (tmp_path / "d" / "skip.bin").write_bytes(b"\x00\x01")
    assert list(corpus.iter_texts(tmp_path / "d")) == ["bir", "iki", "üç", "dört", "beş, altı"]
    assert corpus.read_text(tmp_path / "d" / "a.jsonl") == "bir\n\niki"


def test_errors_are_one_line_and_name_the_fix(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        list(corpus.iter_texts(tmp_path / "nope.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no text files"):
        list(corpus.iter_texts(tmp_path / "empty"))
    bad = tmp_path / "bad.txt"
    bad.write_bytes("merhaba ".encode() + b"\xff\xfe" + b" dunya")
    with pytest.raises(UserError) as e:
        list(corpus.iter_texts(bad))
    msg = str(e.value)
    assert "byte offset 8" in msg and "--errors replace" in msg and "\n" not in msg
    assert "".join(corpus.iter_texts(bad, errors="replace")) == "merhaba \ufffd\ufffd dunya"
    j = tmp_path / "x.jsonl"
    j.write_text('{"body": "a"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="--text-field"):
        list(corpus.iter_texts(j))
    assert list(corpus.iter_texts(j, text_field="body")) == ["a"]


def test_default_corpus_is_offline_and_turkish():
    texts = corpus.default_corpus()  # Nutuk, read from the package
    assert len(texts) == 1 and len(texts[0]) == 1_689_306
    assert texts[0].startswith("BÖLÜM 1") and "ğ" in texts[0][:2000]

