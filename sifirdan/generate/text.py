"""Token ids -> text, one step at a time, for streaming.

Two problems, one class each:

* ``IncrementalDetokenizer``: a byte-level token can end in the middle of a multi-byte UTF-8 character
  (Turkish "ş" is 2 bytes, an emoji 4, and BPE may cut anywhere). Decoding every token on its own would
  print replacement characters. We feed the raw bytes (``decode_bytes``) to an incremental UTF-8 decoder,
  which holds back an incomplete character until its last byte arrives. It uses the tokenizer's own error
  handler, so invalid bytes become exactly what ``tokenizer.decode`` makes of them: the concatenated pieces
  always equal ``tokenizer.decode(all_ids)``.
* ``StopStringMatcher``: the text must end right *before* a stop string, and a stream must never have
  printed the start of one ("\\nUser" arriving as "\\nUs" + "er"), so text that could still grow into a stop
  string is held back until it either completes one (stop) or cannot any more (emit).
"""

from __future__ import annotations

import codecs

from sifirdan.tokenizer.base import DECODE_ERRORS as TOKENIZER_DECODE_ERRORS  # the handler tokenizer.decode uses


class IncrementalDetokenizer:
    def __init__(self, tokenizer):
        self._decode_bytes = tokenizer.decode_bytes
        # Python's incremental UTF-8 decoder keeps an incomplete sequence at the end of each chunk pending
        # (it only calls the error handler once a sequence is certainly invalid, or at the final flush), so
        # chunked decoding with the same handler gives exactly the one-shot ``decode`` -- including the
        # tokenizer's lone-surrogate case (ED A0..BF xx). tests/test_generate_stream.py checks this.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors=TOKENIZER_DECODE_ERRORS)

    def push(self, ids) -> str:
        """Add token ids; return the text of every character they completed ('' if none)."""
        return self._decoder.decode(self._decode_bytes(ids), final=False)

    def flush(self) -> str:
        """The end of the text: bytes of a character that never completed become what decode makes of them."""
        return self._decoder.decode(b"", final=True)


class StopStringMatcher:
    def __init__(self, stops: tuple[str, ...]):
        self.stops = tuple(stops)
        self._held = ""  # text not emitted yet because it could be the start of a stop string

    def push(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit, whether a stop string appeared). After True, stop feeding."""
        if not self.stops:
            return text, False
        buf = self._held + text
        # No stop string can start inside text already emitted (it would have been held), so searching the
        # held part plus the new text finds the first one.
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._held = ""
            return buf[: min(hits)], True
        hold = 0  # length of the longest tail of buf that is a proper prefix of some stop string
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:n]):
                    hold = n
                    break
        self._held = buf[len(buf) - hold :]
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        """The text ended without a stop string: release what was held back."""
        out, self._held = self._held, ""
        return out
