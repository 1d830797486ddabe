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
