"""The one rule every config dataclass follows when it is built from a dict (a TOML file, a checkpoint)."""

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
