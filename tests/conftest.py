import os
import random
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep token-bin caches of tests out of the user's ~/.cache."""
    monkeypatch.setenv("SIFIRDAN_CACHE", str(tmp_path_factory.getbasetemp() / "sifirdan-cache"))


@pytest.fixture(autouse=True)
def _denormals_back_on():
    """The trainer turns on flush-to-zero for denormal floats (TrainConfig.flush_denormal), a processor flag
    that outlives the test: later tests (hypothesis's subnormal floats, sampling at 1e-320) would see it. Every
    test starts from the process default."""
    yield
    import torch

    torch.set_flush_denormal(False)


@pytest.fixture
def nutuk_path(tmp_path_factory) -> Path:
    """Nutuk as a file: the copy bundled with sifirdan (tests/test_catalog.py holds it equal to the guide's)."""
    from sifirdan.data import catalog

    return catalog.materialize("nutuk", tmp_path_factory.getbasetemp() / "bundled")


@pytest.fixture
def one_thread():
    """Tiny models: one torch thread is fastest, and two threads on a busy 2-core machine stall on each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY_WORDS = "Türk milleti Ankara Meclis egemenlik istiklal cumhuriyet ordu halk vatan ve bir bu için ile çok büyük".split()


def write_tiny_text(path: Path, lines: int = 400) -> Path:
    """A small Turkish-looking text (seeded): enough for a tiny model to train a few steps on."""
    rng = random.Random(0)
    path.write_text("".join(" ".join(rng.choice(TINY_WORDS) for _ in range(rng.randint(5, 12))) + ".\n"
                            for _ in range(lines)), encoding="utf-8")
    return path


@pytest.fixture
def text_file(tmp_path):
    return write_tiny_text(tmp_path / "tiny.txt")
