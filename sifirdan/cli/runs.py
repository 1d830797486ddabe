"""What the training subcommands (``pretrain``, ``finetune``) share: flags -> ``RunSettings`` and config
overrides, and the exit code and last line of a finished run."""

from __future__ import annotations

import sys

SECTIONS = ("model", "train", "data")


def explicit_flags(args) -> dict[str, dict]:
    """{section: {field: value}} for the config flags given on the command line (``--n-embd`` is stored as
    ``model.n_embd``; a flag not given is None)."""
    out: dict[str, dict] = {s: {} for s in SECTIONS}
    for dest, value in vars(args).items():
        if "." in dest and value is not None:
            section, name = dest.split(".", 1)
            out[section][name] = value
    return out


def run_settings(args):
    """``--out`` / ``--resume`` / ``--overwrite`` as the library's ``RunSettings``."""
    from sifirdan.train import RunSettings

    return RunSettings(out=args.out, resume=args.resume, overwrite=bool(args.overwrite))


def say(msg: str) -> None:
    """A stage's progress lines: stderr, so stdout stays free for what a command outputs."""
    print(msg, file=sys.stderr, flush=True)


def finish_run(result, done_line: str) -> int:
    """The exit code of a training run (a ``StageResult``), and its last line: ``done_line`` with ``{best}``
    filled in, and ``{checkpoint}`` with the checkpoint a command given the run directory loads (``best/``, else
    ``last/``: the loader's own rule). Only the main process of a torchrun job prints it."""
    from sifirdan.train.distributed import env_dist_info

    if result.status == "diverged":
        print(f"sifirdan: error: {result.message}", file=sys.stderr)
        return 1
    if result.status == "interrupted":
        return 143 if result.signal_name == "SIGTERM" else 130
    if env_dist_info().is_main:
        best = f"{result.best_val_loss:.4f}" if result.best_val_loss is not None else "n/a"
        line = done_line.replace("{best}", best)  # not .format: paths may hold braces
        if "{checkpoint}" in line:
            from sifirdan.checkpoint import resolve_checkpoint_dir

            line = line.replace("{checkpoint}", resolve_checkpoint_dir(result.run_dir).name + "/")
        print(f"done: {result.step} steps, " + line)
    return 0
