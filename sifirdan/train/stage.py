"""What the two training stages (``pretrain``, ``finetune``) share: where a run writes (``RunSettings``), what
a stage returns (``StageResult``), how it reports (``Log``), and the run directory's life around the loop.

The run-directory rules are sifirdan/rundir.py's: the read-only checks come first, a resumed run is locked at
once, a new run's directory is opened only after every input check has passed, and a new run that stops before
its first checkpoint leaves ``out`` as it was found.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sifirdan.errors import UserError

Log = Callable[[str], None]
_logger = logging.getLogger("sifirdan")


@dataclass
class RunSettings:
    """Where a stage writes: ``out`` a new (or empty) folder, ``out`` + ``overwrite`` a fresh start over an
    earlier sifirdan run, or ``resume`` an earlier run continued bit-exactly in its own folder."""

    out: str | Path | None = None
    resume: str | Path | None = None
    overwrite: bool = False


@dataclass
class StageResult:
    """What a stage produced: the run directory (checkpoints ``last/`` and ``best/``, ``metrics.jsonl``) and
    how the loop ended. ``status``: "done", "interrupted" (a signal; ``signal_name``) or "diverged"
    (``message`` says why)."""

    run_dir: Path
    status: str
    step: int
    best_val_loss: float | None = None
    final: dict | None = None  # the full validation pass: loss, bits per byte / char, ...
    message: str = ""
    signal_name: str | None = None

    @classmethod
    def of(cls, run_dir: Path, result) -> StageResult:
        return cls(Path(run_dir), result.status, result.step, result.best_val_loss, result.final,
                   result.message, result.signal_name)


def reporter(log: Log | None, main: bool) -> Log:
    """The stage's one way to say something: ``log`` (default: the ``sifirdan`` logger at INFO) on the main
    process, nothing on the others."""
    if not main:
        return lambda msg: None
    return log or _logger.info


def open_run_dir(run: RunSettings, command: str, main: bool, say: Log, example: str = "runs/first"):
    """``out`` / ``resume`` / ``overwrite`` -> ``(out, mode, run_dir)``: the read-only checks of
    sifirdan/rundir.py now. A resumed run is locked (and a crashed save repaired) at once -- resuming writes
    nothing new before training, and the checkpoint read next must be the one this process continues; a new
    run's directory is opened only after every input check has passed (``run_dir`` is None then)."""
    from sifirdan import rundir

    run_dir = None
    if run.resume:
        out = Path(run.resume)
        if run.out and Path(run.out).resolve() != out.resolve():
            raise UserError(f"--out {run.out} differs from --resume {run.resume}; a resumed run stays in its directory (drop --out)")
        if run.overwrite:
            raise UserError("--overwrite starts a run anew and --resume continues one; give one of them")
        mode = "resume"
    else:
        if not run.out:
            raise UserError(f"--out RUN_DIR is required (where checkpoints and metrics go); e.g. --out {example}")
        out = Path(run.out)
        mode = "overwrite" if run.overwrite else "new"
    if main:
        rundir.check_out_dir(out, mode)
        if mode == "resume":
            run_dir = rundir.RunDir.open(out, mode, command, {})
            for note in run_dir.repairs:
                say(f"repaired {out}: {note}")
    return out, mode, run_dir


class RunGuard:
    """The run directory and the process group around a stage's work: ``with RunGuard(mode, run_dir, dist)
    as guard:``; ``guard.run_dir`` may be set inside once it is opened, ``guard.finished`` once training ends.

    A new run that stops before its first checkpoint (a bad input found late, a crash, Ctrl-C during
    start-up) has nothing to resume: its folder is left as it was found (``abandon`` keeps any checkpoint)."""

    def __init__(self, mode: str, run_dir, dist):
        self.mode, self.run_dir, self.dist, self.finished = mode, run_dir, dist, False

    def __enter__(self) -> RunGuard:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        from sifirdan.train.distributed import shutdown_distributed

        try:
            if exc_type is not None and self.run_dir is not None and self.mode != "resume":
                self.run_dir.abandon()
        finally:
            shutdown_distributed(wait_for_others=self.finished)
            if self.run_dir is not None:
                self.run_dir.close()
        return False
