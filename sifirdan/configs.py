"""Rules every config dataclass shares: how it is built from a dict (a TOML file, a checkpoint, the
command line), and how a field with a fixed set of values is checked."""

from __future__ import annotations

import dataclasses
import math
import re
import typing

from sifirdan.errors import UserError

# The target id the loss skips (padding, and prompt tokens a fine-tuned model does not learn to produce):
# F.cross_entropy's default ignore_index. Defined here, below both ``model`` (its loss) and ``data`` (its
# evaluation windows), so that neither package imports the other.
IGNORE_INDEX = -100

# Seeds feed torch.manual_seed and 64-bit hashes; larger ones overflow there with a traceback.
MAX_SEED = 2**63 - 1

_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}

# The devices a command runs on (``--device``, ``TrainConfig.device``); cuda:N is the GPU with index N.
# ``sifirdan.train.runtime.resolve_device`` turns a checked name into a torch.device (and finds out whether
# that device is there).
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
_DEVICE_NAME = re.compile(r"auto|(cpu|cuda|mps)(:\d+)?")


def is_int(x) -> bool:
    """An integer that is not a bool (JSON and TOML give ``true`` as a bool; Python counts it as 1)."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x) -> bool:
    """A finite int or float, not a bool: the one rule for a number read from a file or a request (inf and
    NaN are refused: NaN compares false to every bound, so a range check alone would let it through)."""
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an integer of 400 digits is valid JSON, and no float
        return False


def check_field_type(name: str, value, want) -> None:
    """A one-line error when ``value`` is not of the field's type ``want`` (bool / int / float / str).

    Strict where a wrong type would be silently misread: ``"3e-4"`` (a TOML string) is not a number, ``"no"``
    is not false, ``1.5`` is not an integer seed, ``null`` is nothing. A float field also refuses NaN and inf,
    which no hyperparameter can mean (NaN compares false to every bound, so range checks let it through).
    """
    if want is bool:
        ok = isinstance(value, bool)
    elif want is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif want is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise UserError(f"{name} must be a finite number, got {value!r}")
    elif want is str:
        ok = isinstance(value, str)
    else:
        return
    if not ok:
        fix = "write it without quotes in the config file" if isinstance(value, str) else "fix it in the config file"
        raise UserError(f"{name} must be {_KINDS[want]}, got {value!r} ({type(value).__name__}); {fix}, "
                        f"or pass --{name.replace('_', '-')} on the command line")


def dataclass_from_dict(cls, d: dict, section: str):
    """``cls(**d)``, but a key that is not a field, or a value not of its field's type, is a one-line error."""
    if not isinstance(d, dict):
        raise UserError(f"the {section} config must be a table of keys, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise UserError(f"unknown {section} config key(s): {', '.join(map(str, unknown))}; known keys: {', '.join(sorted(known))}")
    return cls(**d)  # its validate() checks the types (check_types)


def check_types(obj) -> None:
    """``check_field_type`` for every field of a config dataclass; each ``validate()`` starts with it, so a
    config built in Python is held to the same rules as one read from a file or the command line."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        check_field_type(f.name, getattr(obj, f.name), hints.get(f.name))


def check_choice(name: str, value, choices) -> None:
    """A one-line error when a field holds a value outside its fixed set."""
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def check_device(name) -> str:
    """``name`` lower-cased when it is one of ``DEVICES`` (an index allowed: cuda:1), else a one-line error."""
    if not isinstance(name, str) or not _DEVICE_NAME.fullmatch(name.strip().lower()):
        raise UserError(f"unknown device {name!r}; use {', '.join(DEVICES[:-1])} or {DEVICES[-1]}")
    return name.strip().lower()
