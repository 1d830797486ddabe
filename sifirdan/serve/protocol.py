"""The OpenAI request bodies, checked field by field, and the response objects.

Every field a client may send is checked for its type and range; a bad one is a 400 whose ``param`` names it.
Fields this server does not know (``logprobs``, ``user``, ``frequency_penalty``, ...) are ignored, as the issue
asks: an OpenAI client sends several by default.

Sampling fields and what they become (``sifirdan.generate.GenerationConfig``):

    temperature          >= 0, default 1 (0, or below 1e-4 = MIN_TEMPERATURE, = greedy: float32 cannot divide by less)
    top_p                in [0, 1], default 1 (0, or any p the most likely token reaches alone, keeps only that token)
    max_tokens           >= 1 (chat: max_completion_tokens wins when both are given); capped by --max-tokens-cap;
                         default 16 for completions (OpenAI's), 256 for chat (sifirdan chat's)
    stop                 a string or a list of at most 4 non-empty strings
    seed                 0 .. 2**63 - 1025; choice i of n samples with seed + i (as `sifirdan generate`)
    n                    1 .. 16 choices
    top_k                extra: integer >= 0 (0 or -1 = off)
    repetition_penalty   extra: 0.001 .. 1000 (1 = off); outside, a logit times it is no longer a finite float32
    no_repeat_ngram_size extra (transformers' name): 0 .. 64; n > 0 = no n tokens twice in one completion (0 = off)
    exponential_decay_length_penalty
                         extra (transformers' name): [start, factor], start 0 .. 32768 new tokens, factor 1 .. 10, or
                         null (off, the default): past start, the stop token's logit gains |logit| * (factor**k - 1)
                         (of several, the first: a chat's </RESP>; generate.sampling.end_id)
    prompt_boost         extra: [boost, follow], each 0 .. 100, or null (off, the default): +boost on the logit of
                         each word token of the prompt the completion has not used yet, +follow on the tokens that
                         follow its last token in the prompt (generate/prompt_boost.py)
    ignore_eos           extra (vLLM's name): true = no stop token ends the text, only max_tokens and stop
"""

from __future__ import annotations

from dataclasses import dataclass

from sifirdan.configs import is_int, is_number
from sifirdan.generate.config import (MAX_LENGTH_DECAY_FACTOR, MAX_NEW_TOKENS_CAP, MAX_NO_REPEAT_NGRAM, MAX_PROMPT_BOOST,
                                      MAX_REPETITION_PENALTY, MAX_SEED, GenerationConfig)
from sifirdan.serve.errors import bad_request

MAX_N = 16
MAX_STOPS = 4
MAX_PROMPTS = 16  # a completions request may carry a list of prompts
MAX_ROWS = 64  # prompts x n
DEFAULT_MAX_TOKENS = {"completion": 16, "chat": 256}
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass
class Sampling:
    config: GenerationConfig  # seed is the first choice's
    n: int
    stream: bool
    include_usage: bool
    ignore_eos: bool


def _number(body, name, default, lo=None, hi=None, lo_open=False, what=None):
    x = body.get(name)
    if x is None:
        return default
    ok = is_number(x) and (lo is None or (x > lo if lo_open else x >= lo)) and (hi is None or x <= hi)
    if not ok:
        raise bad_request(f"{name} must be {what}, got {_short(x)}", param=name)
    return float(x)


def _int(body, name, default, lo, hi, what):
    x = body.get(name)
    if x is None:
        return default
    if not is_int(x) or not lo <= x <= hi:
        raise bad_request(f"{name} must be {what}, got {_short(x)}", param=name)
    return x


def _length_decay(body) -> tuple[int, float] | None:
    name = "exponential_decay_length_penalty"
    x = body.get(name)
    if x is None:
        return None
    if not (isinstance(x, list) and len(x) == 2 and is_int(x[0]) and 0 <= x[0] <= MAX_NEW_TOKENS_CAP
            and is_number(x[1]) and 1 <= x[1] <= MAX_LENGTH_DECAY_FACTOR):
        raise bad_request(f"{name} must be [start, factor] with start an integer from 0 to {MAX_NEW_TOKENS_CAP} and "
                          f"factor a number from 1 to {MAX_LENGTH_DECAY_FACTOR:g} (e.g. [150, 1.02]), or null, got {_short(x)}",
                          param=name)
    return (x[0], float(x[1]))


def _prompt_boost(body) -> tuple[float, float] | None:
    name = "prompt_boost"
    x = body.get(name)
    if x is None:
        return None
    if not (isinstance(x, list) and len(x) == 2 and all(is_number(v) and 0 <= v <= MAX_PROMPT_BOOST for v in x)):
        raise bad_request(f"{name} must be [boost, follow], two numbers from 0 to {MAX_PROMPT_BOOST:g} (e.g. [4, 2]), "
                          f"or null, got {_short(x)}", param=name)
    return (float(x[0]), float(x[1]))


def _bool(body, name, default=False):
    x = body.get(name)
    if x is None:
        return default
    if not isinstance(x, bool):
        raise bad_request(f"{name} must be true or false, got {_short(x)}", param=name)
    return x


def parse_sampling(body: dict, kind: str, max_tokens_cap: int) -> Sampling:
    """The fields both endpoints share -> a validated GenerationConfig and the request's shape."""
    temperature = _number(body, "temperature", 1.0, lo=0, what="a number >= 0 (0 = greedy)")
    top_p = _number(body, "top_p", 1.0, lo=0, hi=1, what="a number from 0 to 1")
    if top_p == 0:
        top_p = 1e-9  # only the most likely token survives
    top_k = _int(body, "top_k", 0, -1, 2**31 - 1, "an integer >= 0 (0 or -1 = off)")
    top_k = max(top_k, 0)
    rep = _number(body, "repetition_penalty", 1.0, lo=1 / MAX_REPETITION_PENALTY, hi=MAX_REPETITION_PENALTY,
                  what=f"a number from {1 / MAX_REPETITION_PENALTY:g} to {MAX_REPETITION_PENALTY:g} (1 = off)")
    no_repeat = _int(body, "no_repeat_ngram_size", 0, 0, MAX_NO_REPEAT_NGRAM, f"an integer from 0 (off) to {MAX_NO_REPEAT_NGRAM}")
    length_decay = _length_decay(body)
    prompt_boost = _prompt_boost(body)
    names = ("max_completion_tokens", "max_tokens") if kind == "chat" else ("max_tokens",)
    max_tokens = None
    for name in names:
        max_tokens = _int(body, name, None, 1, 2**31 - 1, "an integer >= 1")
        if max_tokens is not None:
            break
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS[kind]
    max_tokens = min(max_tokens, max_tokens_cap)
    n = _int(body, "n", 1, 1, MAX_N, f"an integer from 1 to {MAX_N}")
    seed = _int(body, "seed", None, 0, MAX_SEED - MAX_N, f"an integer from 0 to {MAX_SEED - MAX_N}")
    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    elif isinstance(stop, list) and len(stop) <= MAX_STOPS and all(isinstance(s, str) for s in stop):
        stop = tuple(stop)
    else:
        raise bad_request(f"stop must be a string or a list of at most {MAX_STOPS} strings, got {_short(stop)}", param="stop")
    if any(not s for s in stop):
        raise bad_request("stop strings must not be empty", param="stop")
    stream = _bool(body, "stream")
    include_usage = False
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise bad_request(f"stream_options must be an object such as {{\"include_usage\": true}}, got {_short(opts)}",
                              param="stream_options")
        include_usage = _bool(opts, "include_usage")
    ignore_eos = _bool(body, "ignore_eos")
    config = GenerationConfig(max_new_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                              repetition_penalty=rep, no_repeat_ngram_size=no_repeat,
                              exponential_decay_length_penalty=length_decay, prompt_boost=prompt_boost,
                              seed=seed, stop=stop,
                              stop_token_ids=() if ignore_eos else None).validate()
    return Sampling(config, n, stream, include_usage and stream, ignore_eos)


def parse_prompts(body: dict) -> list[str | list[int]]:
    """``prompt``: a string, a list of strings, a list of token ids, or a list of lists of token ids."""
    p = body.get("prompt")
    what = "a string, a list of strings, a list of token ids or a list of lists of token ids"
    if isinstance(p, str):
        return [p]
    if isinstance(p, list) and p:
        if all(isinstance(x, str) for x in p):
            out = list(p)
        elif all(is_int(x) for x in p):
            out = [list(p)]
        elif all(isinstance(x, list) and x and all(is_int(i) for i in x) for x in p):
            out = [list(x) for x in p]
        else:
            raise bad_request(f"prompt must be {what}", param="prompt")
        if len(out) > MAX_PROMPTS:
            raise bad_request(f"at most {MAX_PROMPTS} prompts per request, got {len(out)}", param="prompt")
        return out
    if p is None:
        raise bad_request("prompt is required", param="prompt")
    raise bad_request(f"prompt must be {what}, got {_short(p)}", param="prompt")


def parse_messages(body: dict) -> list[dict]:
    """``messages`` -> [{"role", "content": str}] for ChatTemplate. Content: a string or a list of text parts
    (``{"type": "text", "text": ...}``); the role ``developer`` is the system message under its newer name."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad_request("messages must be a non-empty list of {\"role\": ..., \"content\": ...} objects", param="messages")
    out = []
    for k, m in enumerate(msgs):
        where = f"messages[{k}]"
        if not isinstance(m, dict):
            raise bad_request(f"{where} must be an object with role and content", param=where)
        role = m.get("role")
        if not isinstance(role, str) or role not in CHAT_ROLES:  # a list or object is unhashable: check the type first
            raise bad_request(f"{where}.role must be one of system, user, assistant (developer = system), got {_short(role)}",
                              param=f"{where}.role")
        content = m.get("content")
        if content is None and role == "assistant":
            content = ""
        if isinstance(content, list):
            parts = []
            for i, part in enumerate(content):
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise bad_request(f"{where}.content[{i}] must be a text part {{\"type\": \"text\", \"text\": ...}}; "
                                      "this model reads text only", param=f"{where}.content")
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise bad_request(f"{where}.content must be a string or a list of text parts, got {_short(content)}",
                              param=f"{where}.content")
        out.append({"role": CHAT_ROLES[role], "content": content})
    return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _short(x) -> str:
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."
