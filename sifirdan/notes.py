"""One-line notes: C extensions that were not built, and library warnings (stderr, or a caller's ``log``).

``pip install -e .`` compiles two optional C extensions (setup.py). Without a C compiler the install still
succeeds, silently, and sifirdan runs its slower paths; ``c_extensions`` is how a user finds out (``sifirdan
--version``, training, tokenizer training), once per process, with the fix. ``warnings_as_notes`` turns a
library warning (the tokenizer's "stopped at vocab size ...") into one line instead of Python's two, the
second of which is a source line that means nothing to a user.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import warnings
from typing import Callable

TOKENIZER_CORE = "sifirdan.tokenizer._fastbpe"
KERNELS = "sifirdan.kernels._kernels"
# each extension, and what runs without it
EXTENSIONS = {
    TOKENIZER_CORE: "the tokenizer uses its slower Python path",
    KERNELS: "CPU training uses PyTorch's ops, not sifirdan's faster kernels",
}
FIX = "install a C compiler (e.g. `apt-get install build-essential`) and run `pip install -e .` again"

_said: set[str] = set()  # extensions already reported by this process


def built(module: str) -> bool:
    """True when the extension imports (a stale or foreign-ABI build fails here as a missing one does)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def missing_note(modules=tuple(EXTENSIONS)) -> str | None:
    """The line for the extensions of ``modules`` that are not built, or None when all are."""
    gone = [m for m in modules if not built(m)]
    if not gone:
        return None
    return f"note: C extensions not built ({', '.join(gone)}): {'; '.join(EXTENSIONS[m] for m in gone)}; {FIX}"


def to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def c_extensions(modules=tuple(EXTENSIONS), main: bool = True, log: Callable[[str], None] | None = None) -> None:
    """``missing_note`` to ``log`` (default: stderr), once per process for each extension (pretrain trains a
    tokenizer and then a model: one note, not two)."""
    if not main:
        return
    note = missing_note([m for m in modules if m not in _said])
    _said.update(modules)
    if note:
        (log or to_stderr)(note)


@contextlib.contextmanager
def warnings_as_notes(log: Callable[[str], None] | None = None):
    """Warnings raised inside the block, printed after it as ``note: MESSAGE``, one line each.

    The filters in force are kept (a warning Python would hide stays hidden). When the block raises, the
    notes are dropped: the error is the one line that matters then."""
    with warnings.catch_warnings(record=True) as caught:
        yield
    for w in caught:
        (log or to_stderr)(f"note: {w.message}")
