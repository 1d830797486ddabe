"""A chat session: the conversation, keeping it inside the context window, the slash commands, and the
plain-completion fallback -- everything ``sifirdan chat`` does except reading the keyboard and printing.

    session = ChatSession(engine, template, system="Kısa cevap ver.")
    reply = session.ask("Türkiye'nin başkenti neresidir?")   # trims the history if it must; reply.notice says so
    for piece in reply:                                       # whole characters, as they are generated
        print(piece, end="", flush=True)
    reply.finish_reason                                       # "stop", "length" or "interrupted"

The guide's ``inference.py`` (§9) wraps one instruction in ``<INST>...</INST><RESP>`` and samples a fixed
number of tokens. Here, each turn:

  * the whole conversation (system message, earlier turns, the new message) is rendered again with the
    checkpoint's own template (``ChatTemplate.render_prompt``), so the model sees exactly the format it was
    fine-tuned on, and generation stops at the template's stop ids (``</RESP>``, ``<|endoftext|>``);
  * if that prompt plus room for the reply would not fit the model's ``block_size``, the oldest
    user/assistant turns are dropped (the system message stays) and ``reply.notice`` is one line saying so.
    The room kept for the reply is ``max_new_tokens``, but never more than half the context: a reply longer
    than that still runs, the engine slides its window;
  * ``reply.cancel()`` (the CLI calls it on Ctrl-C) stops the reply at the next token. What was generated so
    far stays in the conversation as the assistant's answer -- the history is what the user saw. A reply
    stopped before any text is dropped with its question.

A model without a saved template (pre-trained, not fine-tuned) gets ``template=None``: each message is a
plain prompt that the model continues, there is no history, and only ``<|endoftext|>`` stops it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

from sifirdan.errors import UserError
from sifirdan.generate.config import (MAX_SEED, GenerationConfig, length_decay_text, parse_length_decay,
                                      parse_prompt_boost, prompt_boost_text)

# defaults of `sifirdan chat` (its --help repeats them). Temperature 0.3: on five held-out folds of Nutuk questions
# (bench/RESULTS.md, "fine-tuning levers and decoding") the default model's sampled answers scored token F1 0.119
# at 0.3, 0.117 at 0.5 and 0.103 at 0.7 (greedy: 0.122); a small model's less likely tokens are mostly wrong ones
DEFAULT_TEMPERATURE = 0.3
DEFAULT_TOP_P = 0.9
DEFAULT_TOP_K = 0
DEFAULT_MAX_TOKENS = 256
# Never the same 3 tokens twice in one answer: chosen on five held-out folds of Nutuk questions (bench/RESULTS.md,
# "fine-tuning levers and decoding"): without it 30 % of greedy answers loop; with it none do and greedy token F1
# rises 0.078 -> 0.091; sampled answers (which do not loop anyway) score the same with and without it
DEFAULT_NO_REPEAT_NGRAM = 3
# From the 150th token of a reply on, </RESP> gets a push that grows 2 % per token (transformers'
# exponential_decay_length_penalty, on the template's end token): chosen on the same five folds (bench/RESULTS.md,
# "the length decay, built"): answers that would run to the token limit end, and token F1 does not move
DEFAULT_LENGTH_DECAY = (150, 1.02)
# +4 on the logits of the question's words the reply has not used yet, +2 on the word piece that follows the reply's
# last token in the question (generate/prompt_boost.py): chosen on the same five folds (bench/RESULTS.md, "the
# prompt boost"): the replies restate the question's names as the references do; token F1 0.125 -> 0.160 greedy,
# 0.125 -> 0.157 sampled
DEFAULT_PROMPT_BOOST = (4.0, 2.0)


def default_config() -> GenerationConfig:
    return GenerationConfig(max_new_tokens=DEFAULT_MAX_TOKENS, temperature=DEFAULT_TEMPERATURE,
                            top_p=DEFAULT_TOP_P, top_k=DEFAULT_TOP_K, no_repeat_ngram_size=DEFAULT_NO_REPEAT_NGRAM,
                            exponential_decay_length_penalty=DEFAULT_LENGTH_DECAY, prompt_boost=DEFAULT_PROMPT_BOOST)


# the settings that are pairs: how a typed value is read and how it is printed
_PAIRS = {"exponential_decay_length_penalty": (parse_length_decay, length_decay_text),
          "prompt_boost": (parse_prompt_boost, prompt_boost_text)}


def _shown(value, field: str) -> str:
    """A setting as /help and the commands print it: 0.3, 150,1.02, 4,2, off."""
    if field in _PAIRS:
        return _PAIRS[field][1](value)
    return f"{value:g}"


@dataclass(frozen=True)
class _Setting:
    field: str  # GenerationConfig field
    kind: type  # int, float, or tuple (a pair: read and printed by _PAIRS[field])
    rule: str  # what a valid value is, for the error line


SETTINGS = {
    "/temperature": _Setting("temperature", float, "a number >= 0 (0, or below 1e-4, = always the most likely token)"),
    "/top-p": _Setting("top_p", float, "a number in (0, 1] (1 = off)"),
    "/top-k": _Setting("top_k", int, "an integer >= 0 (0 = off)"),
    "/max-tokens": _Setting("max_new_tokens", int, "an integer from 1 to 32768"),
    "/no-repeat-ngram": _Setting("no_repeat_ngram_size", int, "an integer from 0 (off) to 64"),
    "/length-decay": _Setting("exponential_decay_length_penalty", tuple,
                              "START,FACTOR (START 0 to 32768 new tokens, FACTOR 1 to 10) or off"),
    "/prompt-boost": _Setting("prompt_boost", tuple, "BOOST,FOLLOW (each 0 to 100) or off"),
}
EXIT_COMMANDS = ("/exit", "/quit")

HELP = """\
/help             this list and the current settings
/reset            forget the conversation (the system message stays)
/temperature T    randomness: 0 = always the most likely token, higher = more varied
/top-p P          sample only from the most likely tokens that together reach probability P (1 = off)
/top-k K          sample only from the K most likely tokens (0 = off)
/max-tokens N     longest reply, in tokens
/no-repeat-ngram N  never repeat the same N tokens within a reply (0 = off)
/length-decay S,F   from the S-th token of a reply on, push the end token, F times harder per token (off = never)
/prompt-boost B,F   +B for the conversation's words the reply has not used yet, +F for the piece that follows (off)
/exit             quit (also /quit, Ctrl-D, or Ctrl-C at the prompt)
Ctrl-C while the model writes stops the reply; what it wrote so far stays in the conversation as its answer.
Start a message with // to send text that begins with /."""


@dataclass
class CommandResult:
    message: str  # one or more lines to show
    exit: bool = False


class Reply:
    """One answer being generated. Iterate it for the text; ``cancel()`` stops it at the next token.

    When the iteration ends (finished, cancelled, or abandoned) the session records the turn."""

    def __init__(self, session: "ChatSession", user_text: str, ids: list[int], config: GenerationConfig,
                 stop_ids: frozenset[int], notice: str | None):
        self._session = session
        self.user_text = user_text
        self.prompt_ids = ids
        self.config = config
        self._stop_ids = stop_ids
        self.notice = notice  # one line to show before the reply (history trimmed, prompt cut), or None
        self.text = ""
        self.tokens = 0  # tokens sampled, a final stop token included
        self.finish_reason: str | None = None  # "stop" | "length" | "interrupted" once done
        self._cancelled = False
        self._started = False

    def cancel(self) -> None:
        """Stop at the next token (safe to call from a signal handler)."""
        self._cancelled = True

    def __iter__(self) -> Iterator[str]:
        if self._started:
            raise RuntimeError("a Reply can be iterated once")
        self._started = True
        return self._pieces()

    def _pieces(self) -> Iterator[str]:
        events = self._session.engine.iter_tokens([self.prompt_ids], self.config)
        last = None
        try:
            for ev in events:
                # checked after each token: a token sampled after Ctrl-C is neither shown nor kept
                if self._cancelled:
                    self.finish_reason = "interrupted"
                    return
                self.tokens += 1
                last = ev.token_id
                if ev.text:
                    self.text += ev.text
                    yield ev.text
            self.finish_reason = "stop" if last in self._stop_ids or self.tokens < self.config.max_new_tokens else "length"
        finally:
            if self.finish_reason is None:  # abandoned or an exception: what was shown so far
                self.finish_reason = "interrupted"
            close = getattr(events, "close", None)
            if close is not None:
                close()
            self._session._record(self)


class ChatSession:
    """The state of one chat: system message, turns, sampling settings. No terminal I/O."""

    def __init__(self, engine, template, *, system: str | None = None, config: GenerationConfig | None = None,
                 seed: int | None = None):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.block_size = engine.block_size
        self.template = template  # a ChatTemplate, or None: plain completion
        self.system = system if system else None
        self.config = dataclasses.replace(config or default_config(), seed=None).validate()
        self.seed = seed  # reply k (from 0) samples with seed + k: the same inputs replay the same session
        self.messages: list[dict] = []  # user/assistant turns, oldest first (the system message is apart)
        self.replies = 0
        if template is not None:
            missing = template.missing_tokens(self.tokenizer)
            if missing:
                raise UserError(f"the model's chat template needs the special token(s) {', '.join(missing)} but its tokenizer "
                                "has none; the checkpoint is inconsistent -- fine-tune it again with `sifirdan finetune`")
            self._stop_ids = frozenset(template.stop_ids(self.tokenizer))
            self._suppressed = template.suppressed_ids(self.tokenizer)
            if self.system is not None:
                n = len(self._render([{"role": "user", "content": ""}]))
                if n + self.reply_room > self.block_size:
                    raise UserError(f"the system message takes {n} tokens; with {self.reply_room} kept for the reply it does not "
                                    f"fit the model's {self.block_size}-token context; shorten it or lower --max-tokens")
        else:
            eot = self.tokenizer.eot_id
            self._stop_ids = frozenset() if eot is None else frozenset((eot,))
            self._suppressed = ()

    # ------------------------------------------------------------------------------------------------ state
    @property
    def mode(self) -> str:
        return "completion" if self.template is None else "chat"

    @property
    def reply_room(self) -> int:
        """Tokens kept free for the reply when fitting the prompt: max_new_tokens, at most half the context."""
        return max(1, min(self.config.max_new_tokens, self.block_size // 2))

    @property
    def turns(self) -> int:
        return len(self.messages) // 2

    def conversation(self) -> list[dict]:
        """The conversation as ``render`` takes it: the system message (if any), then the turns."""
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        return head + [dict(m) for m in self.messages]

    def reset(self) -> None:
        self.messages = []

    def _render(self, messages: list[dict]) -> list[int]:
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        return self.template.render_prompt(head + messages, self.tokenizer)

    # ------------------------------------------------------------------------------------------------ replies
    def ask(self, text: str) -> Reply:
        """Start the answer to ``text``. Fits the conversation into the context first (``reply.notice``)."""
        if not isinstance(text, str) or not text.strip():
            raise UserError("the message is empty; type something to send")
        config = self.config
        if self.seed is not None:
            config = dataclasses.replace(config, seed=(self.seed + self.replies) % (MAX_SEED + 1))
        config = dataclasses.replace(config, stop_token_ids=tuple(sorted(self._stop_ids)),
                                     suppress_token_ids=self._suppressed)
        budget = self.block_size - self.reply_room
        if self.template is None:
            ids = self.engine.encode_prompt(text)
            notice = None
            if len(ids) > budget:
                notice = (f"(the prompt is {len(ids)} tokens; the model reads only its last {budget}: its "
                          f"{self.block_size}-token context keeps {self.reply_room} for the reply)")
                ids = ids[-budget:]
            self.replies += 1
            return Reply(self, text, ids, config, self._stop_ids, notice)
        messages = self.messages + [{"role": "user", "content": text}]
        dropped = 0
        while True:
            ids = self._render(messages)
            if len(ids) <= budget:
                break
            if len(messages) == 1:
                what = " with the template and the system message" if self.system else " with the template"
                raise UserError(f"that message takes {len(ids)} tokens{what}; with {self.reply_room} kept for the reply it "
                                f"does not fit the model's {self.block_size}-token context; shorten it or lower /max-tokens")
            messages = messages[2:]  # the oldest user message and its answer
            dropped += 1
        notice = None
        if dropped:
            kept = (len(messages) - 1) // 2
            notice = (f"(context full: dropped the oldest {dropped} turn{'s' if dropped != 1 else ''} to fit the model's "
                      f"{self.block_size}-token context; {kept} earlier turn{'s' if kept != 1 else ''} kept"
                      f"{', and the system message' if self.system else ''})")
        self.messages = messages[:-1]
        self.replies += 1
        return Reply(self, text, ids, config, self._stop_ids, notice)

    def _record(self, reply: Reply) -> None:
        if self.template is None:
            return  # plain completion: every prompt stands alone
        if reply.finish_reason == "interrupted" and not reply.text:
            return  # stopped before any text: neither the question nor an empty answer is kept
        self.messages += [{"role": "user", "content": reply.user_text}, {"role": "assistant", "content": reply.text}]

    # ------------------------------------------------------------------------------------------------ commands
    @staticmethod
    def is_command(line: str) -> bool:
        s = line.lstrip()
        return s.startswith("/") and not s.startswith("//")

    @staticmethod
    def message_text(line: str) -> str:
        """A typed line as the message to send: a leading // becomes /."""
        s = line.lstrip()
        return s[1:] if s.startswith("//") else line

    def settings_line(self) -> str:
        c = self.config
        return (f"temperature {c.temperature:g}, top-p {c.top_p:g}, top-k {c.top_k}, max-tokens {c.max_new_tokens}, "
                f"no-repeat-ngram {c.no_repeat_ngram_size}, "
                f"length-decay {length_decay_text(c.exponential_decay_length_penalty)}, "
                f"prompt-boost {prompt_boost_text(c.prompt_boost)}, "
                f"seed {'none' if self.seed is None else self.seed}; {self.mode} mode, "
                f"{self.turns} turn{'s' if self.turns != 1 else ''} in the conversation")

    def command(self, line: str) -> CommandResult:
        """Run one slash command. A bad one is a one-line message; nothing raises."""
        parts = line.strip().split(None, 1)
        name = parts[0].lower()
        arg = parts[1].strip() if len(parts) > 1 else ""
        if name in EXIT_COMMANDS:
            return CommandResult("", exit=True)
        if name in ("/help", "/?"):
            return CommandResult(HELP + "\nnow: " + self.settings_line())
        if name == "/reset":
            if self.template is None:
                return CommandResult("(plain completion mode keeps no conversation; nothing to reset)")
            n = self.turns
            self.reset()
            kept = "; the system message stays" if self.system else ""
            return CommandResult(f"(conversation cleared: {n} turn{'s' if n != 1 else ''} forgotten{kept})")
        setting = SETTINGS.get(name)
        if setting is None:
            return CommandResult(f"unknown command {parts[0]}; /help lists the commands (start with // to send text beginning with /)")
        label = name[1:]
        if not arg:
            return CommandResult(f"{label} is {_shown(getattr(self.config, setting.field), setting.field)}; "
                                 f"{name} VALUE changes it")
        try:
            if setting.kind is tuple:
                value = _PAIRS[setting.field][0](arg, name)
            else:
                value = int(arg, 10) if setting.kind is int else float(arg)
            new = dataclasses.replace(self.config, **{setting.field: value}).validate()
        except (ValueError, UserError):  # UserError is a ValueError too; listed for the reader
            return CommandResult(f"{name} needs {setting.rule}, got {arg!r}; {label} stays "
                                 f"{_shown(getattr(self.config, setting.field), setting.field)}")
        self.config = new
        return CommandResult(f"({label} = {_shown(value, setting.field)})")
