"""The ``sifirdan`` command line: one entry point, one module per subcommand.

Each module in ``COMMANDS`` has ``register(subparsers)`` that adds its parser and sets ``func``. Modules keep
heavy imports (torch, ...) inside their functions so that ``sifirdan --help`` stays instant.
A ``UserError`` raised anywhere becomes one line on stderr and exit code 2 -- no traceback for user mistakes.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sifirdan import __version__
from sifirdan.errors import UserError

# subcommand modules, in the order ``--help`` lists them (the guide's order)
COMMANDS = ["tokenizer", "params", "pretrain", "eval", "generate", "attention"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sifirdan",
        description="Sıfırdan Fine-Tuning'e: train a Turkish BPE tokenizer and GPT from scratch.",
    )
    parser.add_argument("--version", action="version", version=f"sifirdan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"sifirdan.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except UserError as e:
        print(f"sifirdan: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("sifirdan: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `sifirdan generate ... | head`
        return 0
    return int(result or 0)
