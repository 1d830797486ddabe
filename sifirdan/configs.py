"""Rules every config dataclass shares: how it is built from a dict (a TOML file, a checkpoint), and how a
field with a fixed set of values is checked."""

from __future__ import annotations

import dataclasses

from sifirdan.errors import UserError


def dataclass_from_dict(cls, d: dict, section: str):
    """``cls(**d)``, but a key that is not a field is a one-line error listing the known keys."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise UserError(f"unknown {section} config key(s): {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    return cls(**d)


def check_choice(name: str, value, choices) -> None:
    """A one-line error when a field holds a value outside its fixed set."""
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
