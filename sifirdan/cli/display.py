"""How the commands show text a model or a data file gave them: on one terminal line, safely."""

from __future__ import annotations

SHOW_CHARS = 160


def one_line(text: str, limit: int = SHOW_CHARS) -> str:
    """One line, safe for a terminal: a newline shows as \\n, control characters as escapes; cut at ``limit``."""
    text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
