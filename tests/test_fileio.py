"""Atomic writes: whole files or nothing, with the permissions an ordinary write would give."""


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os
    import stat

    from sifirdan.fileio import atomic_directory, atomic_write_text

    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "merhaba")
        with atomic_directory(tmp_path / "ckpt") as d:
            (d / "x").write_text("1")
    finally:
        os.umask(mask)
    assert (tmp_path / "a.txt").read_text() == "merhaba"
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "ckpt").stat().st_mode) == 0o755
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
