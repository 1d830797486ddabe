"""Run directories: which folders are sifirdan's, who may write them, and how they heal after a crash.

    runs/nutuk/
      run.json           the marker: this folder is a sifirdan run (command, config hash, created)
      .lock              held (flock) by the one process writing here; it holds that process's PID
      last/  best/       checkpoints (``checkpoint.py``); only last/ has the trainer state to resume from
      tokenizer.json  metrics.jsonl  loss.png

The rules every command that writes a run directory (``pretrain``, later ``finetune``) follows:

1. **Ownership.** A folder is a run directory only if it holds ``run.json`` (or, for runs made before the
   marker existed, a sifirdan ``last/config.json``). ``--out`` naming a non-empty folder without it is refused:
   sifirdan never writes into, or deletes from, a folder it does not own.
2. **No silent reuse.** ``--out`` naming an existing run is refused unless ``--resume`` (continue it) or
   ``--overwrite`` (delete the run's own files -- never anything else in the folder -- and start anew).
3. **One writer.** An exclusive ``flock`` on ``.lock`` for the whole run; the OS releases it when the process
   dies, even by ``kill -9``, so a stale lock never blocks anyone. A second run on the same folder is refused
   with the PID of the first.
4. **Repair.** Saving a checkpoint swaps directories with two renames (``fileio.atomic_directory``); a crash
   between them leaves ``last.old`` and a temp directory. Opening the run puts ``last/`` back (the newer copy
   if it is complete and its checksums verify, else the older one) and removes what is stale.

``check_out_dir`` does the read-only part of this (plus a probe that the folder can be written), so commands
run it before any slow work; ``RunDir.open`` repeats the checks under the lock and then writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from sifirdan import __version__
from sifirdan.errors import UserError
from sifirdan.fileio import atomic_write_text, check_writable_dir, is_empty_dir, os_reason, parse_json, recover_directory

MARKER = "run.json"
LOCK = ".lock"
MARKER_FORMAT = "sifirdan-run"
CHECKPOINTS = ("last", "best")
# what a run writes at its top level; ``--overwrite`` deletes these and nothing else
RUN_FILES = ("tokenizer.json", "metrics.jsonl", "loss.png", MARKER)
MODES = ("new", "resume", "overwrite")

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here; runs are not protected against a second writer
    fcntl = None


def config_hash(sections: dict) -> str:
    """sha256 of the run's configuration (canonical JSON): the same settings give the same hash."""
    canon = json.dumps(sections, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def _is_run(path: Path) -> bool:
    if (path / MARKER).is_file():
        return True
    # a run made before run.json existed: a sifirdan checkpoint in last/ or best/
    for sub in CHECKPOINTS:
        cfg = path / sub / "config.json"
        try:
            if cfg.is_file() and '"sifirdan-checkpoint"' in cfg.read_text(encoding="utf-8", errors="replace")[:4096]:
                return True
        except OSError:
            pass
    return False


def _has_checkpoint(path: Path) -> bool:
    """A last/ checkpoint, or what a crash while saving one leaves (``repair_checkpoints`` restores it)."""
    return (
        (path / "last" / "config.json").is_file()
        or (path / "last.old" / "config.json").is_file()
        or any(t.is_dir() for t in path.glob(".last.*.tmp"))
    )


def check_out_dir(path: str | os.PathLike, mode: str, flag: str = "--out", _locked: bool = False) -> Path:
    """The read-only checks of the rules above, and a probe that the folder can be written; returns the path.

    Nothing is left behind: a folder that does not exist yet is not created (its nearest existing parent is
    probed instead).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    path = Path(path)
    fix = f"pick a folder you can write (e.g. {flag} runs/first)"
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; {fix}")
    if not _locked and path.is_dir():
        holder = lock_holder(path)
        if holder is not None:
            raise _in_use(path, holder, flag)
    if mode == "resume":
        if not path.is_dir() or not _is_run(path):
            raise UserError(f"{path} is not a sifirdan run directory (no {MARKER}); check the path or start a new run with --out")
        if not _has_checkpoint(path):
            raise UserError(f"{path} has no last/ checkpoint to resume from (best/ holds weights only, for generate "
                            f"and eval); start it again with --out {path} --overwrite")
    elif path.is_dir() and not is_empty_dir(path, (LOCK,)):
        if not _is_run(path):
            raise UserError(
                f"{flag} {path} is a folder that is not empty and is not a sifirdan run (no {MARKER}); "
                "sifirdan never writes into such a folder: pick a new or empty one"
            )
        if mode == "new":
            raise UserError(f"{path} already holds a run; continue it with --resume {path}, "
                            f"replace it with --overwrite, or pick another {flag}")
    target = path
    while not target.exists():  # the folder would be created inside its nearest existing parent
        target = target.parent
    if not target.is_dir():
        raise UserError(f"{flag} {path} is inside {target}, which is a file; {fix}")
    check_writable_dir(target, flag if target == path else f"{flag} {path}: its parent", fix)
    return path


class RunDir:
    """An open run directory: locked by this process until ``close()``."""

    def __init__(self, path: Path, made: str | None, lock_fd: int | None, repairs: list[str], parents: int = 0):
        self.path = path
        self.made = made  # "folder": this process created it; "files": it was empty; None: a run was there
        self.parents = parents  # folders above it this process created too (--out runs/new/r: runs/new)
        self._lock_fd = lock_fd
        self.repairs = repairs  # what recovery did on open, for the log

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str, command: str, config: dict | None = None, flag: str = "--out") -> RunDir:
        """Check, lock, repair and mark ``path`` (see the module docstring); the lock is held until close()."""
        path = Path(path)
        check_out_dir(path, mode, flag)
        made = None if path.is_dir() and not is_empty_dir(path, (LOCK,)) else ("files" if path.is_dir() else "folder")
        parents = 0
        while made == "folder" and not path.parents[parents].exists():
            parents += 1
        run = cls(path, made, None, [], parents)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            run._remove_made()  # mkdir may have made some of the parents before it failed
            raise UserError(f"{flag} {path} cannot be created ({os_reason(e)}); pick a folder you can write") from None
        try:
            run._lock_fd = _lock(path, flag)
            check_out_dir(path, mode, flag, _locked=True)  # again, now that no other sifirdan process can change it
            run.repairs = [r for r in (repair_checkpoints(path),) if r]
            if mode == "resume" and not (path / "last" / "config.json").is_file():
                raise UserError(f"{path} has no complete last/ checkpoint to resume from; start it again with "
                                f"--out {path} --overwrite")
            if mode == "overwrite":
                clear_run(path)
            if not (mode == "resume" and (path / MARKER).is_file()):  # resuming leaves the marker as it is
                if mode == "resume":  # a run from before the marker existed: its config is in last/
                    from sifirdan.checkpoint import read_config

                    saved = read_config(path / "last")
                    config = {k: saved.get(k) for k in ("model", "train", "data")}
                write_marker(path, command, config)
        except BaseException:
            # only unlock: what is in the folder now may be another run's (one that got the lock first)
            run.close()
            raise
        return run

    def close(self) -> None:
        _unlock(self._lock_fd)
        self._lock_fd = None

    def abandon(self) -> None:
        """Undo a new run that failed before it saved a checkpoint (a bad input found late, a crash): remove
        what it wrote -- the folder itself, and the parents it created with it, if this process created it."""
        if self.made and not _has_checkpoint(self.path) and not (self.path / "best").exists():
            if self.made == "folder":
                self._remove_made()
            else:
                clear_run(self.path)
                (self.path / LOCK).unlink(missing_ok=True)
        self.close()

    def _remove_made(self) -> None:
        """Remove the folder this process created and the parents it created with it, nearest first; a
        parent that is not empty (another program put something there since) stops it."""
        shutil.rmtree(self.path, ignore_errors=True)
        for parent in self.path.parents[: self.parents]:
            try:
                parent.rmdir()
            except FileNotFoundError:  # mkdir failed before it got here
                continue
            except OSError:
                break

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_marker(path: Path, command: str, config: dict) -> None:
    marker = {
        "format": MARKER_FORMAT,
        "format_version": 1,
        "command": command,
        "config_hash": config_hash(config),
        "sifirdan_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(path / MARKER, json.dumps(marker, indent=2) + "\n")


def read_marker(path: Path) -> dict:
    try:
        text = (path / MARKER).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path / MARKER} cannot be read ({e}); restore it or start a new run") from None
    marker = parse_json(text, str(path / MARKER), "restore it or start a new run")
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        raise UserError(f"{path / MARKER} is not a sifirdan run marker; this folder is not a sifirdan run")
    return marker


def repair_checkpoints(path: Path) -> str | None:
    """Recover ``last/`` and ``best/`` from an interrupted swap (rule 4); returns what was done."""
    from sifirdan.checkpoint import verify_checkpoint_dir

    done = [r for r in (recover_directory(path / sub, verify_checkpoint_dir) for sub in CHECKPOINTS) if r]
    for stale in path.glob(".*.tmp"):  # an atomic_write_bytes temp file a kill left behind
        if stale.is_file():
            stale.unlink(missing_ok=True)
    return "; ".join(done) or None


def clear_run(path: Path) -> None:
    """``--overwrite``: delete what a run writes (checkpoints, metrics, plots, temp files) -- nothing else."""
    for sub in CHECKPOINTS:
        for p in (path / sub, path / f"{sub}.old", *path.glob(f".{sub}.*.tmp")):
            if p.is_dir():
                shutil.rmtree(p)
    for name in RUN_FILES:
        (path / name).unlink(missing_ok=True)


def _lock(path: Path, flag: str) -> int | None:
    if fcntl is None:
        return None
    lock = path / LOCK
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"{flag} {path} cannot be written ({os_reason(e)}); pick a folder you can write") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pid = _read_pid(fd)
        os.close(fd)
        raise _in_use(path, pid, flag) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
    except OSError:
        return "unknown"


def _in_use(path: Path, pid: str, flag: str) -> UserError:
    return UserError(f"{path} is in use by another sifirdan run (PID {pid}); wait for it to finish, stop it, "
                     f"or pick another {flag}")


def lock_holder(path: Path) -> str | None:
    """The PID of the process holding the run's lock, or None when nobody holds it (tested without keeping it)."""
    if fcntl is None or not (path / LOCK).is_file():
        return None
    try:
        fd = os.open(path / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return _read_pid(fd)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _unlock(fd: int | None) -> None:
    if fd is None:
        return
    try:
        os.ftruncate(fd, 0)
    except OSError:
        pass
    os.close(fd)  # closing the descriptor releases the flock


__all__ = ["MARKER", "RunDir", "check_out_dir", "clear_run", "config_hash", "read_marker", "repair_checkpoints"]
