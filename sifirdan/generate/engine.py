"""The generation engine: one loop for every caller (``sifirdan generate``, ``chat``, ``eval-instruct``, the
HTTP server, the fine-tuning samples).

    engine = Engine(model, tokenizer)
    engine.generate("Türkiye'nin başkenti", GenerationConfig(max_new_tokens=50, temperature=0.8, seed=1))
    for piece in engine.stream("Bir varmış", GenerationConfig(temperature=0)): print(piece, end="")

How a batch is generated (nanochat's design: one engine with a KV cache):

1. Prefill: the prompts, left-padded to one length, go through the model once. Each layer's keys and values
   land in the KV cache; padding is hidden by ``key_padding_mask`` and every row gets its own positions
   (0 at its first real token), so a row computes what it would compute alone.
2. Decode: each step feeds only the B newest tokens (B, 1); attention reads the cached keys/values.
3. Rows that finish (stop token, stop string) leave the batch; the rest go on.
4. Context limit: the learned position table has ``block_size`` rows. When a row's context would exceed it,
   the row is cropped to its last ``crop_keep`` tokens (default block_size // 2) and the batch is prefilled
   again. Why half and not block_size - 1 (the guide's sliding window)? Keeping block_size - 1 tokens means a
   full re-prefill on *every* step from then on (the cache stops helping); keeping half costs one prefill
   per block_size // 2 new tokens (about two extra positions per token) at the price of a shorter context
   right after a crop. ``Engine(..., crop_keep=...)`` picks another point on that trade-off.

``use_cache=False`` recomputes the whole (cropped) context at every step -- the guide's way. It follows the
same crop rule, so it produces the same tokens; it is the reference the tests and the benchmark compare with.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from sifirdan.errors import UserError
from sifirdan.generate.config import GenerationConfig, GenerationResult
from sifirdan.generate.sampling import Sampler, end_id
from sifirdan.generate.prompt_boost import copyable_mask
from sifirdan.generate.text import IncrementalDetokenizer, StopStringMatcher
from sifirdan.model import KVCache


@dataclass
class TokenEvent:
    """One sampled token of one row; ``text`` is what it adds to the visible text ('' while held back)."""

    row: int
    token_id: int
    text: str


class _Sequence:
    """One row: its ids (prompt + output), the window the model sees, and the text produced so far."""

    def __init__(self, prompt_ids: list[int], tokenizer, stops: tuple[str, ...]):
        self.ids = list(prompt_ids)
        self.n_prompt = len(prompt_ids)
        self.start = 0  # the model sees ids[start:]; moved forward by crops
        self.detok = IncrementalDetokenizer(tokenizer)
        self.matcher = StopStringMatcher(stops)
        self.pieces: list[str] = []
        self.completion_tokens = 0
        self.finish_reason: str | None = None

    def fit(self, block_size: int, keep: int) -> None:
        """The crop rule (the same with and without the cache): over block_size -> keep the last `keep`."""
        if len(self.ids) - self.start > block_size:
            self.start = len(self.ids) - keep

    def context(self) -> list[int]:
        return self.ids[self.start :]

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        text, stopped = self.matcher.push(self.detok.push((token_id,)))
        if stopped:
            self.finish_reason = "stop"
        return text

    def close(self, reason: str) -> str:
        text, stopped = self.matcher.push(self.detok.flush())
        if not stopped:
            text += self.matcher.flush()
        self.finish_reason = "stop" if stopped else reason
        return text

    def result(self) -> GenerationResult:
        return GenerationResult(
            text="".join(self.pieces),
            token_ids=self.ids[self.n_prompt :],
            finish_reason=self.finish_reason or "length",
            prompt_tokens=self.n_prompt,
            completion_tokens=self.completion_tokens,
        )


class Engine:
    def __init__(self, model, tokenizer, *, crop_keep: int | None = None):
        self.model = model.eval()  # no dropout while generating
        self.tokenizer = tokenizer
        self.block_size = model.config.block_size
        self.crop_keep = max(1, self.block_size // 2) if crop_keep is None else crop_keep
        if not 1 <= self.crop_keep <= self.block_size:
            raise UserError(f"crop_keep must be between 1 and block_size ({self.block_size}), got {crop_keep}")
        if tokenizer.vocab_size > model.config.vocab_size:
            raise UserError(
                f"the tokenizer has {tokenizer.vocab_size} ids but the model only {model.config.vocab_size}; "
                "use the tokenizer the model was trained with"
            )
        self.vocab_size = tokenizer.vocab_size  # sample only ids the tokenizer can decode
        self.device = next(model.parameters()).device
        self._copyable: torch.Tensor | None = None  # prompt_boost.copyable_mask, made on first use

    def copyable(self, config: GenerationConfig) -> torch.Tensor | None:
        """The word-token mask the prompt boost needs (computed once per engine), or None when ``config`` has no
        boost."""
        if config.prompt_boost is None:
            return None
        if self._copyable is None:
            self._copyable = copyable_mask(self.tokenizer, self.vocab_size).to(self.device)
        return self._copyable

    # ----------------------------------------------------------------------------------- public API
    def encode_prompt(self, prompt: str) -> list[int]:
        """Prompt text -> ids. Special-token look-alikes stay ordinary text; '' -> [<|endoftext|>]."""
        if not isinstance(prompt, str):
            raise UserError(f"a prompt must be a str, got {type(prompt).__name__}")
        return self._check_ids(self.tokenizer.encode(prompt, allowed_special=()))

    def generate(self, prompt: str | Sequence[str], config: GenerationConfig | None = None):
        """One prompt -> GenerationResult; a list of prompts -> a list of them (generated as one batch)."""
        if isinstance(prompt, str):
            return self.generate_ids(self.encode_prompt(prompt), config)
        return self._generate_batch([self.encode_prompt(p) for p in prompt], config)

    def generate_ids(self, ids: Sequence[int] | Sequence[Sequence[int]], config: GenerationConfig | None = None):
        """Like ``generate`` for prompts already tokenized (e.g. ones holding special tokens such as ``<INST>``)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        if len(ids) and not isinstance(ids[0], int):
            return self._generate_batch([self._check_ids(list(row)) for row in ids], config)
        return self._generate_batch([self._check_ids(list(ids))], config)[0]

    def stream(self, prompt: str, config: GenerationConfig | None = None) -> Iterator[str]:
        """Yield the completion's text in pieces of whole characters, as it is generated."""
        return self.stream_ids(self.encode_prompt(prompt), config)

    def stream_ids(self, ids: Sequence[int], config: GenerationConfig | None = None) -> Iterator[str]:
        events = self.iter_tokens([self._check_ids(list(ids))], config)  # validates now, not at first next()
        return (e.text for e in events if e.text)

    def iter_tokens(self, prompts_ids: list[list[int]], config: GenerationConfig | None = None) -> Iterator[TokenEvent]:
        """The lowest level: one event per sampled token of every row (for timing and batch streaming)."""
        config = (config or GenerationConfig()).validate()
        seqs = [_Sequence(p, self.tokenizer, config.stop) for p in prompts_ids]
        return self._run(seqs, config)

    # ----------------------------------------------------------------------------------- internals
    def _check_ids(self, ids: list[int]) -> list[int]:
        if not ids:
            eot = self.tokenizer.eot_id
            if eot is None:
                raise UserError("the prompt is empty and the tokenizer has no <|endoftext|> to start from; give a prompt")
            return [eot]
        V = self.model.config.vocab_size
        for i in ids:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < V:
                raise UserError(f"prompt token id {i!r} is not in 0..{V - 1} (the model's vocabulary)")
        return ids

    def _stop_ids(self, config: GenerationConfig) -> frozenset[int]:
        if config.stop_token_ids is not None:
            return frozenset(config.stop_token_ids)
        eot = self.tokenizer.eot_id
        return frozenset() if eot is None else frozenset((eot,))

    def _generate_batch(self, prompts_ids: list[list[int]], config) -> list[GenerationResult]:
        config = (config or GenerationConfig()).validate()
        seqs = [_Sequence(p, self.tokenizer, config.stop) for p in prompts_ids]
        for _ in self._run(seqs, config):
            pass
        return [s.result() for s in seqs]

    def _inputs(self, contexts: list[list[int]]):
        """Left-pad contexts to one length L: idx (B, L), positions (B, L) or None, real (B, L) bool or None."""
        lens = [len(c) for c in contexts]
        L = max(lens)
        idx = torch.tensor([[0] * (L - n) + c for c, n in zip(contexts, lens)], dtype=torch.long, device=self.device)
        if min(lens) == L:
            return idx, None, None, lens  # no padding: default positions 0..L-1 and the plain causal mask
        pad = torch.tensor([L - n for n in lens], device=self.device)[:, None]  # (B, 1)
        ar = torch.arange(L, device=self.device)[None, :]  # (1, L)
        positions = (ar - pad).clamp(min=0)  # each row counts from 0 at its first real token
        return idx, positions, ar >= pad, lens

    @torch.inference_mode()
    def _run(self, seqs: list[_Sequence], cfg: GenerationConfig) -> Iterator[TokenEvent]:
        model, block_size, keep = self.model, self.block_size, self.crop_keep
        stop_ids = self._stop_ids(cfg)
        sampler = Sampler(cfg, len(seqs), self.vocab_size, self.device, end_id(cfg, self.tokenizer.eot_id),
                          self.copyable(cfg))
        for i, s in enumerate(seqs):
            sampler.start_row(i, s.ids)
            s.fit(block_size, keep)
        active = list(range(len(seqs)))  # rows still generating; batch row j is seqs[active[j]]
        cache = None  # None: (re-)prefill on the next step
        # per-row next positions (B, 1) and key padding mask (B, block_size): padded batches only
        pos = kpm = nxt = None
        for step in range(cfg.max_new_tokens):
            # ---- 1. logits for the next token of every active row: (B, V)
            if not cfg.use_cache:
                idx, positions, real, _ = self._inputs([seqs[i].context() for i in active])
                logits, _ = model(idx, positions=positions, key_padding_mask=real, last_only=True)
            elif cache is None:
                idx, positions, real, lens = self._inputs([seqs[i].context() for i in active])
                cache = KVCache.for_model(model, len(active), max_len=block_size)
                if real is not None:
                    kpm = torch.ones(len(active), block_size, dtype=torch.bool, device=self.device)
                    kpm[:, : idx.shape[1]] = real
                    pos = torch.tensor(lens, device=self.device)[:, None]
                else:
                    kpm = pos = None
                logits, _ = model(idx, kv_cache=cache, positions=positions, key_padding_mask=real, last_only=True)
            else:
                logits, _ = model(nxt[:, None], kv_cache=cache, positions=pos, key_padding_mask=kpm, last_only=True)
                if pos is not None:
                    pos += 1
            # ---- 2. sample, then update each row's text
            nxt = sampler(logits[:, -1])
            last = step == cfg.max_new_tokens - 1
            for j, t in enumerate(nxt.tolist()):
                s = seqs[active[j]]
                s.completion_tokens += 1
                if t in stop_ids:
                    text = s.close("stop")
                else:
                    text = s.add(t)
                    if last and s.finish_reason is None:
                        text += s.close("length")
                if text:
                    s.pieces.append(text)
                yield TokenEvent(active[j], t, text)
            # ---- 3. drop finished rows from the batch
            still = [j for j, i in enumerate(active) if seqs[i].finish_reason is None]
            if not still:
                return
            if len(still) < len(active):
                rows = torch.tensor(still, device=self.device)
                active = [active[j] for j in still]
                sampler.keep_rows(still, rows)
                nxt = nxt.index_select(0, rows)
                if cache is not None:
                    cache.select(rows)
                if pos is not None:
                    pos, kpm = pos.index_select(0, rows), kpm.index_select(0, rows)
            # ---- 4. context limit: crop and prefill again when the next token would not fit
            if not cfg.use_cache:
                for i in active:
                    seqs[i].fit(block_size, keep)
            elif cache.pos + 1 > block_size:
                for i in active:
                    seqs[i].fit(block_size, keep)
                cache = None
