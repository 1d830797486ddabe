"""The shared part of a byte-level BPE tokenizer: encode, decode, special tokens, save and load.

A tokenizer here is four tables (minbpe style):

* ``vocab``: id -> the bytes that id stands for (every one of the 256 bytes has an id, so there is no
  unknown token: any text can be encoded);
* ``merges``: (id_a, id_b) -> (rank, id_new): BPE applies merges lowest rank first;
* ``special_tokens``: name -> id, atomic tokens such as ``<|endoftext|>`` outside the BPE vocabulary;
* ``pattern``: the pre-tokenizer regex (see ``pattern.py``).

Text <-> bytes: text is encoded as UTF-8 with ``surrogatepass``, so *every* Python ``str`` round-trips,
including lone surrogates (``"\\ud83d"``, which e.g. broken JSON can produce; they travel as the 3-byte
sequences ED A0..BF xx). ``decode`` turns those back into the surrogate and turns any other invalid UTF-8
(possible when a model emits ids in an odd order) into U+FFFD.

The file format is Hugging Face's ``tokenizer.json`` (byte-level BPE); see ``to_json`` / ``from_json``.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import regex

from sifirdan.errors import UserError
from sifirdan.fileio import atomic_write_text
from sifirdan.tokenizer.bytelevel import str_to_token, token_to_str
from sifirdan.tokenizer.pattern import DEFAULT_PATTERN, GPT2_PATTERN, make_splitter

# The default special tokens: end of text (between documents in the token bins), padding, and the
# instruction-tuning markers the chat template uses, reserved at training time so their ids are in place
# before fine-tuning.
DEFAULT_SPECIAL_TOKENS = ("<|endoftext|>", "<PAD>", "<INST>", "</INST>", "<RESP>", "</RESP>")
EOT = "<|endoftext|>"

_CACHE_MAX = 200_000  # pre-token -> ids entries kept by encode
_CACHE_MAX_CHARS = 64  # longer pre-tokens (long runs of spaces ...) are not cached


def merge_pair(ids: list[int], a: int, b: int, new: int) -> list[int]:
    """Replace every (a, b) in ``ids`` with ``new``, left to right, non-overlapping ("aaa" -> "A a").

    The one BPE step both training and encoding apply."""
    out = []
    i, n = 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


# ------------------------------------------------------------------------------------------- text <-> bytes
def _surrogatepass_replace(err: UnicodeDecodeError):
    """Decode error handler: an encoded lone surrogate becomes that surrogate, anything else U+FFFD."""
    data = err.object[err.start : err.start + 3]
    if len(data) == 3 and data[0] == 0xED and 0xA0 <= data[1] <= 0xBF and 0x80 <= data[2] <= 0xBF:
        return chr(0xD000 | ((data[1] & 0x3F) << 6) | (data[2] & 0x3F)), err.start + 3
    return "\ufffd", err.end


# the codec error handler decode() uses; incremental decoders (streaming) must use the same one
DECODE_ERRORS = "sifirdan.surrogatepass_replace"
codecs.register_error(DECODE_ERRORS, _surrogatepass_replace)


def text_to_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def bytes_to_text(data: bytes) -> str:
    return data.decode("utf-8", DECODE_ERRORS)


def special_token_problem(t) -> str | None:
    """What makes ``t`` unusable as a special token ('is empty or not a string', ...), or None."""
    if not isinstance(t, str) or not t:
        return "is empty or not a string"
    try:
        t.encode("utf-8")
    except UnicodeEncodeError:
        return "holds a lone surrogate (not valid Unicode text)"
    return None


def validate_special_tokens(tokens) -> list[str]:
    if isinstance(tokens, str):
        raise UserError(f"special tokens must be a list of strings, not the single string {tokens!r}; wrap it in a list")
    out = []
    for t in tokens:
        problem = special_token_problem(t)
        if problem:
            raise UserError(f"special token {t!r} {problem}; give non-empty strings such as '<|endoftext|>'")
        if t in out:
            raise UserError(f"special token {t!r} is given twice; list each special token once")
        out.append(t)
    return out


# ------------------------------------------------------------------------------------------- the tokenizer
class Tokenizer:
    """Byte-level BPE encode/decode plus save/load; ``BPETokenizer`` adds training."""

    def __init__(
        self,
        vocab: dict[int, bytes] | None = None,
        merges: Sequence[tuple[int, int, int]] = (),
        special_tokens: dict[str, int] | None = None,
        pattern: str | None = None,
    ):
        self.vocab: dict[int, bytes] = dict(vocab) if vocab is not None else {i: bytes([i]) for i in range(256)}
        # merges in rank order: (a, b, new_id)
        self.merge_list: list[tuple[int, int, int]] = [tuple(m) for m in merges]
        self.merges: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (a, b, new) in enumerate(self.merge_list):
            self.merges.setdefault((a, b), (rank, new))
        self.special_tokens: dict[str, int] = dict(special_tokens or {})
        self.pattern = DEFAULT_PATTERN if pattern is None else pattern
        self._byte_ids = [0] * 256
        found = {tok[0]: i for i, tok in self.vocab.items() if len(tok) == 1}
        for b in range(256):
            if b not in found:
                raise UserError(f"the vocabulary has no token for byte {b}; a byte-level BPE needs all 256 bytes")
            self._byte_ids[b] = found[b]
        self._compiled = regex.compile(self.pattern)
        # text -> pieces as HF's Split(Isolated) cuts it: the text between matches of a foreign pattern such
        # as \w+ is kept (findall would drop it); our own patterns match everything and stay a bare findall
        self._split = make_splitter(self.pattern)
        self._cache: dict[str, list[int]] = {}
        self._special_re = None
        self._inverse_special: dict[int, str] = {}
        self._refresh_special()
        self._fast = None
        self._fast_ready = False

    # ----------------------------------------------------------------------------------- properties
    @property
    def vocab_size(self) -> int:
        """Number of ids (BPE tokens + special tokens); valid ids are 0 .. vocab_size - 1."""
        top = max(self.vocab) if self.vocab else -1
        if self.special_tokens:
            top = max(top, max(self.special_tokens.values()))
        return top + 1

    @property
    def eot_id(self) -> int | None:
        """The id of ``<|endoftext|>``, or None when this tokenizer has no such token."""
        return self.special_tokens.get(EOT)

    def id_to_token_bytes(self, i: int) -> bytes:
        """The raw bytes of one id (a special token gives its UTF-8 text)."""
        tok = self.vocab.get(i)
        if tok is not None:
            return tok
        name = self._inverse_special.get(i)
        if name is not None:
            return name.encode("utf-8")
        raise UserError(f"token id {i} is not in this tokenizer (vocab size {self.vocab_size}); use ids 0..{self.vocab_size - 1}")

    def token_to_id(self, token: str) -> int | None:
        """The id of a special token or of a string that is exactly one BPE token; None otherwise."""
        if token in self.special_tokens:
            return self.special_tokens[token]
        ids = self.encode_ordinary(token)
        return ids[0] if len(ids) == 1 else None

    # ----------------------------------------------------------------------------------- special tokens
    def _refresh_special(self) -> None:
        self._inverse_special = {i: s for s, i in self.special_tokens.items()}
        self._special_re = None

    def add_special_tokens(self, tokens: Iterable[str]) -> int:
        """Append special tokens that are not there yet (new ids at the end); return how many were added.

        Existing ids never change, so a model trained with this tokenizer stays valid (grow its embedding).
        """
        tokens = validate_special_tokens(tokens if isinstance(tokens, str) else list(dict.fromkeys(tokens)))
        added = 0
        for t in tokens:
            if t not in self.special_tokens:
                self.special_tokens[t] = self.vocab_size
                added += 1
        self._refresh_special()
        return added

    def _special_split(self, allowed: set[str]):
        key = frozenset(allowed)
        if self._special_re is None or self._special_re[0] != key:
            names = sorted(allowed, key=lambda s: (-len(s), s))  # longest first: "<|a|>x" before "<|a|>"
            self._special_re = (key, regex.compile("(" + "|".join(regex.escape(n) for n in names) + ")"))
        return self._special_re[1]

    # ----------------------------------------------------------------------------------- encoding
    def _bpe(self, data: bytes) -> list[int]:
        """Reference BPE on one pre-token: repeatedly merge the adjacent pair of lowest rank."""
        ids = [self._byte_ids[b] for b in data]
        merges = self.merges
        while len(ids) >= 2:
            best = None
            for pair in zip(ids, ids[1:]):
                m = merges.get(pair)
                if m is not None and (best is None or m[0] < best[0]):
                    best = (m[0], m[1], pair)
            if best is None:
                break
            _, new, (a, b) = best
            ids = merge_pair(ids, a, b, new)
        return ids

    def _fast_core(self):
        if not self._fast_ready:
            self._fast_ready = True
            try:
                from sifirdan.tokenizer import _fastbpe
            except ImportError:
                self._fast = None
            else:
                self._fast = _fastbpe.Encoder(self._byte_ids, [(a, b, new) for a, b, new in self.merge_list])
        return self._fast

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text with no special-token handling at all (``<|endoftext|>`` is just 13 characters)."""
        out: list[int] = []
        cache = self._cache
        fast = self._fast_core()
        bpe = fast.encode if fast is not None else self._bpe
        for piece in self._split(text):
            ids = cache.get(piece)
            if ids is None:
                ids = bpe(text_to_bytes(piece))
                if len(piece) <= _CACHE_MAX_CHARS:
                    if len(cache) >= _CACHE_MAX:
                        cache.clear()
                    cache[piece] = ids
            out += ids
        return out

    def encode(self, text: str, allowed_special: Iterable[str] | str = ()) -> list[int]:
        """Text -> ids. Special tokens are recognised only if named in ``allowed_special`` (or "all").

        By default ``"<RESP>"`` in the text is encoded as the ordinary characters ``<``, ``RESP``, ``>``, so text
        from a user can never smuggle in a control token.
        """
        if not isinstance(text, str):
            raise UserError(f"encode needs a str, got {type(text).__name__}; decode bytes first")
        if allowed_special == "all":
            allowed = set(self.special_tokens)
        elif isinstance(allowed_special, str):
            raise UserError(f"allowed_special must be 'all' or a list of special tokens, not the string {allowed_special!r}")
        else:
            allowed = set(allowed_special)
            unknown = allowed - set(self.special_tokens)
            if unknown:
                raise UserError(
                    f"unknown special token(s) {sorted(unknown)}; this tokenizer has {sorted(self.special_tokens)}"
                )
        if not allowed:
            return self.encode_ordinary(text)
        out: list[int] = []
        parts = self._special_split(allowed).split(text)
        for k, part in enumerate(parts):
            if k % 2:
                out.append(self.special_tokens[part])
            elif part:
                out += self.encode_ordinary(part)
        return out

    def encode_batch(self, texts: Iterable[str], allowed_special: Iterable[str] | str = ()) -> list[list[int]]:
        """Encode several texts. Sequential on purpose: the per-piece cache makes a pool slower, not faster."""
        return [self.encode(t, allowed_special=allowed_special) for t in texts]

    # ----------------------------------------------------------------------------------- decoding
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids -> the raw bytes (a streaming printer can hold back an incomplete UTF-8 character)."""
        vocab = self.vocab
        parts = []
        for i in ids:
            tok = vocab.get(i)
            if tok is None:
                tok = self.id_to_token_bytes(int(i)) if isinstance(i, int) or hasattr(i, "__index__") else None
                if tok is None:
                    raise UserError(f"token id {i!r} is not an integer; pass ids 0..{self.vocab_size - 1}")
            parts.append(tok)
        return b"".join(parts)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text. ``decode(encode(s)) == s`` for every str s; broken UTF-8 becomes U+FFFD."""
        return bytes_to_text(self.decode_bytes(ids))

    # ----------------------------------------------------------------------------------- tokenizer.json
    def to_json(self) -> dict:
        """This tokenizer as a Hugging Face ``tokenizer.json`` object (byte-level BPE)."""
        vocab = {token_to_str(tok): i for i, tok in sorted(self.vocab.items())}
        if len(vocab) != len(self.vocab):
            raise AssertionError("two ids share the same bytes")  # training never produces that
        merges = [f"{token_to_str(self.vocab[a])} {token_to_str(self.vocab[b])}" for a, b, _ in self.merge_list]
        added = [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
            for s, i in sorted(self.special_tokens.items(), key=lambda kv: kv[1])
        ]
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": None,
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": self.pattern}, "behavior": "Isolated", "invert": False},
                    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
                ],
            },
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": False,
                "vocab": vocab,
                "merges": merges,
            },
        }

    def to_json_str(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False, indent=2) + "\n"

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON: equal for tokenizers that encode every text the same way."""
        canon = json.dumps(self.to_json(), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` atomically (a folder path gets ``<folder>/tokenizer.json``)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        atomic_write_text(path, self.to_json_str())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Read a byte-level BPE ``tokenizer.json`` (ours or one written by Hugging Face tokenizers)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise UserError(f"tokenizer file {path} does not exist; train one with `sifirdan tokenizer train` or fix the path")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{path} is not a UTF-8 text file; pass a tokenizer.json") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            hint = "it looks truncated" if e.pos >= len(text.rstrip()) else "it is not valid JSON"
            raise UserError(f"{path} cannot be read: {hint} ({e.msg} at line {e.lineno}); save or download it again") from None
        except RecursionError:
            # json's C decoder recurses once per [ or {; a file of 100,000 [ would otherwise end in a traceback
            raise UserError(
                f"{path} nests too deeply to be a tokenizer.json (arrays or objects thousands of levels inside each "
                "other); pass a real tokenizer.json"
            ) from None
        return cls.from_json(obj, source=str(path))

    @classmethod
    def from_json(cls, obj, source: str = "tokenizer.json"):
        def bad(problem: str, fix: str = "use a byte-level BPE tokenizer.json such as `sifirdan tokenizer train` writes"):
            return UserError(f"{source} {problem}; {fix}")

        if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
            raise bad("has no 'model' object, so it is not a Hugging Face tokenizer.json")
        model = obj["model"]
        mtype = model.get("type", "BPE" if "merges" in model else None)
        if mtype != "BPE":
            raise bad(f"holds a {mtype or 'unknown'} model, not BPE")
        if obj.get("normalizer") is not None:
            raise bad("has a normalizer, which this toolkit does not apply")
        for key, want in (("byte_fallback", False), ("continuing_subword_prefix", None), ("end_of_word_suffix", None)):
            if model.get(key, want) not in (want, "") and model.get(key) is not False:
                raise bad(f"sets model.{key}={model.get(key)!r}, which a byte-level BPE does not use")
        pattern = _pattern_from_pre_tokenizer(obj.get("pre_tokenizer"), bad)
        dec = obj.get("decoder")
        if not isinstance(dec, dict) or dec.get("type") != "ByteLevel":
            raise bad("has no ByteLevel decoder, so it is not a byte-level BPE")
        raw_vocab = model.get("vocab")
        if not isinstance(raw_vocab, dict):
            raise bad("has no model.vocab object")
        raw_added = obj.get("added_tokens")
        if raw_added is None:
            raw_added = []
        if not isinstance(raw_added, list):
            raise bad(f"has added_tokens of type {type(raw_added).__name__}, not a list")
        token_bytes: dict[str, bytes] = {}
        for s, i in raw_vocab.items():
            tok = str_to_token(s)
            if tok is None or not tok:
                raise bad(f"has model.vocab[{s!r}] = {i!r}, whose key is not a byte-level token")
            token_bytes[s] = tok
        have = {t[0] for t in token_bytes.values() if len(t) == 1}
        if len(have) != 256:
            raise bad(f"has {len(have)} single-byte tokens in model.vocab instead of 256, so it is not byte-level")
        # The numbers before anything is built per id: the largest id sets vocab_size, and a model allocates
        # an embedding row per id, so one added token at id 10**12 must not get past this point.
        specials = _checked_ids(raw_vocab, raw_added, bad)
        vocab = {raw_vocab[s]: tok for s, tok in token_bytes.items()}
        by_str: dict[str, int] = raw_vocab  # token string -> id, all checked above
        raw_merges = model.get("merges")
        if not isinstance(raw_merges, list):
            raise bad("has no model.merges list")
        merges = []
        first_rank: dict[tuple[int, int], int] = {}
        for k, m in enumerate(raw_merges):
            if isinstance(m, str):
                parts = m.split(" ")
            elif isinstance(m, list):
                parts = m
            else:
                parts = None
            if not parts or len(parts) != 2 or not all(isinstance(p, str) for p in parts):
                raise bad(f"has a malformed merge #{k} (model.merges[{k}]): {m!r} (want two tokens)")
            a, b = by_str.get(parts[0]), by_str.get(parts[1])
            new = by_str.get(parts[0] + parts[1])
            if a is None or b is None or new is None:
                raise bad(f"has merge #{k} (model.merges[{k}]) {m!r} whose parts or result are not in the vocab")
            j = first_rank.setdefault((a, b), k)
            if j != k:
                # HF ranks a repeated pair by its last listing and we by its first: the file means two things
                raise bad(f"lists the merge {m!r} twice, as model.merges[{j}] and model.merges[{k}]", "delete one of them")
            merges.append((a, b, new))
        try:
            regex.compile(pattern)
        except regex.error as e:
            raise bad(f"has a pre-tokenizer regex Python cannot compile ({e})") from None
        tok = cls.__new__(cls)
        Tokenizer.__init__(tok, vocab=vocab, merges=merges, special_tokens=specials, pattern=pattern)
        return tok

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, merges={len(self.merge_list)}, special_tokens={len(self.special_tokens)})"


def _is_id(i) -> bool:
    return isinstance(i, int) and not isinstance(i, bool)  # JSON true/false arrive as bool, a subclass of int


def _checked_ids(raw_vocab: dict, raw_added: list, bad) -> dict[str, int]:
    """Check every id in a tokenizer.json; return the special tokens (added tokens that are not BPE tokens).

    The ids of ``model.vocab`` and of those special tokens must be exactly 0..N-1, each used once. Only sets
    and dicts the size of the file are built, never a table as long as the largest id.
    """
    owner: dict[int, str | int] = {}  # id -> its model.vocab key (str) or its added_tokens index (int)

    def field(x) -> str:
        return f"model.vocab[{x!r}]" if isinstance(x, str) else f"added_tokens[{x}].id"

    for s, i in raw_vocab.items():
        if not _is_id(i) or i < 0:
            raise bad(f"has model.vocab[{s!r}] = {i!r}, which is not a non-negative integer id")
        if i in owner:
            raise bad(f"gives id {i} to two tokens, {field(owner[i])} and {field(s)}")
        owner[i] = s
    specials: dict[str, int] = {}
    by_content: dict[str, int] = {}
    by_id: dict[int, int] = {}
    last_special = -1
    for k, t in enumerate(raw_added):
        if not isinstance(t, dict):
            raise bad(f"has a malformed added_tokens[{k}] {t!r} (want an object with content and id)")
        content, i = t.get("content"), t.get("id")
        if not _is_id(i) or i < 0:
            raise bad(f"has added_tokens[{k}].id = {i!r}, which is not a non-negative integer id")
        problem = special_token_problem(content)
        if problem:
            raise bad(f"has added_tokens[{k}].content = {content!r}, which {problem}")
        if content in by_content:
            raise bad(
                f"lists the added token {content!r} twice, as added_tokens[{by_content[content]}].content and "
                f"added_tokens[{k}].content",
                "delete one of them",
            )
        if i in by_id:
            raise bad(f"gives id {i} to two added tokens, added_tokens[{by_id[i]}].id and added_tokens[{k}].id")
        by_content[content] = k
        by_id[i] = k
        if i in owner:
            if isinstance(owner[i], str) and str_to_token(owner[i]) == content.encode("utf-8"):
                continue  # an added token that is also this BPE token: the BPE token covers it
            raise bad(f"gives added_tokens[{k}] ({content!r}) the id {i}, which {field(owner[i])} already has")
        if i < last_special:
            # HF numbers added tokens that are not in the vocab in the order they are listed, whatever ids
            # the file gives them: an out-of-order list would mean other ids there than here
            raise bad(f"lists added_tokens[{k}] (id {i}) after a token with a higher id", "list added_tokens in id order")
        owner[i] = k
        specials[content] = i
        last_special = i
    n = len(owner)
    top = max(owner, default=-1)
    if top >= n:  # n distinct ids >= 0 fill 0..n-1 exactly when none is >= n
        missing = next(j for j in range(n) if j not in owner)
        raise bad(
            f"has {field(owner[top])} = {top}, but its {n} tokens must use exactly the ids 0..{n - 1} "
            f"(id {missing} is unused)",
            "renumber the ids without gaps",
        )
    return specials


def _pattern_from_pre_tokenizer(pre, bad) -> str:
    if not isinstance(pre, dict):
        raise bad("has no pre_tokenizer; a byte-level BPE needs a ByteLevel pre-tokenizer")
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    if not isinstance(steps, list) or not steps:
        raise bad("has an empty pre_tokenizer Sequence")
    last = steps[-1]
    if not isinstance(last, dict) or last.get("type") != "ByteLevel":
        raise bad("does not end its pre_tokenizer with ByteLevel, so it is not a byte-level BPE")
    if last.get("add_prefix_space"):
        raise bad("uses add_prefix_space=true, which this toolkit does not support")
    if len(steps) == 1:
        if last.get("use_regex", True):
            return GPT2_PATTERN
        raise bad("has a ByteLevel pre-tokenizer with no regex")
    if len(steps) != 2 or last.get("use_regex", True):
        raise bad("has a pre_tokenizer other than Sequence[Split(regex), ByteLevel(use_regex=false)]")
    split = steps[0]
    pat = split.get("pattern") if isinstance(split, dict) else None
    if (
        not isinstance(split, dict)
        or split.get("type") != "Split"
        or not isinstance(pat, dict)
        or not isinstance(pat.get("Regex"), str)
        or split.get("behavior") != "Isolated"
        or split.get("invert")
    ):
        raise bad("has a Split pre-tokenizer other than Split(Regex, behavior=Isolated)")
    return pat["Regex"]
