"""DataConfig: the settings that decide how raw text becomes train/val data; every step reads it, so it is its own module.

The CLI builds it from flags (``--val-fraction``, ``--dedup-min-chars``, ``--errors``, ``--text-field``) and every
field is part of the token-bin cache key. It imports no other module of ``sifirdan.data``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sifirdan.configs import check_choice, check_types
from sifirdan.errors import UserError

# what to do with bytes that are not valid UTF-8 (Python's codec error handlers of these names)
ENCODING_ERRORS = ("strict", "replace", "ignore")
# fields that take one of a fixed set of values: validate() checks them, the CLI offers them as choices
FIELD_CHOICES = {"errors": ENCODING_ERRORS}


@dataclass
class DataConfig:
    """How raw text becomes train/val data. Every field is part of the token-bin cache key."""

    dedup: bool = True  # drop exact repeats of long lines (see module docstring)
    dedup_min_chars: int = 40  # only lines at least this long (after strip) are deduplicated
    val_fraction: float = 0.1  # the last this-fraction of characters is the validation split
    errors: str = "strict"  # invalid UTF-8: "strict" (fail with a message), "replace" or "ignore"
    text_field: str = "text"  # the field holding the text in jsonl / json / csv records

    def validate(self) -> DataConfig:
        check_types(self)
        vf = self.val_fraction
        if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not (0.0 < float(vf) < 1.0) or math.isnan(vf):
            raise UserError(f"val_fraction must be between 0 and 1 (exclusive), not {vf!r}; e.g. --val-fraction 0.1")
        n = self.dedup_min_chars
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(f"dedup_min_chars must be a positive integer, not {n!r}; e.g. --dedup-min-chars 40")
        for name, choices in FIELD_CHOICES.items():
            check_choice(name, getattr(self, name), choices)
        if not isinstance(self.text_field, str) or not self.text_field:
            raise UserError(f"text_field must be a non-empty field name, not {self.text_field!r}; e.g. --text-field text")
        if not isinstance(self.dedup, bool):
            raise UserError(f"dedup must be true or false, not {self.dedup!r}")
        return self
