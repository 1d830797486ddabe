"""Continuous batching: requests join and leave one running batch between decode steps (what a server needs).

    batcher = ContinuousBatcher(engine, max_batch=32)
    row = Row(prompt_ids, GenerationConfig(max_new_tokens=64, temperature=0.8, seed=1))
    batcher.add(row)
    while batcher.busy:
        for ev in batcher.step().events:  # one RowEvent per row that sampled a token this step
            print(ev.row.tag, ev.text, ev.finished)

``Engine.generate`` runs a batch that is fixed when it starts. Here each ``step()``:

1. drops rows whose ``cancel()`` was called (a client went away): their slot is free for this very step;
2. makes room: the cache's all-padding left columns are cut away (when the cache is full, or there are
   block_size // 8 of them); a row whose own context is full is cropped to its last ``crop_keep`` tokens
   and prefilled again (``Engine``'s crop rule);
3. runs one decode step for every running row, (B, 1) tokens through the KV cache;
4. prefills waiting rows (cropped ones first, then new ones in arrival order) while slots are free and the
   step's prefill budget lasts. Each prompt is prefilled *alone*, exactly as it would be with nobody else;
5. samples one token for every row, each with its own settings and generator (``sample_rows``), updates its
   text (whole characters, stop strings) and removes the rows that finished at once.

Cache layout. One preallocated (n_layer, max_batch, n_head, block_size, head_size) tensor; batch row j is
slot j. Every row's tokens end at the same column ``pos`` (right-aligned, as ``Engine``'s left padding):
the model's one-token step writes column ``pos`` for all rows at once, and each row has its own positions
(0 at its first token) and a key-padding mask that hides the columns left of its tokens. A new row with P
prompt tokens is copied into columns pos-P .. pos-1 of a free slot (if P > pos, every row first moves
right). Keys and values depend on a row's own positions, never on its column, so moving a row changes
nothing it computes. A row that finishes is replaced by the last slot's row (one row copied).

A request's output does not depend on the batch: its prefill is the same as alone, and every later step is
row-wise (per-row positions and masks, per-row sampling). The rest is float rounding: a matrix multiply of
B rows may round differently from one of 1 row, in the last bit of a logit -- a sampled token could differ
only where two tokens tie to that bit (tests check alone == among 15 others, and == ``Engine``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from sifirdan.generate.config import GenerationConfig
from sifirdan.generate.engine import _Sequence
from sifirdan.generate.sampling import RowSampler, end_id, sample_rows
from sifirdan.model import KVCache


class Row:
    """One sequence to generate: prompt ids, its own settings and stop ids, and what came out so far."""

    def __init__(self, prompt_ids: list[int], config: GenerationConfig, stop_ids=None, tag=None):
        self.prompt_ids = list(prompt_ids)
        self.config = config.validate()
        self.stop_ids = None if stop_ids is None else frozenset(stop_ids)  # None: the engine's default
        # the id the length decay pushes: the first stop id given (a chat's </RESP>), as sampling.end_id
        self.end_ids = None if stop_ids is None else tuple(stop_ids)[:1]
        self.tag = tag  # the caller's (e.g. which request and choice this row is)
        self.cancelled = False
        self.seq: _Sequence | None = None
        self.sampler: RowSampler | None = None
        self.cached = 0  # tokens of its window in the cache
        self.pending: int | None = None  # the last sampled token: the input of its next decode step

    def cancel(self) -> None:
        """Stop generating; the row leaves the batch (or the queue) at the start of the next step.
        Safe from any thread: it only sets a flag."""
        self.cancelled = True

    @property
    def finished(self) -> bool:
        return self.seq is not None and self.seq.finish_reason is not None

    def result(self):
        return self.seq.result()


@dataclass
class RowEvent:
    row: Row
    token_id: int
    text: str  # what the token adds to the visible text ('' while a character or a stop string is incomplete)
    finished: bool
    finish_reason: str | None


@dataclass
class StepResult:
    events: list[RowEvent] = field(default_factory=list)
    admitted: list[Row] = field(default_factory=list)  # rows that left the queue for the batch this step
    dropped: list[Row] = field(default_factory=list)  # cancelled rows removed this step (queued or running)


class _SlotView(KVCache):
    """The first B slots of the batch cache, as the model's ``kv_cache`` (writes go to the big tensors)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, B: int, pos: int):  # noqa: D107 -- no KVCache.__init__
        self.k, self.v = k[:, :B], v[:, :B]
        self.max_len = k.shape[3]
        self.pos = pos


class ContinuousBatcher:
    """Not thread-safe: one thread calls add/step; ``Row.cancel`` may come from anywhere."""

    def __init__(self, engine, max_batch: int = 32, *, prefill_budget: int | None = None):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.engine = engine
        self.model = engine.model
        self.block_size = engine.block_size
        self.keep = engine.crop_keep
        self.max_batch = max_batch
        self.device = engine.device
        # prompt tokens prefilled per step at most (at least one prompt is always taken): a burst of long
        # prompts delays the running rows' next token by about this many positions' work, not by all of it
        self.prefill_budget = prefill_budget or max(2 * self.block_size, 512)
        self.compact_at = max(8, self.block_size // 8)
        c = self.model.config
        p = next(self.model.parameters())
        shape = (c.n_layer, max_batch, c.n_head, self.block_size, c.n_embd // c.n_head)
        self.k = torch.zeros(shape, device=p.device, dtype=p.dtype)
        self.v = torch.zeros(shape, device=p.device, dtype=p.dtype)
        self.rows: list[Row] = []  # running; rows[j] is in slot j
        self.pos = 0  # columns in use: every running row's tokens end at pos
        self.waiting: deque[Row] = deque()
        self._recrop: list[Row] = []  # running rows that were cropped: prefilled again before new ones
        self.steps = 0

    # ----------------------------------------------------------------------------------------- public
    def add(self, row: Row) -> None:
        """Queue a row; it is prefilled and joins the batch at a coming step."""
        if row.seq is not None:
            raise ValueError("a Row can be added once")
        row.seq = _Sequence(row.prompt_ids, self.engine.tokenizer, row.config.stop)
        if row.stop_ids is None:
            row.stop_ids = self.engine._stop_ids(row.config)
        if row.end_ids is None:
            row.end_ids = end_id(row.config, self.engine.tokenizer.eot_id)
        row.sampler = RowSampler(row.config, self.engine.vocab_size, self.device, row.seq.ids, row.end_ids,
                                 self.engine.copyable(row.config))
        row.seq.fit(self.block_size, self.keep)  # a prompt longer than the context: its last `keep` tokens
        self.waiting.append(row)

    @property
    def running(self) -> int:
        return len(self.rows)

    @property
    def queued(self) -> int:
        return len(self.waiting) + len(self._recrop)

    @property
    def busy(self) -> bool:
        return bool(self.rows or self.waiting or self._recrop)

    @torch.inference_mode()
    def step(self) -> StepResult:
        out = StepResult()
        self._drop_cancelled(out)
        self._make_room()
        decode_logits = self._decode() if self.rows else None
        n_running = len(self.rows)
        prefill_logits = self._admit(out)
        if not self.rows:
            return out
        parts = [x for x in (decode_logits, prefill_logits) if x is not None]
        logits = parts[0] if len(parts) == 1 else torch.cat(parts)
        assert logits.shape[0] == len(self.rows) and n_running <= len(self.rows)
        tokens = sample_rows(logits, [r.sampler for r in self.rows]).tolist()
        done = []
        for j, (r, t) in enumerate(zip(self.rows, tokens)):
            s = r.seq
            s.completion_tokens += 1
            if t in r.stop_ids:
                text = s.close("stop")
            else:
                text = s.add(t)
                if s.completion_tokens >= r.config.max_new_tokens and s.finish_reason is None:
                    text += s.close("length")
            if text:
                s.pieces.append(text)
            r.pending = t
            out.events.append(RowEvent(r, t, text, s.finish_reason is not None, s.finish_reason))
            if s.finish_reason is not None:
                done.append(j)
        for j in reversed(done):
            self._remove_slot(j)
        self.steps += 1
        return out

    # ----------------------------------------------------------------------------------------- internals
    def _drop_cancelled(self, out: StepResult) -> None:
        for j in reversed(range(len(self.rows))):
            if self.rows[j].cancelled:
                out.dropped.append(self.rows[j])
                self._remove_slot(j)
        for q in (self._recrop, self.waiting):
            if any(r.cancelled for r in q):
                kept = [r for r in q if not r.cancelled]
                out.dropped += [r for r in q if r.cancelled]
                q.clear()
                q.extend(kept)

    def _remove_slot(self, j: int) -> None:
        last = len(self.rows) - 1
        if j != last:
            self.k[:, j, :, : self.pos] = self.k[:, last, :, : self.pos]
            self.v[:, j, :, : self.pos] = self.v[:, last, :, : self.pos]
            self.rows[j] = self.rows[last]
        self.rows.pop()
        if not self.rows:
            self.pos = 0

    def _shift(self, d: int) -> None:
        """Move every running row d columns (d > 0: right, d < 0: left)."""
        B, pos = len(self.rows), self.pos
        if d > 0:
            for t in (self.k, self.v):
                t[:, :B, :, d : pos + d] = t[:, :B, :, :pos].clone()
        elif d < 0:
            for t in (self.k, self.v):
                t[:, :B, :, : pos + d] = t[:, :B, :, -d:pos].clone()
        self.pos = pos + d

    def _make_room(self) -> None:
        """Before a decode step every running row needs a free column at `pos`, and room in its window.

        Columns left of every row's tokens (the longest row left) are cut away when the cache is full, and
        also as soon as there are ``compact_at`` of them: attention reads all ``pos`` columns of every row,
        so dead columns cost every step, and one copy of the cache costs about what they cost in a few."""
        if not self.rows:
            return
        gap = min(self.pos - r.cached for r in self.rows)  # columns no row uses any more
        if gap >= self.compact_at or (gap and self.pos + 1 > self.block_size):
            self._shift(-gap)
        if self.pos + 1 <= self.block_size:
            return
        # rows whose window is full (cached == block_size): Engine's crop rule, then a fresh prefill
        for j in reversed(range(len(self.rows))):
            r = self.rows[j]
            if r.cached + 1 > self.block_size:
                r.seq.fit(self.block_size, self.keep)
                self._recrop.append(r)
                self._remove_slot(j)
        if self.rows:
            self._shift(-min(self.pos - r.cached for r in self.rows))

    def _decode(self) -> torch.Tensor:
        B, pos, dev = len(self.rows), self.pos, self.device
        idx = torch.tensor([[r.pending] for r in self.rows], dtype=torch.long, device=dev)
        cached = torch.tensor([r.cached for r in self.rows], device=dev)
        positions = cached[:, None]  # each row's next position: its own count, not the column
        kpm = torch.arange(self.block_size, device=dev)[None, :] >= (pos - cached)[:, None]  # (B, block_size)
        cache = _SlotView(self.k, self.v, B, pos)
        logits, _ = self.model(idx, kv_cache=cache, positions=positions, key_padding_mask=kpm, last_only=True)
        self.pos += 1
        for r in self.rows:
            r.cached += 1
        return logits[:, -1]

    def _admit(self, out: StepResult) -> torch.Tensor | None:
        logits = []
        budget = self.prefill_budget
        while len(self.rows) < self.max_batch and (self._recrop or self.waiting):
            q = self._recrop if self._recrop else self.waiting
            r = q[0]
            ctx = r.seq.context()
            if logits and len(ctx) > budget:
                break  # the next step takes it
            q.pop(0) if q is self._recrop else q.popleft()
            budget -= len(ctx)
            logits.append(self._prefill_into_slot(r, ctx))
            if r.pending is None:
                out.admitted.append(r)
        return torch.cat(logits) if logits else None

    def _prefill_into_slot(self, r: Row, ctx: list[int]) -> torch.Tensor:
        P = len(ctx)
        tmp = KVCache.for_model(self.model, 1, max_len=P)
        idx = torch.tensor([ctx], dtype=torch.long, device=self.device)
        logits, _ = self.model(idx, kv_cache=tmp, last_only=True)  # exactly a prompt alone in Engine
        if P > self.pos:
            self._shift(P - self.pos)
        j = len(self.rows)
        self.k[:, j, :, self.pos - P : self.pos] = tmp.k[:, 0]
        self.v[:, j, :, self.pos - P : self.pos] = tmp.v[:, 0]
        r.cached = P
        self.rows.append(r)
        return logits[:, -1]
