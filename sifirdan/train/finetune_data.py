"""Fine-tuning = the one loop (``trainer.py``) fed with instruction examples instead of text windows.

    examples, counts = tokenize_conversations(convs, tokenizer, template, block_size)
    data = finetune_data(train_examples, val_examples, cfg, pad_id=tokenizer.special_tokens["<PAD>"])

Each example is its own row -- never a window across two examples -- right-padded with ``<PAD>`` to the longest
row of its batch; the targets of padding, and (by default) of every prompt token, are ``IGNORE_INDEX``, so the
loss is the response's (and its ``</RESP>``'s) alone. ``train_on_prompt=True`` scores every real token.

``guide_data`` is the guide's way instead (§9): every example rendered and concatenated into one token
stream, random 256-token windows cut from it, the loss on every token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

from sifirdan.errors import UserError
from sifirdan.model.gpt import IGNORE_INDEX
from sifirdan.train.config import TrainConfig
from sifirdan.train.distributed import DistInfo
from sifirdan.train.trainer import TrainData, stream_index

LENGTH_MODES = ("drop", "truncate")
GROUP_BATCHES = 8  # ExampleBatches sorts examples by length within windows of this many batches


@dataclass
class Example:
    ids: list[int]  # the rendered conversation
    mask: list[int]  # 1 where ids[t] is a token the model learns to produce (same length as ids)


@dataclass
class TokenizeCounts:
    kept: int = 0
    truncated: int = 0  # answers cut to fit (their </RESP> left out)
    dropped: int = 0  # longer than the block (--drop), or a prompt that leaves no room for the answer
    trained_tokens: int = 0
    longest: int = 0  # tokens of the longest rendered example, before any cut
    lengths: list[int] = field(default_factory=list)


def tokenize_conversations(convs, tokenizer, template, block_size: int, mode: str = "drop",
                           train_on_prompt: bool = False) -> tuple[list[Example], TokenizeCounts]:
    """Render every conversation; fit it to ``block_size + 1`` tokens (a row's inputs and targets overlap by
    all but one token) by dropping it or, with ``mode="truncate"``, cutting the end of its last answer."""
    if mode not in LENGTH_MODES:
        raise UserError(f"length mode must be one of {', '.join(LENGTH_MODES)}, got {mode!r}")
    limit = block_size + 1
    counts = TokenizeCounts()
    out = []
    for conv in convs:
        ids, mask = template.render(conv, tokenizer)
        counts.longest = max(counts.longest, len(ids))
        if len(ids) > limit:
            prompt, _ = template.render_parts(conv, tokenizer)
            if mode == "drop" or len(prompt) >= limit:  # not even one answer token would fit
                counts.dropped += 1
                continue
            # keep the prompt, cut the answer; the cut answer never ends in </RESP> (it is the last token), so
            # the model does not learn a truncated answer as a finished one
            ids, mask = ids[:limit], mask[:limit]
            counts.truncated += 1
        if train_on_prompt:
            mask = [0] + [1] * (len(ids) - 1)  # every token after the first is a target
        counts.kept += 1
        counts.trained_tokens += sum(mask[1:])
        counts.lengths.append(len(ids))
        out.append(Example(ids, mask))
    return out, counts


def example_tensors(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch: x (B, L-1) ids right-padded with ``pad_id``, y (B, L-1) next-token targets, IGNORE_INDEX where
    the target is padding or a token the mask does not train. L = the longest example of the batch."""
    width = max(len(e.ids) for e in examples) - 1
    x = torch.full((len(examples), width), pad_id, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for r, e in enumerate(examples):
        n = len(e.ids) - 1
        ids = torch.tensor(e.ids, dtype=torch.long)
        keep = torch.tensor(e.mask[1:], dtype=torch.bool)
        x[r, :n] = ids[:-1]
        y[r, :n] = torch.where(keep, ids[1:], torch.full_like(ids[1:], IGNORE_INDEX))
    return x, y


class ExampleBatches:
    """An endless, resumable stream of example batches: each epoch a seeded shuffle, stream ``rank`` of
    ``world_size`` taking every world_size-th example of it (the streams never share an example)."""

    def __init__(self, examples: list[Example], batch_size: int, pad_id: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        if len(examples) < world_size:
            raise UserError(f"{len(examples)} training example(s) for {world_size} data streams "
                            "(processes x --grad-accum); add data or lower --grad-accum")
        self.examples = examples
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.pos = 0
        self._order = self._epoch_order()

    def _epoch_order(self) -> list[int]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        order = list(range(len(self.examples)))
        rng.shuffle(order)
        mine = order[self.rank :: self.world_size]
        # Rows are padded to the longest of their batch, so batches of similar lengths waste less: within
        # each window of GROUP_BATCHES batches the examples are sorted by length, and the batches cut from
        # them are shuffled again (long and short batches interleave; every example still comes once an epoch).
        bs, window = self.batch_size, self.batch_size * GROUP_BATCHES
        grouped = []
        for i in range(0, len(mine), window):
            grouped += sorted(mine[i : i + window], key=lambda j: len(self.examples[j].ids))
        batches = [grouped[i : i + bs] for i in range(0, len(grouped), bs)]
        rng.shuffle(batches)
        return [j for b in batches for j in b]

    def next_batch(self):
        picked = []
        while len(picked) < self.batch_size:
            if self.pos >= len(self._order):
                self.epoch += 1
                self.pos = 0
                self._order = self._epoch_order()
            picked.append(self.examples[self._order[self.pos]])
            self.pos += 1
        return example_tensors(picked, self.pad_id)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._epoch_order()


class MixedBatches:
    """Fine-tuning batches with plain text mixed in: each batch is ``batch_size - text_rows`` example rows (from
    ``ExampleBatches``) followed by ``text_rows`` windows of pre-training text, cut to the example rows' width,
    every target of the text scored.

    The issue's lever "mix pre-training text into the SFT batches, so the model keeps what it knew": 300 steps
    of answers alone cost the model plain Nutuk text (4.7 -> 7.1 nats/token). With 4 of 16 rows of Nutuk, held-out
    answers score higher and the val loss on answers is lower (bench/RESULTS.md, "pre-training text in the
    fine-tuning batches"). Both streams resume exactly (``state_dict`` holds both).
    """

    def __init__(self, examples: ExampleBatches, text):
        self.examples = examples
        self.text = text  # a data.BatchSampler over the text's train split, text_rows windows of block_size

    def next_batch(self):
        x, y = self.examples.next_batch()
        tx, ty = self.text.next_batch()
        width = x.shape[1]  # the example rows' width: the text windows are cut to it
        return torch.cat([x, tx[:, :width]]), torch.cat([y, ty[:, :width]])

    def state_dict(self) -> dict:
        return {"examples": self.examples.state_dict(), "text": self.text.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.examples.load_state_dict(state["examples"])
        self.text.load_state_dict(state["text"])


def check_mix_rows(text_rows: int, batch_size: int) -> None:
    """Text rows must leave at least one example row in a batch."""
    if text_rows and not 0 < text_rows < batch_size:
        raise UserError(f"--mix-rows {text_rows} leaves no room for examples in a batch of {batch_size}; give fewer "
                        f"rows than --batch-size (e.g. --mix-rows {max(1, batch_size // 4)}) or 0")


def _batches_of(examples: list[Example], batch_size: int, pad_id: int):
    return [example_tensors(examples[i : i + batch_size], pad_id) for i in range(0, len(examples), batch_size)]


def answer_bytes_per_token(examples: list[Example], tokenizer) -> float | None:
    """UTF-8 bytes per trained token, counting the trained text's bytes (a special token such as </RESP> adds a
    token but no text): bits per byte of the answers."""
    n_tokens = n_bytes = 0
    specials = set(tokenizer.special_tokens.values())
    for e in examples:
        trained = [i for i, m in zip(e.ids, e.mask) if m]
        n_tokens += len(trained)
        n_bytes += len(tokenizer.decode_bytes([i for i in trained if i not in specials]))
    return n_bytes / n_tokens if n_tokens else None


def finetune_data(train: list[Example], val: list[Example], cfg: TrainConfig, pad_id: int, tokenizer=None,
                  dist: DistInfo | None = None, text: np.ndarray | None = None, text_rows: int = 0,
                  block_size: int | None = None) -> TrainData:
    """``TrainData`` over examples: one ``ExampleBatches`` per (rank, micro-step) stream; evaluation on the
    first ``eval_iters`` batches of train and on every val example (the same batches each time).

    ``text`` (token ids of plain text) and ``text_rows`` > 0: every training batch is ``batch_size - text_rows``
    examples and ``text_rows`` windows of ``block_size`` tokens of the text (``MixedBatches``); evaluation stays
    on the examples alone."""
    from sifirdan.data.sampler import BatchSampler

    dist = dist or DistInfo()
    n_streams = dist.world_size * cfg.grad_accum
    mixing = text is not None and text_rows > 0
    if mixing:
        check_mix_rows(text_rows, cfg.batch_size)
    sources = []
    for m in range(cfg.grad_accum):
        stream = stream_index(dist.rank, m, cfg.grad_accum)
        rows = cfg.batch_size - text_rows if mixing else cfg.batch_size
        source = ExampleBatches(train, rows, pad_id, cfg.seed, rank=stream, world_size=n_streams)
        if mixing:
            windows = BatchSampler(text, text_rows, block_size, cfg.seed, rank=stream, world_size=n_streams,
                                   name="mixed-in text (train split)")
            source = MixedBatches(source, windows)
        sources.append(source)
    train_eval = _batches_of(train, cfg.batch_size, pad_id)[: cfg.eval_iters]
    val_eval = _batches_of(val, cfg.batch_size, pad_id)
    evals = {"train": lambda: iter(train_eval)}
    if val_eval:
        evals["val"] = lambda: iter(val_eval)
    bpt = {}
    if tokenizer is not None:
        bpt = {k: v for k, v in (("train", answer_bytes_per_token(train, tokenizer)),
                                 ("val", answer_bytes_per_token(val, tokenizer))) if v is not None}
    return TrainData(train=sources, eval=evals, final=(lambda: iter(val_eval)) if val_eval else None,
                     bytes_per_token=bpt)


# ------------------------------------------------------------------------------------------------ the guide's way
class StreamWindows:
    """The guide's fine-tuning batches: random ``block_size`` windows of one concatenated token stream, every
    target scored (a window may span two examples; that is what the guide does)."""

    def __init__(self, stream: np.ndarray, batch_size: int, block_size: int, seed: int, rank: int = 0, world_size: int = 1):
        from sifirdan.data.sampler import BatchSampler

        self._sampler = BatchSampler(stream, batch_size, block_size, seed, rank=rank, world_size=world_size, name="train")

    def next_batch(self):
        return self._sampler.next_batch()

    def state_dict(self) -> dict:
        return self._sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._sampler.load_state_dict(state)


def guide_data(train: list[Example], val: list[Example], cfg: TrainConfig, block_size: int, pad_id: int,
               tokenizer=None, dist: DistInfo | None = None) -> TrainData:
    """``TrainData`` for ``--recipe guide``: training on windows of the concatenated examples, all tokens
    scored. Evaluation is the same response-only val loss as our recipe, so the two compare."""
    dist = dist or DistInfo()
    stream = np.asarray([i for e in train for i in e.ids], dtype=np.int64)
    if len(stream) < block_size + 1:
        raise UserError(f"the training examples hold {len(stream)} tokens, fewer than one window of "
                        f"{block_size + 1}; add data or lower --block-size")
    n_streams = dist.world_size * cfg.grad_accum
    sources = [StreamWindows(stream, cfg.batch_size, block_size, cfg.seed,
                             rank=stream_index(dist.rank, m, cfg.grad_accum), world_size=n_streams)
               for m in range(cfg.grad_accum)]
    ours = finetune_data(train, val, cfg, pad_id, tokenizer, dist)
    return TrainData(train=sources, eval=ours.eval, final=ours.final, bytes_per_token=ours.bytes_per_token)
