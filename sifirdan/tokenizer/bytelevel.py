"""GPT-2's byte <-> printable-character mapping, used to store byte tokens as JSON strings.

Hugging Face's byte-level BPE writes every token as a string in which each *byte* is one printable
character: bytes that are already printable and visible map to themselves, the rest (control characters,
space, ...) to characters from U+0100 upwards -- a space becomes ``Ġ``, a newline ``Ċ``.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Byte value -> the character that stands for it in tokenizer.json (a bijection over 0..255)."""
    visible = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in visible}
    n = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + n)
            n += 1
    return mapping


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def token_to_str(token: bytes) -> str:
    m = bytes_to_unicode()
    return "".join(m[b] for b in token)


def str_to_token(s: str) -> bytes | None:
    """The bytes a tokenizer.json token string stands for, or None if it is not a byte-level string."""
    m = unicode_to_bytes()
    try:
        return bytes(m[c] for c in s)
    except KeyError:
        return None
