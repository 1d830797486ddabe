"""From logits to the next token: repetition penalty -> the prompt boost (prompt_boost.py) -> the length decay's
push on the end id -> banned ids (suppressed, n-gram ban) -> temperature -> top-k -> top-p -> sample.

All functions work on a batch: logits (B, V). Sampling draws from one ``torch.Generator`` per row, never
from the global RNG, so a seed reproduces a text exactly, and a prompt's sample does not depend on which
other prompts share its batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sifirdan.generate.config import GenerationConfig
from sifirdan.generate.prompt_boost import PromptBoost


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL (Keskar et al. 2019): make every already-seen token less likely, whatever its logit's sign.

    Dividing a positive logit and multiplying a negative one by ``penalty`` > 1 both lower it; ``seen`` (B, V)
    is True for tokens in the prompt or generated so far.
    """
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


# The push's multiplier is capped at e**60 (1e26): a stop logit of |x| <= 1e3 then gains at most 1e29, and over the
# smallest temperature (1e-4) that is 1e33, still a finite float32 (an inf logit makes softmax NaN). Far earlier
# than the cap the stop id is already the only likely token.
_MAX_PUSH_LOG = 60.0
_MAX_PUSHED_LOGIT = 1e30


def push_stop_ids(logits: torch.Tensor, stop_ids, past_start: int, factor: float) -> torch.Tensor:
    """transformers' ``exponential_decay_length_penalty``, ``past_start`` tokens past its start: each id's logit in
    ``stop_ids`` gains |logit| * (factor**past_start - 1), so ending gets likelier with every token an answer runs on.

    A small model that never learned when to stop writes until ``max_new_tokens``; this ends such answers soon after
    ``start`` while leaving shorter ones untouched (a positive logit grows, a negative one climbs towards 0 and
    past it). ``logits`` (B, V) is changed in place; a logit of exactly 0 gets no push (as in transformers).
    The samplers pass one id, the first stop id (``end_id``).
    """
    if past_start <= 0 or factor == 1.0:
        return logits
    grow = math.expm1(min(past_start * math.log(factor), _MAX_PUSH_LOG))
    for sid in stop_ids:
        if sid < logits.shape[-1]:
            col = logits[:, sid]
            logits[:, sid] = (col + col.abs() * grow).clamp(-_MAX_PUSHED_LOGIT, _MAX_PUSHED_LOGIT)
    return logits


def end_id(config: GenerationConfig, default: int | None) -> tuple[int, ...]:
    """The id the length decay pushes: the first of ``config.stop_token_ids`` (a chat's ``</RESP>``: its template
    lists it first), else ``default`` (the tokenizer's ``<|endoftext|>``); () when nothing stops the text.

    One id, where transformers pushes every end id: the push grows with |logit|, so of several the least likely
    one overtakes the rest. On the five Nutuk folds, pushing the model's likelier of ``</RESP>`` and
    ``<|endoftext|>`` ended 4 of 300 greedy answers (8 sampled) with ``<|endoftext|>``, outside the chat format;
    pushing ``</RESP>`` alone ends them with it (bench/RESULTS.md, "the length decay, built")."""
    if config.stop_token_ids is not None:
        return tuple(config.stop_token_ids[:1])
    return () if default is None else (default,)


class NgramBan:
    """``no_repeat_ngram_size`` for one row: a token that would complete an n-gram the answer already holds
    gets probability 0 (as transformers' ``no_repeat_ngram_size``, but over the generated tokens only: an answer
    may restate its question's words, and the prompt's template tokens are not the answer's).

    Keeps a table (n-1 previous tokens) -> tokens that followed them, updated one token at a time, so a step
    costs O(1) whatever the answer's length. Greedy decoding with it still takes the most likely token that is
    allowed; a small model's loops ("milli hareketin milli hareketin ...") cannot start.
    """

    def __init__(self, n: int):
        self.n = n
        self.tokens: list[int] = []
        self.followers: dict[tuple[int, ...], set[int]] = {}

    def push(self, token: int) -> None:
        self.tokens.append(token)
        if len(self.tokens) >= self.n:
            key = tuple(self.tokens[-self.n : -1])
            self.followers.setdefault(key, set()).add(token)

    def banned(self) -> list[int]:
        if len(self.tokens) < self.n - 1:
            return []
        key = tuple(self.tokens[len(self.tokens) - self.n + 1 :]) if self.n > 1 else ()
        return sorted(self.followers.get(key, ()))


def ban_tokens(logits: torch.Tensor, row: int, suppressed: tuple[int, ...], ban: NgramBan | None) -> None:
    """Set ``row``'s banned tokens to -inf in place: the config's ``suppress_token_ids`` and what the n-gram ban
    forbids now. All of them at once, so the check that some token is left sees both."""
    banned = set(suppressed)
    if ban is not None:
        banned.update(ban.banned())
    banned = sorted(t for t in banned if t < logits.shape[-1])
    if banned and len(banned) < logits.shape[-1]:  # never leave a row no token at all
        logits[row, banned] = float("-inf")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (ties with the k-th are kept too); the rest become -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest value
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probabilities sum to >= p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = F.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each token
    sorted_logits = sorted_logits.masked_fill(_cut(mass_before, p), float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def _cut(mass_before: torch.Tensor, p) -> torch.Tensor:
    """Which sorted tokens top-p removes: those whose better-ranked tokens reach p already. The first (most
    likely) token is never removed, whatever p is: a p that rounds to 0 in float32 (1e-320) would otherwise
    remove every token, and softmax over nothing but -inf is NaN."""
    cut = mass_before >= p
    cut[..., 0] = False
    return cut


class Sampler:
    """Picks the next token of every row; holds the per-row generators and the 'seen' table."""

    def __init__(self, config: GenerationConfig, batch_size: int, vocab_size: int, device, end_ids=(),
                 copyable: torch.Tensor | None = None):
        self.config = config
        self.vocab_size = vocab_size
        self.end_ids = tuple(end_ids)  # what the length decay (exponential_decay_length_penalty) pushes: end_id()
        self.step = 0  # tokens sampled so far: every row of a batch starts together, so one count serves all
        self.generators: list[torch.Generator] = []
        if not config.greedy:
            for i in range(batch_size):
                g = torch.Generator(device=device)
                if config.seed is None:
                    g.seed()  # fresh entropy for this generator only; the global RNG is untouched
                else:
                    g.manual_seed(config.seed + i)
                self.generators.append(g)
        self.seen: torch.Tensor | None = None  # (B, V) bool, only when a repetition penalty is on
        if config.repetition_penalty != 1.0:
            self.seen = torch.zeros(batch_size, vocab_size, dtype=torch.bool, device=device)
        n = config.no_repeat_ngram_size
        self.bans: list[NgramBan] | None = [NgramBan(n) for _ in range(batch_size)] if n else None
        # the prompt boost: one state per row, set by start_row (copyable: prompt_boost.copyable_mask)
        self.copyable = copyable
        self.boosts: list[PromptBoost | None] | None = None
        if config.prompt_boost is not None and copyable is not None:
            self.boosts = [None] * batch_size

    def mark_seen(self, row: int, ids: list[int]) -> None:
        if self.seen is not None and ids:
            self.seen[row, torch.tensor(ids, device=self.seen.device)] = True

    def start_row(self, row: int, prompt_ids: list[int]) -> None:
        """Row ``row`` answers ``prompt_ids``: what the repetition penalty has seen and the prompt boost copies."""
        self.mark_seen(row, prompt_ids)
        if self.boosts is not None:
            self.boosts[row] = PromptBoost(prompt_ids, self.copyable, *self.config.prompt_boost)

    def keep_rows(self, rows: list[int], rows_t: torch.Tensor) -> None:
        """Drop the state of finished rows (the batch shrinks)."""
        if self.generators:
            self.generators = [self.generators[r] for r in rows]
        if self.seen is not None:
            self.seen = self.seen.index_select(0, rows_t)
        if self.bans is not None:
            self.bans = [self.bans[r] for r in rows]
        if self.boosts is not None:
            self.boosts = [self.boosts[r] for r in rows]

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (B, V) -> next token ids (B,)."""
        cfg = self.config
        logits = logits[:, : self.vocab_size].float()  # ids the tokenizer cannot decode are never sampled
        if self.seen is not None:
            logits = apply_repetition_penalty(logits, self.seen, cfg.repetition_penalty)
        if self.boosts is not None:
            logits = logits.clone()
            for i, boost in enumerate(self.boosts):
                if boost is not None:
                    boost.apply(logits[i])
        decay = cfg.exponential_decay_length_penalty
        if decay is not None and self.end_ids and self.step > decay[0]:
            logits = push_stop_ids(logits.clone(), self.end_ids, self.step - decay[0], decay[1])
        self.step += 1
        if self.bans is not None or cfg.suppress_token_ids:
            logits = logits.clone()
            for i in range(logits.shape[0]):
                ban_tokens(logits, i, cfg.suppress_token_ids, self.bans[i] if self.bans is not None else None)
        if cfg.greedy:
            nxt = logits.argmax(dim=-1)
        else:
            logits = logits / cfg.temperature
            logits = top_k_filter(logits, cfg.top_k)
            logits = top_p_filter(logits, cfg.top_p)
            probs = F.softmax(logits, dim=-1)
            # one draw per row from that row's own generator: the batch never shares random numbers
            nxt = torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)])
        if self.seen is not None:
            self.seen.scatter_(1, nxt[:, None], True)
        if self.bans is not None or self.boosts is not None:
            picked = nxt.tolist()
            for ban, t in zip(self.bans or (), picked):
                ban.push(t)
            for boost, t in zip(self.boosts or (), picked):
                if boost is not None:
                    boost.push(t)
        return nxt


class RowSampler:
    """One row's sampling state when every row of a batch has its own settings (continuous batching).

    The same steps as ``Sampler`` -- repetition penalty -> prompt boost -> length decay -> banned ids -> temperature
    -> top-k -> top-p -> one draw from the row's own generator -- with this row's ``GenerationConfig``. The
    generator is seeded ``config.seed`` (the caller adds a choice index itself), so a row samples what ``Sampler``
    samples for row 0 of a batch. ``sample_rows`` runs the rows of a batch together.
    """

    def __init__(self, config: GenerationConfig, vocab_size: int, device, prompt_ids: list[int] = (), end_ids=(),
                 copyable: torch.Tensor | None = None):
        self.config = config
        self.vocab_size = vocab_size
        self.end_ids = tuple(end_ids)  # what the length decay pushes: end_id()
        self.step = 0  # tokens this row has sampled
        self.generator: torch.Generator | None = None
        if not config.greedy:
            self.generator = torch.Generator(device=device)
            if config.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(config.seed)
        self.seen: torch.Tensor | None = None  # (V,) bool, only with a repetition penalty
        if config.repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            self.mark_seen(prompt_ids)
        n = config.no_repeat_ngram_size
        self.ban: NgramBan | None = NgramBan(n) if n else None  # over the generated tokens only
        self.boost: PromptBoost | None = None
        if config.prompt_boost is not None and copyable is not None:
            self.boost = PromptBoost(list(prompt_ids), copyable, *config.prompt_boost)

    def mark_seen(self, ids) -> None:
        if self.seen is not None and len(ids):
            self.seen[torch.tensor(list(ids), device=self.seen.device)] = True


def sample_rows(logits: torch.Tensor, rows: list[RowSampler]) -> torch.Tensor:
    """logits (B, V) -> next ids (B,), row i with ``rows[i]``'s settings and generator.

    Rows are filtered together where their settings allow (one top-k, one sort for top-p), and every step is
    row-wise, so a row's result does not depend on the other rows.
    """
    V = rows[0].vocab_size
    logits = logits[:, :V].float()
    pen = [i for i, r in enumerate(rows) if r.seen is not None]
    boosted = [i for i, r in enumerate(rows) if r.boost is not None]
    pushed = [i for i, r in enumerate(rows) if r.end_ids and r.config.exponential_decay_length_penalty is not None
              and r.step > r.config.exponential_decay_length_penalty[0]]
    banning = [i for i, r in enumerate(rows) if r.ban is not None or r.config.suppress_token_ids]
    for r in rows:
        r.step += 1
    if pen or boosted or pushed or banning:
        logits = logits.clone()
        for i in pen:
            logits[i : i + 1] = apply_repetition_penalty(logits[i : i + 1], rows[i].seen[None], rows[i].config.repetition_penalty)
        for i in boosted:
            rows[i].boost.apply(logits[i])
        for i in pushed:
            start, factor = rows[i].config.exponential_decay_length_penalty
            push_stop_ids(logits[i : i + 1], rows[i].end_ids, rows[i].step - 1 - start, factor)
        for i in banning:
            ban_tokens(logits, i, rows[i].config.suppress_token_ids, rows[i].ban)
    nxt = logits.argmax(dim=-1)
    sampled = [i for i, r in enumerate(rows) if not r.config.greedy]
    if sampled:
        sub = logits if len(sampled) == len(rows) else logits[sampled]
        cfgs = [rows[i].config for i in sampled]
        temps = torch.tensor([c.temperature for c in cfgs], dtype=sub.dtype, device=sub.device)[:, None]
        sub = sub / temps
        ks = [c.top_k if 0 < c.top_k < V else 0 for c in cfgs]
        if any(ks):
            top = torch.topk(sub, max(ks), dim=-1).values  # (b, kmax), largest first
            kth = top.gather(1, torch.tensor([max(k, 1) - 1 for k in ks], device=sub.device)[:, None])
            off = torch.tensor([k == 0 for k in ks], device=sub.device)[:, None]
            kth = kth.masked_fill(off, float("-inf"))  # rows without top-k keep everything
            sub = sub.masked_fill(sub < kth, float("-inf"))
        ps = [c.top_p for c in cfgs]
        if any(p < 1.0 for p in ps):
            # top_p_filter with one p per row; rows at p = 1 (off) get p = inf: nothing is ever cut there
            p = torch.tensor([q if q < 1.0 else float("inf") for q in ps], dtype=sub.dtype, device=sub.device)[:, None]
            sorted_logits, order = torch.sort(sub, dim=-1, descending=True)
            probs = F.softmax(sorted_logits, dim=-1)
            mass_before = probs.cumsum(dim=-1) - probs
            sorted_logits = sorted_logits.masked_fill(_cut(mass_before, p), float("-inf"))
            sub = torch.full_like(sub, float("-inf")).scatter(-1, order, sorted_logits)
        probs = F.softmax(sub, dim=-1)
        # torch.multinomial(p, 1) draws argmax(p / q) with q ~ Exp(1) (the Gumbel-max trick, PyTorch's own
        # implementation for one sample): the same q from each row's generator, then one division and one
        # argmax for all rows -- the same token as a multinomial call per row, without its per-call checks
        q = torch.empty_like(probs)
        for j, i in enumerate(sampled):
            q[j].exponential_(1, generator=rows[i].generator)
        draws = (probs / q).argmax(dim=-1)
        if len(sampled) == len(rows):
            nxt = draws
        else:
            nxt = nxt.clone()
            nxt[torch.tensor(sampled, device=nxt.device)] = draws
    for i in pen:
        rows[i].seen[nxt[i]] = True
    growing = [i for i in banning if rows[i].ban is not None]  # the n-gram tables learn the new token
    if growing or boosted:
        picked = nxt.tolist()
        for i in growing:
            rows[i].ban.push(picked[i])
        for i in boosted:
            rows[i].boost.push(picked[i])
    return nxt
