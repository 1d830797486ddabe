"""The optional C extensions are optional for users without a compiler, not for this project's CI: where a C
compiler exists they must have been built, or every C-path test would skip and hide the failure."""

from __future__ import annotations

import shutil
import sys

import pytest

HAS_COMPILER = sys.platform.startswith("linux") and any(shutil.which(cc) for cc in ("cc", "gcc", "clang"))


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler here: the pure-Python/PyTorch paths are used")
@pytest.mark.parametrize("module", ["sifirdan.tokenizer._fastbpe", "sifirdan.kernels._kernels"])
def test_c_extensions_are_built_where_a_compiler_exists(module):
    try:
        __import__(module)
    except ImportError as exc:
        pytest.fail(f"{module} is not built although a C compiler exists ({exc}); run `pip install -e . -v` "
                    "and read the compiler's output")


def test_kernels_report_what_runs():
    from sifirdan import kernels

    line = kernels.describe()
    assert line and ("PyTorch" in line or "OpenMP" in line or "thread" in line)


def test_version_names_the_kernels_that_run(capsys):
    from sifirdan import kernels
    from sifirdan.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("sifirdan ") and f"CPU kernels: {kernels.describe()}" in out


def test_describe_says_what_arm_and_unbuilt_machines_get(monkeypatch):
    import types

    from sifirdan.kernels import ops

    monkeypatch.setattr(ops, "_kernels", types.SimpleNamespace(isa="generic", openmp=1))
    monkeypatch.setattr(ops.platform, "machine", lambda: "aarch64")
    assert not ops.available() and "ARM" in ops.describe() and "PyTorch" in ops.describe()
    monkeypatch.setattr(ops.platform, "machine", lambda: "x86_64")
    assert "slower than PyTorch" in ops.describe()
    monkeypatch.setattr(ops, "_kernels", None)
    assert not ops.available() and ops.describe().startswith("not built")
