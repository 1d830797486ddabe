"""GenerationConfig (how to pick tokens and when to stop) and GenerationResult (what came out).

Every field is checked by ``validate()``; a bad value is a ``UserError`` naming the field and the fix, so
every caller (``sifirdan generate``, ``chat``, the server, the fine-tuning samples) rejects bad requests with
the same one-line messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sifirdan.configs import is_int, is_number
from sifirdan.errors import UserError

# Generation crops and re-prefills past block_size, so length is not limited by the model; this cap only
# keeps a typo (--max-new-tokens 1000000) from running for hours.
MAX_NEW_TOKENS_CAP = 32768

FINISH_REASONS = ("stop", "length")
MAX_SEED = 2**63 - 1 - 1024  # torch.Generator.manual_seed takes 64-bit seeds, and row i of a batch uses seed + i

# Sampling runs in float32, where a tiny positive value underflows: logits / 1e-300 is inf (the divisor rounds to
# 0), and inf - inf in softmax is NaN. So a temperature below MIN_TEMPERATURE means greedy, exactly as 0 does
# (at 1e-4 a logit gap of 0.01 already makes the runner-up e**-100 as likely: sampling is greedy anyway), and a
# repetition penalty must lie in [1/MAX_REPETITION_PENALTY, MAX_REPETITION_PENALTY], where a logit times or over
# it stays finite. top_p needs no floor: the most likely token is always kept (see sampling.top_p_filter).
MIN_TEMPERATURE = 1e-4
MAX_REPETITION_PENALTY = 1e3
MAX_NO_REPEAT_NGRAM = 64  # an n-gram ban longer than this bans nothing a loop would repeat soon enough to matter
# exponential_decay_length_penalty's factor: 1 = no push; 10 already multiplies the push tenfold per token
MAX_LENGTH_DECAY_FACTOR = 10.0
# prompt_boost's bonuses, in logits: 100 already outweighs any gap a trained model's logits show
MAX_PROMPT_BOOST = 100.0


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256  # tokens to sample at most (1 .. MAX_NEW_TOKENS_CAP)
    temperature: float = 1.0  # logits / temperature before softmax; 0 (or below MIN_TEMPERATURE) = greedy (argmax)
    top_k: int = 0  # keep only the k most likely tokens; 0 = off
    top_p: float = 1.0  # nucleus: keep the smallest set of tokens whose probability reaches p; 1 = off
    repetition_penalty: float = 1.0  # CTRL: logits of tokens already seen (prompt or output) / or * by this; 1 = off
    no_repeat_ngram_size: int = 0  # n > 0: never generate the same n tokens twice in one answer (sampling.NgramBan); 0 = off
    # (start, factor), transformers' name and formula: from the start-th new token on, the end id's logit gains
    # |logit| * (factor**k - 1), k tokens past start, so an answer that runs long ends; the end id is the first
    # stop id (a chat's </RESP>; sampling.end_id says why one); None = off
    exponential_decay_length_penalty: tuple[int, float] | None = None
    # (boost, follow), beyond the guide (generate/prompt_boost.py): +boost on each word token of the prompt the
    # answer has not written yet, +follow on the tokens that follow the answer's last token in the prompt, so a
    # small model that cannot copy from its context restates the question's names; None = off
    prompt_boost: tuple[float, float] | None = None
    seed: int | None = None  # row i of a batch samples with its own torch.Generator seeded seed + i
    stop: tuple[str, ...] = ()  # stop strings: the text ends right before the first one that appears
    stop_token_ids: tuple[int, ...] | None = None  # None = <|endoftext|> if the tokenizer has it; () = none
    # ids never generated (transformers' suppress_tokens): a chat answer suppresses the template's tokens that do
    # not end it (<INST>, </INST>, <RESP>, <PAD>: ChatTemplate.suppressed_ids), which sampling could otherwise draw
    suppress_token_ids: tuple[int, ...] = ()
    use_cache: bool = True  # False: recompute the whole context every step (the guide's way; same tokens, slower)

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        if self.stop_token_ids is not None:
            self.stop_token_ids = tuple(self.stop_token_ids)
        self.suppress_token_ids = tuple(self.suppress_token_ids)
        if isinstance(self.exponential_decay_length_penalty, list):  # from JSON
            self.exponential_decay_length_penalty = tuple(self.exponential_decay_length_penalty)
        if isinstance(self.prompt_boost, list):
            self.prompt_boost = tuple(self.prompt_boost)

    def validate(self) -> "GenerationConfig":
        n = self.max_new_tokens
        if not is_int(n) or not 1 <= n <= MAX_NEW_TOKENS_CAP:
            raise UserError(f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS_CAP}, got {n!r}; pass e.g. --max-new-tokens 200")
        t = self.temperature
        if not is_number(t) or t < 0:
            raise UserError(f"temperature must be a number >= 0 (0 = greedy), got {t!r}; pass e.g. --temperature 0.8")
        if not is_int(self.top_k) or self.top_k < 0:
            raise UserError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}; pass e.g. --top-k 50")
        p = self.top_p
        if not is_number(p) or not (0 < p <= 1):
            raise UserError(f"top_p must be in (0, 1] (1 = off), got {p!r}; pass e.g. --top-p 0.9")
        r = self.repetition_penalty
        lo, hi = 1 / MAX_REPETITION_PENALTY, MAX_REPETITION_PENALTY
        if not is_number(r) or not lo <= r <= hi:
            raise UserError(f"repetition_penalty must be a number from {lo:g} to {hi:g} (1 = off), got {r!r}; "
                            "pass e.g. --repetition-penalty 1.2")
        n = self.no_repeat_ngram_size
        if not is_int(n) or not 0 <= n <= MAX_NO_REPEAT_NGRAM:
            raise UserError(f"no_repeat_ngram_size must be an integer from 0 (off) to {MAX_NO_REPEAT_NGRAM}, got {n!r}; "
                            "pass e.g. --no-repeat-ngram 4")
        d = self.exponential_decay_length_penalty
        if d is not None:
            ok = (isinstance(d, tuple) and len(d) == 2 and is_int(d[0]) and 0 <= d[0] <= MAX_NEW_TOKENS_CAP
                  and is_number(d[1]) and 1 <= d[1] <= MAX_LENGTH_DECAY_FACTOR)
            if not ok:
                raise UserError(f"exponential_decay_length_penalty must be (start, factor): start an integer from 0 to "
                                f"{MAX_NEW_TOKENS_CAP} (new tokens), factor a number from 1 to {MAX_LENGTH_DECAY_FACTOR:g}, "
                                f"or None (off), got {d!r}; pass e.g. --length-decay 150,1.02")
        b = self.prompt_boost
        if b is not None:
            ok = (isinstance(b, tuple) and len(b) == 2
                  and all(is_number(x) and 0 <= x <= MAX_PROMPT_BOOST for x in b))
            if not ok:
                raise UserError(f"prompt_boost must be (boost, follow), two numbers from 0 to {MAX_PROMPT_BOOST:g} "
                                f"(logits), or None (off), got {b!r}; pass e.g. --prompt-boost 4,2")
        if self.seed is not None and not (is_int(self.seed) and 0 <= self.seed <= MAX_SEED):
            # row i of a batch uses seed + i: room is left for the rows
            raise UserError(f"seed must be an integer from 0 to {MAX_SEED}, got {self.seed!r}; pass e.g. --seed 42")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise UserError(f"stop strings must be non-empty strings, got {s!r}")
        for name in ("stop_token_ids", "suppress_token_ids"):
            for i in getattr(self, name) or ():
                if not is_int(i) or i < 0:
                    raise UserError(f"{name} must be token ids (integers >= 0), got {i!r}")
        return self

    @property
    def greedy(self) -> bool:
        """Argmax: temperature 0, or below MIN_TEMPERATURE (which float32 cannot divide by safely)."""
        return self.temperature < MIN_TEMPERATURE


def _parse_pair(text: str, first, second, usage: str):
    """'A,B' -> (first(A), second(B)); 'off' (or 'none', '0') -> None; anything else is a one-line UserError that
    ends with ``usage`` (what the flag takes, with an example). The range is ``validate()``'s to check."""
    t = text.strip().lower()
    if t in ("off", "none", "0"):
        return None
    parts = t.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return (first(parts[0]), second(parts[1]))
    except ValueError:
        raise UserError(f"{usage}, got {text!r}") from None


def parse_length_decay(text: str, name: str = "--length-decay") -> tuple[int, float] | None:
    """'START,FACTOR' (e.g. '150,1.02') -> (150, 1.02); 'off' -> None. The range is checked by ``validate()``."""
    return _parse_pair(text, lambda x: int(x, 10), float,
                       f"{name} takes START,FACTOR (e.g. 150,1.02: from the 150th new token on, a push on the end "
                       "token that grows 2 % per token) or off")


def length_decay_text(value: tuple[int, float] | None) -> str:
    """The inverse of ``parse_length_decay``: (150, 1.02) -> '150,1.02'; None -> 'off'."""
    return "off" if value is None else f"{value[0]},{value[1]:g}"


def parse_prompt_boost(text: str, name: str = "--prompt-boost") -> tuple[float, float] | None:
    """'BOOST,FOLLOW' (e.g. '4,2') -> (4.0, 2.0); 'off' -> None. The range is checked by ``validate()``."""
    return _parse_pair(text, float, float,
                       f"{name} takes BOOST,FOLLOW (e.g. 4,2: +4 on the logits of the prompt's words the answer has "
                       "not used yet, +2 on the word piece that follows the last one in the prompt) or off")


def prompt_boost_text(value: tuple[float, float] | None) -> str:
    """The inverse of ``parse_prompt_boost``: (4.0, 2.0) -> '4,2'; None -> 'off'."""
    return "off" if value is None else f"{value[0]:g},{value[1]:g}"


@dataclass
class GenerationResult:
    """One completion. The counts are what an OpenAI-style ``usage`` block reports."""

    text: str  # the completion only (not the prompt), cut before a stop string
    token_ids: list[int] = field(default_factory=list)  # sampled ids, without a final stop token id
    finish_reason: str = "length"  # "stop": a stop token or stop string; "length": max_new_tokens reached
    prompt_tokens: int = 0  # ids fed as the prompt (an empty prompt counts its <|endoftext|>)
    completion_tokens: int = 0  # ids sampled, a final stop token included
