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
