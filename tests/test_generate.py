"""The generation engine: KV cache == recomputation, batches == one at a time, crops, seeds, sampling."""

from __future__ import annotations

import random

import pytest
import torch

from sifirdan.errors import UserError
from sifirdan.generate import MAX_NEW_TOKENS_CAP, Engine, GenerationConfig
from sifirdan.generate.sampling import apply_repetition_penalty, top_k_filter, top_p_filter
from sifirdan.model import GPT, GPTConfig
from sifirdan.tokenizer import BPETokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = (
    "Türkiye'nin başkenti Ankara'dır. Çiğdem ağaçların altında şarkı söylüyor. "
    "Öğretmen, öğrencilere ışığın hızını anlattı. Güzel bir gün 🌞 ve İstanbul'da yağmur yağıyor.\n"
) * 20


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(TEXT, vocab_size=320)


def random_model(tok, attention="sdpa", block_size=48, seed=0) -> GPT:
    torch.manual_seed(seed)
    # PyTorch's default init spreads the logits more than N(0, 0.02): no near-ties for argmax to trip on
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_embd=32, n_head=2, n_layer=2,
                    dropout=0.0, attention=attention, init="pytorch")
    return GPT(cfg).eval()


@pytest.fixture(scope="module")
def trained(tok):
    """A nano model trained ~100 AdamW steps on TEXT: peaked, realistic next-token distributions."""
    torch.manual_seed(1)
    torch.set_num_threads(1)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=48, n_embd=48, n_head=2, n_layer=2, dropout=0.0)
    model = GPT(cfg)
    data = torch.tensor(tok.encode(TEXT))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(100):
        ix = torch.randint(0, len(data) - 33, (16,))
        x = torch.stack([data[i : i + 32] for i in ix])
        y = torch.stack([data[i + 1 : i + 33] for i in ix])
        _, loss = model(x, y)
        first = first if first is not None else loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < first - 2.0, (first, loss.item())  # it did learn something
    return model.eval()


def random_prompts(tok, n, rng, max_len=40):
    ids = tok.encode(TEXT)
    out = []
    for _ in range(n):
        L = rng.randint(1, max_len)
        s = rng.randint(0, len(ids) - L)
        out.append(ids[s : s + L])
    return out


GREEDY = dict(temperature=0.0, stop_token_ids=())


# ------------------------------------------------------------------------------------------ cache == recompute
@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
@pytest.mark.parametrize("which", ["random", "trained"])
def test_cache_equals_recompute_50_prompts(tok, trained, attention, which):
    if which == "random":
        model = random_model(tok, attention)
    else:
        model = GPT(GPTConfig(**{**trained.config.to_dict(), "attention": attention})).eval()
        model.load_state_dict(trained.state_dict())
    engine = Engine(model, tok)
    rng = random.Random(attention + which)
    prompts = random_prompts(tok, 50, rng)
    prompts[0] = prompts[0] + prompts[1] + prompts[2]  # longer than block_size: cropped before the prefill
    cropped = 0
    for p in prompts:
        cached = engine.generate_ids(p, GenerationConfig(max_new_tokens=20, **GREEDY))
        recomputed = engine.generate_ids(p, GenerationConfig(max_new_tokens=20, use_cache=False, **GREEDY))
        assert cached.token_ids == recomputed.token_ids
        assert cached.completion_tokens == 20 and cached.finish_reason == "length"
        cropped += len(p) + 20 > model.config.block_size
    assert cropped >= 5  # the crop-and-prefill path was exercised too


def test_both_attention_paths_generate_the_same(tok):
    a, b = random_model(tok, "sdpa"), random_model(tok, "explicit")
    b.load_state_dict(a.state_dict())
    for p in random_prompts(tok, 5, random.Random(3)):
        cfg = GenerationConfig(max_new_tokens=30, **GREEDY)
        assert Engine(a, tok).generate_ids(p, cfg).token_ids == Engine(b, tok).generate_ids(p, cfg).token_ids


def test_crop_follows_the_documented_rule(tok):
    """Past block_size the context is cropped to the last crop_keep tokens -- checked against a naive loop."""
    model = random_model(tok, block_size=16)
    engine = Engine(model, tok, crop_keep=6)
    prompt = tok.encode("Türkiye'nin başkenti")[:5]
    got = engine.generate_ids(prompt, GenerationConfig(max_new_tokens=60, **GREEDY)).token_ids
    ids, start = list(prompt), 0
    with torch.no_grad():
        for _ in range(60):
            if len(ids) - start > 16:
                start = len(ids) - 6
            logits, _ = model(torch.tensor([ids[start:]]))
            ids.append(int(logits[0, -1, : tok.vocab_size].argmax()))
    assert got == ids[5:]
    assert Engine(model, tok).crop_keep == 8  # default: block_size // 2


def test_crop_keep_is_checked(tok):
    with pytest.raises(UserError, match="crop_keep"):
        Engine(random_model(tok, block_size=16), tok, crop_keep=17)


# ------------------------------------------------------------------------------------------ batches
@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_batch_equals_one_at_a_time(tok, trained, attention):
    model = GPT(GPTConfig(**{**trained.config.to_dict(), "attention": attention})).eval()
    model.load_state_dict(trained.state_dict())
    engine = Engine(model, tok)
    prompts = random_prompts(tok, 8, random.Random(7), max_len=30)
    assert len({len(p) for p in prompts}) > 3  # really different lengths: left padding at work
    # 40 new tokens: the longest rows cross block_size 48 and the batch is cropped + prefilled again
    plain = None
    for extra in ({}, {"stop": ("e",)}):  # stop strings finish rows at different steps: the batch shrinks
        cfg = GenerationConfig(max_new_tokens=40, **GREEDY, **extra)
        batch = engine.generate_ids(prompts, cfg)
        single = [engine.generate_ids(p, cfg) for p in prompts]
        assert [r.token_ids for r in batch] == [r.token_ids for r in single]
        assert [r.text for r in batch] == [r.text for r in single]
        assert [r.finish_reason for r in batch] == [r.finish_reason for r in single]
        assert [r.prompt_tokens for r in batch] == [len(p) for p in prompts]
        plain = plain or single
    assert len({len(r.token_ids) for r in batch}) > 1  # rows really finished at different steps
    nocache = engine.generate_ids(prompts, GenerationConfig(max_new_tokens=40, use_cache=False, **GREEDY))
    assert [r.token_ids for r in nocache] == [r.token_ids for r in plain]


def test_generate_text_batch_and_single(tok, trained):
    engine = Engine(trained, tok)
    cfg = GenerationConfig(max_new_tokens=10, **GREEDY)
    out = engine.generate(["Türkiye", "Öğretmen, öğrencilere"], cfg)
    assert isinstance(out, list) and len(out) == 2
    assert out[1].text == engine.generate("Öğretmen, öğrencilere", cfg).text
    assert out[1].text == tok.decode(out[1].token_ids)


# ------------------------------------------------------------------------------------------ sampling
def test_seed_reproduces_and_leaves_global_rng_alone(tok, trained):
    engine = Engine(trained, tok)
    cfg = GenerationConfig(max_new_tokens=40, temperature=1.0, top_k=50, top_p=0.95, seed=123, stop_token_ids=())
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = engine.generate("Güzel bir", cfg)
    assert torch.equal(torch.get_rng_state(), state)  # a dedicated generator, never the global RNG
    b = engine.generate("Güzel bir", cfg)
    assert a.text == b.text and a.token_ids == b.token_ids
    others = {tuple(engine.generate("Güzel bir", GenerationConfig(max_new_tokens=40, seed=s, stop_token_ids=())).token_ids) for s in range(4)}
    assert len(others) > 1  # different seeds, different samples


def test_batch_row_k_samples_like_seed_plus_k(tok, trained):
    engine = Engine(trained, tok)
    cfg = GenerationConfig(max_new_tokens=25, temperature=1.0, seed=10, stop_token_ids=())
    ids = tok.encode("Çiğdem")
    batch = engine.generate_ids([ids] * 3, cfg)
    for k in range(3):
        single = engine.generate_ids(ids, GenerationConfig(max_new_tokens=25, temperature=1.0, seed=10 + k, stop_token_ids=()))
        assert batch[k].token_ids == single.token_ids


def test_top_k_one_and_tiny_top_p_are_greedy(tok, trained):
    engine = Engine(trained, tok)
    greedy = engine.generate("Ankara", GenerationConfig(max_new_tokens=20, **GREEDY)).token_ids
    for extra in ({"top_k": 1}, {"top_p": 1e-6}):
        cfg = GenerationConfig(max_new_tokens=20, temperature=1.5, seed=5, stop_token_ids=(), **extra)
        assert engine.generate("Ankara", cfg).token_ids == greedy


def test_filters_and_repetition_penalty_values():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]  # positive / 2, negative * 2, unseen unchanged
    assert top_k_filter(logits, 2).isfinite().tolist() == [[True, False, False, True]]
    # probs of [3, 2, .5, -1] ~ [.69, .25, .05, .01]: p=0.9 keeps the two that reach it
    assert top_p_filter(logits, 0.9).isfinite().tolist() == [[True, False, False, True]]
    assert top_p_filter(logits, 0.5).isfinite().tolist() == [[False, False, False, True]]
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_repetition_penalty_discourages_repeats(tok, trained):
    engine = Engine(trained, tok)
    plain = engine.generate("Türkiye", GenerationConfig(max_new_tokens=60, **GREEDY)).token_ids
    penalized = engine.generate("Türkiye", GenerationConfig(max_new_tokens=60, repetition_penalty=5.0, **GREEDY)).token_ids
    assert len(set(penalized)) > len(set(plain))


# ------------------------------------------------------------------------------------------ prompts, stops
def test_empty_prompt_starts_from_endoftext(tok, trained):
    engine = Engine(trained, tok)
    r = engine.generate("", GenerationConfig(max_new_tokens=5, **GREEDY))
    assert r.prompt_tokens == 1 and r.completion_tokens == 5
    assert engine.encode_prompt("") == [tok.eot_id]
    bare = BPETokenizer.train(TEXT, vocab_size=300, special_tokens=[])
    with pytest.raises(UserError, match="endoftext"):
        Engine(random_model(bare), bare).generate("", GenerationConfig(max_new_tokens=5))


def test_special_token_text_in_a_prompt_is_ordinary_text(tok, trained):
    ids = Engine(trained, tok).encode_prompt("<|endoftext|><RESP>")
    assert tok.eot_id not in ids and tok.special_tokens["<RESP>"] not in ids
    assert tok.decode(ids) == "<|endoftext|><RESP>"


def test_stop_token_ends_generation(tok, trained):
    engine = Engine(trained, tok)
    free = engine.generate("Türkiye", GenerationConfig(max_new_tokens=30, **GREEDY))
    stop_at = free.token_ids[5]
    first = free.token_ids.index(stop_at)
    r = engine.generate("Türkiye", GenerationConfig(max_new_tokens=30, temperature=0, stop_token_ids=(stop_at,)))
    assert r.finish_reason == "stop"
    assert r.token_ids == free.token_ids[:first]  # the stop token itself is not part of the output
    assert r.completion_tokens == first + 1  # ... but it was generated, and counts
    assert r.text == tok.decode(r.token_ids)


def test_stop_string_cuts_text_before_it(tok, trained):
    engine = Engine(trained, tok)
    free = engine.generate("Türkiye", GenerationConfig(max_new_tokens=40, **GREEDY))
    stop = free.text[12:15]
    cut = free.text.index(stop)
    r = engine.generate("Türkiye", GenerationConfig(max_new_tokens=40, stop=(stop,), **GREEDY))
    assert r.finish_reason == "stop" and r.text == free.text[:cut]
    assert "".join(engine.stream("Türkiye", GenerationConfig(max_new_tokens=40, stop=(stop,), **GREEDY))) == r.text


def test_bad_prompt_ids(tok, trained):
    engine = Engine(trained, tok)
    with pytest.raises(UserError, match="not in 0"):
        engine.generate_ids([1, 10**6], GenerationConfig(max_new_tokens=2))


def test_tokenizer_bigger_than_model_is_refused(tok):
    small = GPT(GPTConfig(vocab_size=280, block_size=16, n_embd=16, n_head=2, n_layer=1))
    with pytest.raises(UserError, match="tokenizer"):
        Engine(small, tok)


# ------------------------------------------------------------------------------------------ config validation
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": MAX_NEW_TOKENS_CAP + 1}, str(MAX_NEW_TOKENS_CAP)),
        ({"seed": "abc"}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"stop": ("",)}, "stop"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(UserError, match=match) as e:
        GenerationConfig(**kwargs).validate()
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ the model's cache plumbing
@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_kv_cache_chunks_equal_one_full_pass(tok, attention):
    """Prefill 7, then a chunk of 5 (T > 1 over a cache: the triangle's lower rows), then 1 at a time."""
    from sifirdan.model import KVCache

    model = random_model(tok, attention)
    x = torch.randint(0, tok.vocab_size, (2, 20))
    with torch.no_grad():
        full, _ = model(x)
        cache = KVCache.for_model(model, 2)
        parts = [model(x[:, :7], kv_cache=cache)[0], model(x[:, 7:12], kv_cache=cache)[0]]
        parts += [model(x[:, t : t + 1], kv_cache=cache)[0] for t in range(12, 20)]
        assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
        with pytest.raises(ValueError, match="block_size"):
            model(torch.zeros(1, 30, dtype=torch.long), kv_cache=cache, positions=torch.arange(30)[None])


# ------------------------------------------------------------------------------------------ underflow (issue 19)
TINY = [1e-300, 1e-45, 1e-320]  # 0 in float32 (1e-45 is float32's smallest subnormal, and 1e-320 a float64 one)


@pytest.mark.parametrize("value", TINY + [5e-5])
def test_tiny_temperature_is_greedy_on_every_sampler_path(tok, trained, value):
    """logits / 1e-300 is inf in float32 and softmax(inf - inf) NaN: below MIN_TEMPERATURE means greedy, on the
    batch Sampler (Engine), the per-row sample_rows (continuous batching, also among sampled rows) alike."""
    from sifirdan.generate.config import MIN_TEMPERATURE
    from sifirdan.generate.continuous import ContinuousBatcher, Row

    assert value < MIN_TEMPERATURE
    engine = Engine(trained, tok)
    greedy = engine.generate("Ankara", GenerationConfig(max_new_tokens=20, **GREEDY)).token_ids
    cfg = GenerationConfig(max_new_tokens=20, temperature=value, seed=5, stop_token_ids=())
    assert cfg.validate().greedy
    assert engine.generate("Ankara", cfg).token_ids == greedy
    assert [r.token_ids for r in engine.generate(["Ankara", "Ankara"], cfg)] == [greedy, greedy]
    batcher = ContinuousBatcher(engine, max_batch=4)
    ids = tok.encode("Ankara")
    rows = [Row(ids, cfg), Row(ids, GenerationConfig(max_new_tokens=20, temperature=0.9, seed=1, stop_token_ids=()))]
    for r in rows:
        batcher.add(r)
    while batcher.busy:
        batcher.step()
    assert rows[0].result().token_ids == greedy


@pytest.mark.parametrize("value", TINY)
def test_tiny_top_p_keeps_the_most_likely_token(tok, trained, value):
    from sifirdan.generate.continuous import ContinuousBatcher, Row
    from sifirdan.generate.sampling import RowSampler, sample_rows

    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [0.0, 0.0, 0.0, 0.0]])
    kept = top_p_filter(logits, value)
    assert kept.isfinite().sum(dim=-1).tolist() == [1, 1] and kept[0, 3] == 3.0  # never all -inf
    assert not torch.softmax(kept, dim=-1).isnan().any()
    cfg = GenerationConfig(temperature=1.0, top_p=value, seed=1, stop_token_ids=())
    rows = [RowSampler(cfg, 4, "cpu"), RowSampler(GenerationConfig(temperature=1.0, top_p=0.5, seed=2), 4, "cpu")]
    assert sample_rows(logits, rows).tolist()[0] == 3
    engine = Engine(trained, tok)
    greedy = engine.generate("Ankara", GenerationConfig(max_new_tokens=20, **GREEDY)).token_ids
    cfg = GenerationConfig(max_new_tokens=20, temperature=1.5, top_p=value, seed=5, stop_token_ids=())
    assert engine.generate("Ankara", cfg).token_ids == greedy
    batcher = ContinuousBatcher(engine, max_batch=2)
    row = Row(tok.encode("Ankara"), cfg)
    batcher.add(row)
    while batcher.busy:
        batcher.step()
    assert row.result().token_ids == greedy


@pytest.mark.parametrize("value", TINY + [1e-4, 1e4, 1e300, float("inf")])
def test_repetition_penalty_outside_its_finite_range_is_refused(value):
    """A penalty of 1e-300 multiplies a logit by 1e300 (inf in float32); 1e-3 .. 1e3 keeps logits finite."""
    with pytest.raises(UserError, match="repetition_penalty must be a number from 0.001 to 1000") as e:
        GenerationConfig(repetition_penalty=value).validate()
    assert "\n" not in str(e.value)
    for ok in (1e-3, 1e3):
        GenerationConfig(repetition_penalty=ok).validate()
    logits = torch.tensor([[30.0, -30.0, 0.5]])
    for penalty in (1e-3, 1e3):
        assert apply_repetition_penalty(logits, torch.tensor([[True, True, False]]), penalty).isfinite().all()


# ------------------------------------------------------------------------------------------ no-repeat n-grams (issue 21)
def _ngrams(ids, n):
    return [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]


def test_ngram_ban_table():
    from sifirdan.generate.sampling import NgramBan

    ban = NgramBan(3)
    for t in (5, 6, 7, 5, 6):
        ban.push(t)
    assert ban.banned() == [7]  # "5 6" was followed by 7 once: 5 6 7 may not come again
    ban.push(8)
    assert ban.banned() == []  # "6 8" is new
    one = NgramBan(1)
    for t in (3, 1, 3):
        one.push(t)
    assert one.banned() == [1, 3]  # n = 1: no token twice


def _batched(engine, tok, prompts_and_configs):
    """Run the prompts as rows of continuous batching (the server's path: sample_rows); return the rows."""
    from sifirdan.generate.continuous import ContinuousBatcher, Row

    batcher = ContinuousBatcher(engine, max_batch=len(prompts_and_configs))
    rows = [Row(tok.encode(p), cfg) for p, cfg in prompts_and_configs]
    for r in rows:
        batcher.add(r)
    while batcher.busy:
        batcher.step()
    return rows


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_on_every_sampler_path(tok, trained, n):
    """No n-gram twice in the generated tokens, greedy and sampled, on the Engine's batch Sampler and on
    continuous batching's sample_rows, and the two paths give the same tokens. The prompt does not count."""
    engine = Engine(trained, tok)
    prompt = "Türkiye Türkiye Türkiye"
    plain = engine.generate(prompt, GenerationConfig(max_new_tokens=60, **GREEDY)).token_ids
    assert len(set(_ngrams(plain, 1))) < 60  # without the ban, tokens repeat
    for extra in (GREEDY, dict(temperature=1.0, seed=3, stop_token_ids=())):
        cfg = GenerationConfig(max_new_tokens=60, no_repeat_ngram_size=n, **extra)
        ids = engine.generate(prompt, cfg).token_ids
        assert len(ids) == 60 and len(set(_ngrams(ids, n))) == len(_ngrams(ids, n)), (n, ids)
        if extra is GREEDY and len(set(_ngrams(plain, n))) < len(_ngrams(plain, n)):
            assert ids != plain
        batch = engine.generate([prompt, "Ankara"], cfg)
        assert batch[0].token_ids == ids
        rows = _batched(engine, tok, [(prompt, cfg), ("Ankara", GenerationConfig(max_new_tokens=30, **GREEDY))])
        assert rows[0].result().token_ids == ids


@pytest.mark.parametrize("value", [-1, 65, 2.5, True, "3"])
def test_no_repeat_ngram_size_is_checked(value):
    with pytest.raises(UserError, match="no_repeat_ngram_size must be an integer from 0") as e:
        GenerationConfig(no_repeat_ngram_size=value).validate()
    assert "\n" not in str(e.value)


def test_suppressed_ids_are_never_generated_on_every_sampler_path(tok, trained):
    """suppress_token_ids (transformers' suppress_tokens): the ids the plain run generates most never appear,
    greedy and sampled, on the batch Sampler and on continuous batching's sample_rows, and both paths agree."""
    from collections import Counter

    engine = Engine(trained, tok)
    prompt = "Türkiye"
    for extra in (GREEDY, dict(temperature=1.0, seed=5, stop_token_ids=())):
        plain = engine.generate(prompt, GenerationConfig(max_new_tokens=40, **extra)).token_ids
        banned = tuple(t for t, _ in Counter(plain).most_common(3))
        cfg = GenerationConfig(max_new_tokens=40, suppress_token_ids=banned, **extra)
        ids = engine.generate(prompt, cfg).token_ids
        assert ids and not set(ids) & set(banned) and ids != plain
        rows = _batched(engine, tok, [(prompt, cfg), ("Ankara", GenerationConfig(max_new_tokens=20, **GREEDY))])
        assert rows[0].result().token_ids == ids
        assert rows[1].result().token_ids == engine.generate("Ankara", GenerationConfig(max_new_tokens=20, **GREEDY)).token_ids
    # suppressing every id would leave nothing to pick: then nothing is suppressed (no NaN, no crash)
    every = tuple(range(tok.vocab_size))
    assert len(engine.generate(prompt, GenerationConfig(max_new_tokens=5, suppress_token_ids=every, **GREEDY)).token_ids) == 5


@pytest.mark.parametrize("value", [(-1,), (2.5,), ("3",), (True,)])
def test_suppress_token_ids_are_checked(value):
    with pytest.raises(UserError, match="suppress_token_ids must be token ids"):
        GenerationConfig(suppress_token_ids=value).validate()


# ------------------------------------------------------------------------------------------ length decay (issue 21)
@pytest.mark.parametrize("value", [(150,), (150, 1.02, 3), (-1, 1.02), (150, 0.99), (150, 11.0), (2.5, 1.02),
                                   (True, 1.02), (150, "1.02"), (150, float("inf")), (150, float("nan")),
                                   (MAX_NEW_TOKENS_CAP + 1, 1.02), "150,1.02"])
def test_length_decay_is_checked(value):
    with pytest.raises(UserError, match="exponential_decay_length_penalty must be \\(start, factor\\)") as e:
        GenerationConfig(exponential_decay_length_penalty=value).validate()
    assert "\n" not in str(e.value)


def test_length_decay_values_and_flag_text():
    from sifirdan.generate.config import parse_length_decay

    assert GenerationConfig(exponential_decay_length_penalty=[150, 1.02]).validate().exponential_decay_length_penalty == (150, 1.02)
    for ok in [(0, 1.0), (MAX_NEW_TOKENS_CAP, 10.0), None]:
        GenerationConfig(exponential_decay_length_penalty=ok).validate()
    assert parse_length_decay("150,1.02") == (150, 1.02)
    assert parse_length_decay(" 0 , 2 ") == (0, 2.0)
    assert parse_length_decay("off") is None and parse_length_decay("0") is None
    for bad in ("150", "150,1.02,3", "a,b", "1.5,1.02", ""):
        with pytest.raises(UserError, match="--length-decay takes START,FACTOR"):
            parse_length_decay(bad)


def test_length_push_equals_transformers_processor():
    """push_stop_ids at k tokens past start == transformers' ExponentialDecayLengthPenalty on the same scores, for
    positive, negative and zero logits and one or two ids; before start nothing changes."""
    lp = pytest.importorskip("transformers.generation.logits_process")
    from sifirdan.generate.sampling import push_stop_ids

    torch.manual_seed(0)
    scores = torch.randn(4, 11) * 4
    scores[0, 7], scores[1, 7], scores[2, 7] = 2.5, -3.0, 0.0
    for stop in ((7,), (7, 9)):
        start, factor, prompt_len = 5, 1.3, 4
        hf = lp.ExponentialDecayLengthPenalty((start, factor), list(stop), prompt_len)
        for k in range(0, 15):  # k new tokens so far: transformers sees prompt_len + k ids
            ours = push_stop_ids(scores.clone(), stop, k - start, factor)
            theirs = hf(torch.zeros(4, prompt_len + k, dtype=torch.long), scores.clone())
            torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
        assert torch.equal(push_stop_ids(scores.clone(), stop, 0, factor), scores)


def test_length_decay_pushes_the_first_stop_id_only():
    """A chat's stop ids are (</RESP>, <|endoftext|>): the decay pushes </RESP> alone (end_id), so a long answer
    ends in the chat format, even where the model rates <|endoftext|> higher; without stop_token_ids it pushes
    <|endoftext|>, and with none nothing."""
    from sifirdan.generate.sampling import RowSampler, Sampler, end_id, sample_rows

    assert end_id(GenerationConfig(stop_token_ids=(5, 2)), 2) == (5,)
    assert end_id(GenerationConfig(), 2) == (2,) and end_id(GenerationConfig(), None) == ()
    assert end_id(GenerationConfig(stop_token_ids=()), 2) == ()
    cfg = GenerationConfig(temperature=0.0, stop_token_ids=(1, 2), exponential_decay_length_penalty=(0, 2.0))
    logits = torch.tensor([[4.0, -5.0, -1.0, 0.0]])  # </RESP> = 1 is less likely than <|endoftext|> = 2
    sampler = Sampler(cfg, 1, 4, "cpu", end_id(cfg, 2))
    row = RowSampler(cfg, 4, "cpu", end_ids=end_id(cfg, 2))
    picks = [(sampler(logits).item(), sample_rows(logits, [row]).item()) for _ in range(6)]
    # step k > 0: -5 + 5 (2^k - 1) beats 4 from k = 2 on; id 2 is never pushed
    assert picks == [(0, 0), (0, 0), (1, 1), (1, 1), (1, 1), (1, 1)], picks


def test_length_push_stays_finite():
    """Thousands of tokens past start at factor 10: the stop logit is huge but finite, and over the smallest
    temperature softmax still has no NaN; the other logits are untouched; a stop id past the vocabulary is skipped."""
    from sifirdan.generate.config import MIN_TEMPERATURE
    from sifirdan.generate.sampling import push_stop_ids

    logits = torch.tensor([[3.0, -2.0, 500.0, -900.0]])
    for stop in (1, 3):
        out = push_stop_ids(logits.clone(), (stop, 99), 30000, 10.0)
        assert out.isfinite().all() and out[0, stop] > 1e20
        assert out[0, 0] == 3.0 and out[0, 2] == 500.0
    assert not torch.softmax(out / MIN_TEMPERATURE, dim=-1).isnan().any()


def test_length_decay_ends_answers_on_every_sampler_path(tok, trained):
    """A stop id the model does not pick: without the decay the text runs to max_new_tokens; with it the tokens up
    to start are the plain run's and the text ends soon after, greedy and sampled, on the Engine's batch Sampler and
    on continuous batching's sample_rows alike (the two paths give the same tokens)."""
    engine = Engine(trained, tok)
    prompt = "Türkiye"
    for extra in (dict(temperature=0.0), dict(temperature=1.0, seed=4)):
        plain_cfg = GenerationConfig(max_new_tokens=60, stop_token_ids=(), **extra)
        plain = engine.generate(prompt, plain_cfg).token_ids
        stop = min(set(range(tok.vocab_size)) - set(plain))  # never generated in the plain run
        base = GenerationConfig(max_new_tokens=60, stop_token_ids=(stop,), **extra)
        assert engine.generate(prompt, base).finish_reason == "length"
        cfg = GenerationConfig(max_new_tokens=60, stop_token_ids=(stop,), exponential_decay_length_penalty=(20, 3.0), **extra)
        res = engine.generate(prompt, cfg)
        assert res.finish_reason == "stop" and 20 <= len(res.token_ids) < 40, len(res.token_ids)
        assert res.token_ids == plain[: len(res.token_ids)]  # before the push took hold, the same tokens
        assert engine.generate([prompt, "Ankara"], cfg)[0].token_ids == res.token_ids
        rows = _batched(engine, tok, [("Ankara", GenerationConfig(max_new_tokens=30, **GREEDY)), (prompt, cfg)])
        assert rows[1].result().token_ids == res.token_ids and rows[1].result().finish_reason == "stop"
    # stop_token_ids=() (the server's ignore_eos): nothing to push, the text runs to the limit
    off = GenerationConfig(max_new_tokens=60, exponential_decay_length_penalty=(0, 10.0), **GREEDY)
    assert len(engine.generate(prompt, off).token_ids) == 60


# ------------------------------------------------------------------------------------------ prompt boost (issue 21)
@pytest.mark.parametrize("value", [(4,), (4, 2, 1), (-1, 2), (4, -0.5), (101, 2), (4, 101), (True, 2), ("4", 2),
                                   (4, float("nan")), (float("inf"), 2), "4,2"])
def test_prompt_boost_is_checked(value):
    with pytest.raises(UserError, match="prompt_boost must be \\(boost, follow\\)") as e:
        GenerationConfig(prompt_boost=value).validate()
    assert "\n" not in str(e.value)


def test_prompt_boost_values_and_flag_text():
    from sifirdan.generate.config import parse_prompt_boost, prompt_boost_text

    assert GenerationConfig(prompt_boost=[4, 2]).validate().prompt_boost == (4, 2)  # a JSON list becomes a pair
    for ok in [(0, 0), (100, 100), (0.5, 0), None]:
        GenerationConfig(prompt_boost=ok).validate()
    assert parse_prompt_boost("4,2") == (4.0, 2.0) and parse_prompt_boost(" OFF ") is None
    assert prompt_boost_text((4.0, 2.0)) == "4,2" and prompt_boost_text(None) == "off"
    for bad in ("4", "4,2,1", "a,b", ""):
        with pytest.raises(UserError, match="--prompt-boost takes BOOST,FOLLOW"):
            parse_prompt_boost(bad)


def test_copyable_mask_keeps_words_only(tok):
    """Word pieces (letters, digits, the apostrophe before a suffix, a split letter's bytes) are copyable;
    punctuation, whitespace alone and special tokens are not."""
    from sifirdan.generate.prompt_boost import copyable_mask

    mask = copyable_mask(tok, tok.vocab_size)
    assert mask.shape == (tok.vocab_size,) and mask.dtype == torch.bool
    assert not any(mask[i] for i in tok.special_tokens.values())
    for i in range(tok.vocab_size):
        try:
            text = tok.decode_bytes([i]).decode("utf-8")
        except UnicodeDecodeError:  # part of a letter ("İ" is two bytes): checked through the words below
            continue
        if not any(c.isalnum() for c in text) or "?" in text or "." in text or "," in text:
            assert not mask[i], (i, text)
    assert mask[tok.encode("?")].sum() == 0 and mask[tok.encode(" ")].sum() == 0
    for word in ("Türkiye", "İstanbul'da", "1919"):
        ids = tok.encode(word)
        assert all(mask[i] for i in ids), (word, [tok.decode([i]) for i in ids])


def test_prompt_boost_state():
    """+boost on the prompt's word tokens until the answer writes them; +follow on what follows the last one."""
    from sifirdan.generate.prompt_boost import PromptBoost

    copyable = torch.tensor([True, True, True, False, True, True])  # id 3: punctuation
    pb = PromptBoost([1, 2, 3, 1, 4], copyable, boost=4.0, follow=2.0)
    logits = torch.zeros(6)
    pb.apply(logits)
    assert logits.tolist() == [0, 4, 4, 0, 4, 0]  # 3 is not a word; 0 and 5 are not in the prompt
    pb.push(1)
    logits = torch.zeros(6)
    pb.apply(logits)
    assert logits.tolist() == [0, 0, 4 + 2, 0, 4 + 2, 0]  # 1 is used; 2 and 4 each follow a 1 in the prompt
    pb.push(2)
    logits = torch.zeros(6)
    pb.apply(logits)
    assert logits.tolist() == [0, 0, 0, 0, 4, 0]  # 2 is followed only by punctuation, which is never boosted
    pb.push(5)  # a token outside the prompt: nothing follows it
    short = torch.zeros(4)  # the sampler's vocabulary may be shorter than the mask
    pb.apply(short)
    assert short.tolist() == [0, 0, 0, 0]


def test_prompt_boost_on_every_sampler_path(tok, trained):
    """A large boost makes greedy decoding write the prompt's word tokens, each once, before anything else; (0, 0)
    is the same as off; the Engine's batch Sampler and continuous batching's sample_rows give the same tokens,
    greedy and sampled."""
    from sifirdan.generate.prompt_boost import copyable_mask

    engine = Engine(trained, tok)
    prompt = "Ankara ve İstanbul"
    words = {i for i in tok.encode(prompt) if copyable_mask(tok, tok.vocab_size)[i]}
    assert len(words) >= 3
    plain = engine.generate(prompt, GenerationConfig(max_new_tokens=30, **GREEDY)).token_ids
    zero = engine.generate(prompt, GenerationConfig(max_new_tokens=30, prompt_boost=(0, 0), **GREEDY)).token_ids
    assert zero == plain
    ids = engine.generate(prompt, GenerationConfig(max_new_tokens=30, prompt_boost=(50, 0), **GREEDY)).token_ids
    assert set(ids[: len(words)]) == words and ids != plain  # every prompt word once, nothing else first
    for extra in (GREEDY, dict(temperature=1.0, seed=6, stop_token_ids=())):
        cfg = GenerationConfig(max_new_tokens=30, prompt_boost=(4, 2), no_repeat_ngram_size=3, **extra)
        ids = engine.generate(prompt, cfg).token_ids
        assert engine.generate([prompt, "Türkiye"], cfg)[0].token_ids == ids
        rows = _batched(engine, tok, [("Türkiye", GenerationConfig(max_new_tokens=20, **GREEDY)), (prompt, cfg)])
        assert rows[1].result().token_ids == ids
        assert rows[0].result().token_ids == engine.generate("Türkiye", GenerationConfig(max_new_tokens=20, **GREEDY)).token_ids
