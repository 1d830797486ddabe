"""The prompt boost: logit bonuses that let a small model restate its prompt's words (beyond the guide).

Why: the Nutuk answers restate their question ("Mavri Mira heyeti nerede teşekkül etmişti?" -> "Mavri Mira
heyeti İstanbul Rum Patrikhanesi'nde teşekkül etmişti."), but a 1.3 M-parameter model trained for minutes on
1.5 M characters learns no induction heads: it cannot copy a name from its context (bench/RESULTS.md, "answer
anatomy": a span read twice is predicted barely better the second time). So it opens every answer the same way,
whatever was asked. The boost does in the sampler what its attention cannot:

* ``boost``: every word token of the prompt (letters, digits, the apostrophe before a suffix; no punctuation,
  never a special token) that the answer has not written yet gets ``+boost`` on its logit. Once written it gets
  no more, so the boost cannot start a loop.
* ``follow``: after the answer writes a token that appears in the prompt, each token that follows it there gets
  ``+follow``, so a name split into several BPE pieces ("Mav" "ri" " Mira") comes out whole.

Measured on the five held-out Nutuk folds (bench/RESULTS.md, "the prompt boost"): token F1 0.125 -> 0.160 greedy
and 0.125 -> 0.157 sampled at (4, 2), every answer still ending. A larger ``follow`` reads the question back: at
follow 8 F1 rises to 0.167, but 28 % of the answers open with the whole question, so the default stops at 2 (none
does) and punctuation is never boosted.

The engine and the continuous batcher keep one ``PromptBoost`` per row; ``apply`` costs one vector add and a
handful of scalar adds a step.
"""

from __future__ import annotations

import torch

# a suffix follows a proper name after an apostrophe in Turkish (Sivas'a, Mustafa Kemal'in): part of the word
_APOSTROPHES = "'\u2019"


def copyable_mask(tokenizer, vocab_size: int) -> torch.Tensor:
    """(vocab_size,) bool: True for the ids whose text is a word or a word piece -- letters, digits, spaces and the
    apostrophe before a suffix, at least one letter or digit -- the tokens a boost may raise. Special tokens
    (``<|endoftext|>``, the chat template's) and anything with punctuation are False: boosting "?" (or "dir?")
    makes answers read the question back, and boosting an end id ends them early.

    A byte-level token may hold part of a character ("İ" is two bytes, and a small vocabulary can split them):
    such bytes count as a letter's, and only its whole ASCII characters are checked."""
    special = set(getattr(tokenizer, "special_tokens", {}).values())
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    for i in range(vocab_size):
        if i in special:
            continue
        try:
            data = tokenizer.decode_bytes([i])
        except Exception:  # an id without bytes (a gap in a loaded vocabulary) is never boosted
            continue
        try:
            chars = data.decode("utf-8")
        except UnicodeDecodeError:  # part of a character: its non-ASCII bytes stand for a letter
            chars = "".join(chr(b) if b < 0x80 else "a" for b in data)
        mask[i] = any(c.isalnum() for c in chars) and all(c.isalnum() or c.isspace() or c in _APOSTROPHES for c in chars)
    return mask


class PromptBoost:
    """One row's boost state: which prompt tokens the answer has not used yet, and what follows what."""

    def __init__(self, prompt_ids, copyable: torch.Tensor, boost: float, follow: float):
        self.boost = float(boost)
        self.follow = float(follow)
        V = copyable.shape[0]
        ok = copyable.tolist()
        ids = [i for i in prompt_ids if 0 <= i < V and ok[i]]
        # +boost on the prompt word tokens the answer has not written yet, 0 elsewhere: kept as the float vector
        # that is added, so a step does no conversion
        self.bonus = torch.zeros(V, dtype=torch.float32, device=copyable.device)
        if ids and self.boost:
            self.bonus[torch.tensor(ids, device=copyable.device)] = self.boost
        # token -> tokens that follow it in the prompt (both word tokens): at most one entry per prompt token
        self.follows: dict[int, list[int]] = {}
        for a, b in zip(prompt_ids, prompt_ids[1:]):
            if 0 <= a < V and 0 <= b < V and ok[a] and ok[b]:
                nexts = self.follows.setdefault(a, [])
                if b not in nexts:
                    nexts.append(b)
        self.last: int | None = None  # the answer's last token

    def apply(self, logits: torch.Tensor) -> None:
        """Add the bonuses to one row's logits (V',) in place (V' may be shorter than the mask: the sampler's
        vocabulary)."""
        V = logits.shape[-1]
        if self.boost:
            logits += self.bonus[:V]
        if self.follow and self.last is not None:
            for t in self.follows.get(self.last, ()):
                if t < V:
                    logits[t] += self.follow

    def push(self, token: int) -> None:
        """The answer wrote ``token``: it is no longer boosted, and it is what the follow bonus follows."""
        if 0 <= token < self.bonus.shape[0]:
            self.bonus[token] = 0.0
        self.last = token
