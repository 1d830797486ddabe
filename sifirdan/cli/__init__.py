"""The ``sifirdan`` command line: one entry point, one module per subcommand.

Each module in ``COMMANDS`` has ``register(subparsers)`` that adds its parser and sets ``func``: its flags ->
settings -> one library call -> printing. No subcommand module imports another; what they share lives in
``options`` (shared flags), ``config_flags`` (flags made from config dataclasses), ``runs`` (training-run flags
and exit codes) and ``display``. Modules keep heavy imports (torch, ...) inside their functions so that
``sifirdan --help`` stays instant.
A ``UserError`` raised anywhere becomes one line on stderr and exit code 2 -- no traceback for user mistakes.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sifirdan import __version__
from sifirdan.errors import UserError
from sifirdan.fileio import DISK_ERRNOS, os_reason

# subcommand modules, in the order ``--help`` lists them (the guide's order)
COMMANDS = ["demo", "data", "tokenizer", "params", "pretrain", "finetune", "template", "eval", "eval_instruct", "generate", "chat", "serve", "interop", "attention"]


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (what is wrong, and where the help is) like every other user error,
    not the usage block plus the error. Subcommand parsers inherit the class.

    Abbreviations are refused (``allow_abbrev=False``): ``--max-iter`` must never pick ``--max-iters`` -- or
    another flag -- silently. A flag that is not the subcommand's gets the nearest one it has ("did you mean
    --max-iters?") and the subcommand's own help (``sifirdan pretrain --help``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = self._chosen(namespace)
            parser.error(f"unrecognized arguments: {' '.join(extras)}{parser._suggestion(extras)}")
        return namespace

    def _chosen(self, namespace) -> argparse.ArgumentParser:
        """The (sub)parser whose flags the command line used: the deepest subcommand given."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                name = getattr(namespace, action.dest, None)
                if name in action.choices:
                    sub = action.choices[name]
                    return sub._chosen(namespace) if isinstance(sub, Parser) else sub
        return self

    def _suggestion(self, extras: list[str]) -> str:
        import difflib

        flags = [o for o in self._option_string_actions if o.startswith("--")]
        for extra in extras:
            if extra.startswith("--"):
                close = difflib.get_close_matches(extra.split("=", 1)[0], flags, n=1, cutoff=0.6)
                if close:
                    return f"; did you mean {close[0]}?"
        return ""


class _Version(argparse.Action):
    """``--version``: sifirdan's, PyTorch's, which BPE core and which copy of the C kernels this machine runs
    (or why none), and the fix when the C extensions were not built."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        import torch

        from sifirdan import kernels
        from sifirdan import notes

        bpe = "C" if notes.built(notes.TOKENIZER_CORE) else "Python (C core not built)"
        print(f"sifirdan {__version__} (PyTorch {torch.__version__}; BPE core: {bpe}; CPU kernels: {kernels.describe()})")
        note = notes.missing_note()
        if note:
            print(note)
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="sifirdan",
        description="Sıfırdan Fine-Tuning'e: train a Turkish BPE tokenizer and GPT from scratch.",
    )
    parser.add_argument("--version", action=_Version, help="versions, which C extensions run here, and the fix when they were not built")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"sifirdan.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        # building the parser imports the config dataclasses (and so torch): a Ctrl-C there is an interrupt
        # like any other, not a traceback from inside importlib
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        result = args.func(args)
    except UserError as e:
        print(f"sifirdan: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("sifirdan: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `sifirdan generate ... | head`
        return 0
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            raise
        # the disk, not the program: a full disk or a read-only folder found mid-run gets one line, and
        # whatever was saved before (checkpoints are atomic) is still there to --resume from
        where = f" {e.filename}" if e.filename else ""
        print(f"sifirdan: error: cannot write{where} ({os_reason(e)}); free space or fix the permissions, "
              "then run the command again (a training run continues with --resume)", file=sys.stderr)
        return 1
    return int(result or 0)
