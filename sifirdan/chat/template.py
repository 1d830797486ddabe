"""The chat template: how a conversation becomes token ids, and which of them a fine-tuned model learns.

The guide's format (§9), with its tags as atomic special tokens:

    <|endoftext|><INST>instruction</INST><RESP>response</RESP><INST>next question</INST><RESP>...</RESP>

  * ``<|endoftext|>`` first: pre-training put it between documents, so it tells the model a new text begins
    (the guide has no such token; a template without it is ``ChatTemplate(bos=None)``).
  * Multi-turn: consecutive INST/RESP pairs, oldest first.
  * A system message goes inside the first INST, before the user's text and separated from it by a blank
    line: ``<INST>system\\n\\nuser</INST>`` -- the model meets it where it meets instructions, and the
    template needs no tag the pre-trained tokenizer lacks.
  * User and assistant text is encoded with no special tokens allowed: someone typing ``</RESP>`` or
    ``<INST>`` gets those characters, never the control tokens.

``render(conversation) -> (ids, loss_mask)``: the mask is 1 exactly on the assistant's tokens and their
``</RESP>`` (what a fine-tuned model should produce, including where to stop), 0 on everything else.
``render_prompt(conversation)`` renders the turns so far and ends with ``<RESP>``: the model answers, and
generation stops at ``</RESP>`` (or ``<|endoftext|>``, see ``stop_ids``).

One home for the format: fine-tuning, ``sifirdan chat``, ``generate --instruction`` and ``template show`` all
use this module, and the template is saved in each fine-tuned checkpoint's ``config.json`` (``chat_template``),
so nothing downstream guesses it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sifirdan.errors import UserError

ROLES = ("system", "user", "assistant")
TEMPLATE_KEY = "chat_template"  # the config.json key a fine-tuned checkpoint stores its template under


@dataclass(frozen=True)
class ChatTemplate:
    inst_open: str = "<INST>"
    inst_close: str = "</INST>"
    resp_open: str = "<RESP>"
    resp_close: str = "</RESP>"
    bos: str | None = "<|endoftext|>"  # first token of every rendered conversation; None = none
    system_separator: str = "\n\n"  # between a system message and the first user message, inside <INST>
    name: str = "sifirdan-inst"

    # ------------------------------------------------------------------------------------------------ tokens
    @property
    def special_tokens(self) -> tuple[str, ...]:
        """The special tokens this template needs in the tokenizer (fine-tuning adds any that are missing)."""
        tags = (self.inst_open, self.inst_close, self.resp_open, self.resp_close)
        return tuple(dict.fromkeys(((self.bos,) if self.bos else ()) + tags))

    def missing_tokens(self, tokenizer) -> list[str]:
        return [t for t in self.special_tokens if t not in tokenizer.special_tokens]

    def _ids(self, tokenizer) -> dict[str, int]:
        missing = self.missing_tokens(tokenizer)
        if missing:
            raise UserError(
                f"the tokenizer has no special token(s) {', '.join(missing)} that the chat template needs; "
                "fine-tune the model with `sifirdan finetune` (it adds them) or use a tokenizer from `sifirdan tokenizer train`"
            )
        return {t: tokenizer.special_tokens[t] for t in self.special_tokens}

    def stop_ids(self, tokenizer) -> tuple[int, ...]:
        """Ids that end an answer: ``</RESP>``, and ``<|endoftext|>`` when the tokenizer has it."""
        ids = [self._ids(tokenizer)[self.resp_close]]
        if tokenizer.eot_id is not None and tokenizer.eot_id not in ids:
            ids.append(tokenizer.eot_id)
        return tuple(ids)

    def suppressed_ids(self, tokenizer) -> tuple[int, ...]:
        """Ids an answer never contains: every special token of the tokenizer except those that end the answer
        (``stop_ids``). A sampled ``</INST>`` mid-answer is a leak; generation suppresses these instead."""
        stop = set(self.stop_ids(tokenizer))
        return tuple(sorted(i for i in tokenizer.special_tokens.values() if i not in stop))

    # ------------------------------------------------------------------------------------------------ render
    def render(self, conversation: Sequence[Mapping], tokenizer) -> tuple[list[int], list[int]]:
        """A whole conversation (ending with an assistant turn) -> ``(ids, loss_mask)``, equal lengths."""
        turns, system = self._turns(conversation, want_last="assistant")
        ids, mask = self._begin(tokenizer)
        for i, (user, assistant) in enumerate(turns):
            self._add_instruction(ids, mask, tokenizer, user, system if i == 0 else None)
            answer = tokenizer.encode(assistant) + [self._ids(tokenizer)[self.resp_close]]
            ids += answer
            mask += [1] * len(answer)
        return ids, mask

    def render_prompt(self, conversation: Sequence[Mapping], tokenizer) -> list[int]:
        """The conversation so far (ending with a user turn) -> ids ending with ``<RESP>``, ready to generate."""
        turns, system = self._turns(conversation, want_last="user")
        ids, mask = self._begin(tokenizer)
        close = self._ids(tokenizer)[self.resp_close]
        for i, (user, assistant) in enumerate(turns):
            self._add_instruction(ids, mask, tokenizer, user, system if i == 0 else None)
            if assistant is not None:
                ids += tokenizer.encode(assistant) + [close]
        return ids

    def render_parts(self, conversation: Sequence[Mapping], tokenizer) -> tuple[list[int], list[int]]:
        """``(prompt_ids, answer_ids)`` for a conversation ending with an assistant turn: the prompt is
        ``render_prompt`` of everything before the last answer, the answer is that answer plus ``</RESP>``.
        ``prompt_ids + answer_ids == render(...)[0]``; fine-tuning uses the split to truncate an answer."""
        ids, mask = self.render(conversation, tokenizer)
        start = len(ids)
        while start > 0 and mask[start - 1] == 1:  # the last answer is the final run of 1s in the mask
            start -= 1
        return ids[:start], ids[start:]

    def _begin(self, tokenizer) -> tuple[list[int], list[int]]:
        special = self._ids(tokenizer)
        ids = [special[self.bos]] if self.bos else []
        return ids, [0] * len(ids)

    def _add_instruction(self, ids, mask, tokenizer, user: str, system: str | None) -> None:
        special = self._ids(tokenizer)
        text = user if system is None else system + self.system_separator + user
        part = [special[self.inst_open]] + tokenizer.encode(text) + [special[self.inst_close], special[self.resp_open]]
        ids += part
        mask += [0] * len(part)

    @staticmethod
    def _turns(conversation: Sequence[Mapping], want_last: str) -> tuple[list[tuple[str, str | None]], str | None]:
        """Check a conversation's shape; return its (user, assistant) pairs and the system message.

        Shape: an optional system message first, then user/assistant alternating, starting with user and
        ending with ``want_last`` (the last pair's assistant is None when that is "user")."""
        if isinstance(conversation, (str, bytes)) or not isinstance(conversation, Sequence) or not conversation:
            raise UserError("a conversation must be a non-empty list of {'role': ..., 'content': ...} messages")
        system = None
        msgs = list(conversation)
        for k, m in enumerate(msgs):
            if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise UserError(f"message {k + 1} must have a string 'role' and a string 'content', got {_short(m)}")
            if m["role"] not in ROLES:
                raise UserError(f"message {k + 1} has the unknown role {m['role']!r}; use one of {', '.join(ROLES)}")
        if msgs[0]["role"] == "system":
            system = msgs.pop(0)["content"]
        turns: list[tuple[str, str | None]] = []
        for k, m in enumerate(msgs):
            expected = "user" if k % 2 == 0 else "assistant"
            if m["role"] != expected:
                where = "only first" if m["role"] == "system" else f"{expected} expected"
                raise UserError(f"message {k + 1 + (system is not None)} is a {m['role']} message ({where}): a "
                                "conversation is an optional system message, then user and assistant turns in turn")
            if expected == "user":
                turns.append((m["content"], None))
            else:
                turns[-1] = (turns[-1][0], m["content"])
        last = "user" if len(msgs) % 2 == 1 else "assistant"
        if not msgs or last != want_last:
            need = "an assistant answer to learn from" if want_last == "assistant" else "a user message to answer"
            raise UserError(f"the conversation must end with {need} (it ends with a {msgs[-1]['role'] if msgs else 'system'} message)")
        return turns, system

    # ------------------------------------------------------------------------------------------------ storage
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d) -> "ChatTemplate":
        if not isinstance(d, Mapping):
            raise UserError(f"{TEMPLATE_KEY} must be a table of strings, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown {TEMPLATE_KEY} key(s) {', '.join(map(str, unknown))}; known: {', '.join(sorted(known))}")
        for k, v in d.items():
            if not (isinstance(v, str) and v) and not (k == "bos" and v is None):
                raise UserError(f"{TEMPLATE_KEY}.{k} must be a non-empty string, got {v!r}")
        return cls(**d)


DEFAULT_TEMPLATE = ChatTemplate()


def _short(x) -> str:
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


def template_of(meta: Mapping) -> ChatTemplate | None:
    """The template a checkpoint's ``config.json`` records, or None (a pre-trained, not fine-tuned model)."""
    raw = meta.get(TEMPLATE_KEY)
    return None if raw is None else ChatTemplate.from_dict(raw)
