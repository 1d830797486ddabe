"""Atomic file and directory writes: a crash or a full disk never leaves a half-written file behind.

Everything the toolkit saves goes through here: write to a temporary sibling, flush + fsync, then
``os.replace`` (atomic on POSIX and Windows) onto the final name. A directory cannot be replaced in one
rename, so ``atomic_directory`` takes two, and ``recover_directory`` puts things right after a crash between
them. Also here: the checks that a path can be written at all, and JSON parsing that turns every way a file
can be malformed (a deep nesting included) into a one-line ``UserError``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from sifirdan.errors import UserError

# Fault injection for tests: called with (step, path) at each step of the directory swap in
# ``atomic_directory`` -- "written" (the temp directory is complete, nothing renamed yet), "old-moved" (the
# previous directory is now ``<name>.old``), "new-moved" (the new one is in place), "old-removed". A test sets it to kill the process at one step and checks the recovery.
on_swap_step: Callable[[str, Path], None] | None = None



def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the permissions an ordinary open() would (0666 minus umask)
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield a temporary directory; on success it replaces ``path`` as a whole.

    The old directory (if any) is moved aside first and deleted only after the new one is in place, so at
    every moment either the old or the new complete directory exists under ``path`` (or its ``.old`` twin).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; a checkpoint should be as readable as mkdir's
        yield tmp
        for child in tmp.iterdir():
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        _swap_step("written", path)
        old = _old_twin(path)
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
            _swap_step("old-moved", path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        _swap_step("new-moved", path)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
            _swap_step("old-removed", path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _old_twin(path: Path) -> Path:
    return path.with_name(path.name + ".old")


def _swap_step(step: str, path: Path) -> None:
    if on_swap_step is not None:
        on_swap_step(step, path)


def recover_directory(path: str | os.PathLike, is_complete: Callable[[Path], bool]) -> str | None:
    """Undo what a crash inside ``atomic_directory(path)`` left behind; returns what was done, or None.

    The swap is: write ``.<name>.XXXX.tmp`` completely, rename ``<name>`` -> ``<name>.old``, rename the temp
    directory -> ``<name>``, delete ``<name>.old``. A kill between the two renames leaves no ``<name>``: then
    the temp directory is promoted if ``is_complete`` says it is whole (it is the newer one), else
    ``<name>.old`` is restored. A leftover ``<name>.old`` beside a ``<name>`` and stale temp directories are
    deleted. Call it only while holding the run directory's lock (no other writer may be mid-swap).
    """
    path = Path(path)
    old = _old_twin(path)
    temps = sorted(path.parent.glob(f".{path.name}.*.tmp"), key=lambda p: p.stat().st_mtime, reverse=True)
    temps = [t for t in temps if t.is_dir()]
    done = None
    if not path.exists():
        complete = next((t for t in temps if is_complete(t)), None)
        if complete is not None:
            os.replace(complete, path)
            temps.remove(complete)
            done = f"promoted the complete new {path.name}/ that a crash left unrenamed"
        elif old.is_dir():
            os.replace(old, path)
            done = f"restored {path.name}/ from {old.name}/ (a crash interrupted saving the newer one)"
    if path.exists() and old.exists():
        shutil.rmtree(old)
        done = done or f"removed the leftover {old.name}/"
    for t in temps:
        shutil.rmtree(t, ignore_errors=True)
        done = done or f"removed the unfinished {t.name}/"
    _fsync_dir(path.parent)
    return done


# ------------------------------------------------------------------------------------------ writable paths
def check_writable_dir(path: str | os.PathLike, what: str, fix: str) -> None:
    """Fail now, with one line, if files cannot be created in ``path`` (created if missing).

    Run before slow work, so a read-only disk or a typo costs nothing. Permission bits are not enough (root
    ignores them, a read-only mount does not show in them): a probe file is created and removed.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder; {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".sifirdan-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{what} {path} cannot be written ({os_reason(e)}); {fix}") from None


def os_reason(e: OSError) -> str:
    """A short reason for an OS error: 'read-only file system', 'no space left on device', ..."""
    if e.errno is not None:
        return os.strerror(e.errno).lower()
    return str(e)


DISK_ERRNOS = frozenset(
    code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS, errno.EACCES, errno.EPERM,
                      errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.EFBIG)
    if code is not None
)


# ------------------------------------------------------------------------------------------ reading JSON
def parse_json(text: str, source: str, fix: str) -> Any:
    """``json.loads`` whose every failure is a one-line ``UserError`` naming ``source``.

    A hostile nesting (``[[[[...`` 100,000 deep) makes the C parser raise RecursionError at Python's recursion
    limit, before it allocates much; that becomes a message too.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{source} is not valid JSON ({e.msg} at line {e.lineno}); {fix}") from None
    except RecursionError:
        raise UserError(f"{source} nests brackets too deeply to be a file sifirdan wrote or reads; {fix}") from None


def sha256_hex(data: bytes) -> str:
    """The SHA-256 checksum files are recorded with (checkpoints, exports)."""
    import hashlib

    return hashlib.sha256(data).hexdigest()


def is_empty_dir(path: Path, ignore: tuple[str, ...] = ()) -> bool:
    """True when the folder holds nothing but the names in ``ignore`` (e.g. a run's own lock file)."""
    return all(p.name in ignore for p in Path(path).iterdir())
