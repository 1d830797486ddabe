import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep token-bin caches of tests out of the user's ~/.cache."""
    monkeypatch.setenv("SIFIRDAN_CACHE", str(tmp_path_factory.getbasetemp() / "sifirdan-cache"))


@pytest.fixture
def nutuk_path() -> Path:
    p = SHARED_DATA / "nutuk.txt"
    if not p.is_file():
        pytest.skip(f"needs the guide's corpus at {p} (../shared/data beside the repo); not present here")
    return p


@pytest.fixture
def one_thread():
    """Tiny models: one torch thread is fastest, and two threads on a busy 2-core machine stall on each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
