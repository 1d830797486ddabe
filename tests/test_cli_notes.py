"""What a newcomer trips on first (issue 13): C extensions that did not build, a Python warning with a source
line in the tokenizer's output, ``tokenizer decode`` output without a final newline."""

from __future__ import annotations

import io
import sys

import pytest

import sifirdan.cli as cli
from sifirdan import notes

TINY = ["--vocab-size", "300", "--n-embd", "32", "--n-head", "2", "--n-layer", "2", "--block-size", "16",
        "--batch-size", "8", "--eval-iters", "2", "--threads", "1", "--sample-interval", "0", "--max-iters", "2"]


@pytest.fixture
def unbuilt(monkeypatch):
    """As on a machine without a C compiler: neither extension imports (None in sys.modules makes an import
    fail), the kernels see none, and this process has said nothing yet."""
    from sifirdan.kernels import ops

    for module in notes.EXTENSIONS:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setattr(ops, "_kernels", None)
    monkeypatch.setattr(notes, "_said", set())


def test_version_says_what_is_not_built_and_the_fix(unbuilt, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "BPE core: Python (C core not built)" in out and "CPU kernels: not built" in out
    note = [ln for ln in out.splitlines() if ln.startswith("note: C extensions not built")]
    assert len(note) == 1
    assert notes.TOKENIZER_CORE in note[0] and notes.KERNELS in note[0]
    assert "slower Python path" in note[0] and "install a C compiler" in note[0] and "pip install -e ." in note[0]


def test_version_is_one_line_when_everything_is_built(monkeypatch, capsys):
    monkeypatch.setattr(notes, "built", lambda module: True)
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    out = capsys.readouterr().out
    assert "BPE core: C" in out and len(out.splitlines()) == 1


def test_tokenizer_train_names_only_the_tokenizer_core(unbuilt, text_file, tmp_path, capsys):
    assert cli.main(["tokenizer", "train", "--input", str(text_file), "--vocab-size", "270", "--quiet",
                     "--out", str(tmp_path / "tok.json")]) == 0
    err = capsys.readouterr().err
    assert err.count("C extensions not built") == 1 and notes.TOKENIZER_CORE in err and notes.KERNELS not in err


def test_pretrain_says_it_once(unbuilt, text_file, tmp_path, capsys):
    """pretrain trains a tokenizer, then a model: one note for both extensions, before either starts."""
    assert cli.main(["pretrain", "--data", str(text_file), "--out", str(tmp_path / "r"), *TINY]) == 0
    err = capsys.readouterr().err
    assert err.count("C extensions not built") == 1
    assert err.index("C extensions not built") < err.index("training a BPE tokenizer")


def test_no_note_when_built(text_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(notes, "built", lambda module: True)
    monkeypatch.setattr(notes, "_said", set())
    assert cli.main(["tokenizer", "train", "--input", str(text_file), "--vocab-size", "270", "--quiet",
                     "--out", str(tmp_path / "tok.json")]) == 0
    assert "C extensions" not in capsys.readouterr().err


def test_running_out_of_merges_is_one_clean_line(tmp_path, capsys):
    small = tmp_path / "small.txt"
    small.write_text("Türk milleti Ankara'da toplandı.\n" * 3, encoding="utf-8")
    assert cli.main(["tokenizer", "train", "--input", str(small), "--vocab-size", "4000", "--quiet",
                     "--out", str(tmp_path / "tok.json")]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "no more pairs" in ln]
    assert lines and lines[0].startswith("note: the training text has no more pairs to merge: stopped at vocab size")
    assert "UserWarning" not in err and "tokenizer.py" not in err and "BPETokenizer.train(" not in err


def test_warnings_as_notes_drops_notes_when_the_block_fails(capsys):
    import warnings

    with pytest.raises(ValueError):
        with notes.warnings_as_notes():
            warnings.warn("a warning before the error")
            raise ValueError("the error")
    assert capsys.readouterr().err == ""


class _Terminal(io.TextIOWrapper):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_decode_ends_with_a_newline_on_a_terminal_only(tmp_path, monkeypatch, terminal):
    from sifirdan.tokenizer import BPETokenizer

    tok = BPETokenizer.train("Türk milleti Ankara'da toplandı.\n" * 20, 280)
    path = tok.save(tmp_path / "tok.json")
    raw = io.BytesIO()
    stdout = (_Terminal if terminal else io.TextIOWrapper)(raw, encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", stdout)
    ids = " ".join(map(str, tok.encode("Ankara'da")))
    assert cli.main(["tokenizer", "decode", "--tokenizer", str(path), "--ids", ids]) == 0
    stdout.flush()
    # a terminal gets its newline; piped or redirected output stays the exact bytes (ids -> file -> ids)
    assert raw.getvalue() == ("Ankara'da\n" if terminal else "Ankara'da").encode()
