"""`sifirdan serve`: continuous batching, the OpenAI API through the official `openai` client and raw httpx,
the limits, and the CLI.

Servers run in a thread of this process (uvicorn on a socket bound to 127.0.0.1 port 0, so no port race) and
are always stopped by their fixture; one test starts the real `sifirdan serve` as a subprocess. Every wait has
a deadline. Models are tiny (2 layers, 32 wide): one random, one trained for a second on Turkish text with a
byte-level tokenizer, so that its answers are Turkish letters split over two tokens each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from sifirdan.chat.template import DEFAULT_TEMPLATE  # noqa: E402
from sifirdan.checkpoint import save_model  # noqa: E402
from sifirdan.generate import Engine, GenerationConfig  # noqa: E402
from sifirdan.generate.continuous import ContinuousBatcher, Row  # noqa: E402
from sifirdan.model import GPT, GPTConfig  # noqa: E402
from sifirdan.serve import ServerConfig, load_app  # noqa: E402
from sifirdan.tokenizer import DEFAULT_SPECIAL_TOKENS, BPETokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEXT = (
    "Türkiye'nin başkenti Ankara'dır. Çiğdem ağaçların altında şarkı söylüyor. "
    "Öğretmen, öğrencilere ışığın hızını anlattı. İstanbul'da güneşli bir gün, Iğdır'da yağmur.\n"
) * 20
TIMEOUT = 60  # seconds, for every client call


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; the server's worker thread takes this count too
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------ models
@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(TEXT, vocab_size=300)


def _random_model(tok, block_size=64, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_embd=32, n_head=2, n_layer=2,
                         dropout=0.0, init="pytorch")).eval()


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("chat")
    save_model(d, _random_model(tok), tok, {"chat_template": DEFAULT_TEMPLATE.to_dict()})
    return d


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("plain")
    save_model(d, _random_model(tok, seed=1), tok)
    return d


@pytest.fixture(scope="module")
def turkish_dir(tmp_path_factory):
    """Byte tokens only (every Turkish letter is two tokens), trained ~150 steps on TEXT: greedy output is
    Turkish text whose letters a careless stream would split."""
    tok = BPETokenizer(special_tokens={name: 256 + i for i, name in enumerate(DEFAULT_SPECIAL_TOKENS)})
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_embd=48, n_head=2, n_layer=2, dropout=0.0))
    data = torch.tensor(tok.encode(TEXT))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        ix = torch.randint(0, len(data) - 49, (16,))
        x = torch.stack([data[i : i + 48] for i in ix])
        y = torch.stack([data[i + 1 : i + 49] for i in ix])
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    d = tmp_path_factory.mktemp("turkish")
    save_model(d, model.eval(), tok, {"chat_template": DEFAULT_TEMPLATE.to_dict()})
    return d


# ------------------------------------------------------------------------------------------------ servers
@contextlib.contextmanager
def serving(app, host="127.0.0.1", http="auto"):
    """Run an app with uvicorn in a thread on a free loopback port; yield its base URL; always stop it."""
    sock = socket.socket()
    sock.bind((host, 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, http=http, log_level="warning", lifespan="on", timeout_graceful_shutdown=3))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


@contextlib.contextmanager
def server_for(model_dir, host="127.0.0.1", http="auto", **config):
    app = load_app(str(model_dir), ServerConfig(**{"model_name": "tiny", **config}))
    with serving(app, host, http) as url:
        yield url, app.state


@pytest.fixture(scope="module")
def chat_server(chat_dir):
    with server_for(chat_dir) as s:
        yield s


@pytest.fixture(scope="module")
def turkish_server(turkish_dir):
    with server_for(turkish_dir) as s:
        yield s


@pytest.fixture
def client(chat_server):
    url, _ = chat_server
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)


def slow_steps(state, seconds: float, record: list | None = None):
    """Make each batch step take at least `seconds` (so a test can act while rows run); record running counts."""
    sched = state.scheduler
    inner = sched.batcher.step

    def step():
        t = time.monotonic()
        res = inner()
        if record is not None:
            record.append(sched.batcher.running + sum(1 for ev in res.events if ev.finished))
        time.sleep(max(0.0, seconds - (time.monotonic() - t)))
        return res

    sched.batcher.step = step
    return lambda: setattr(sched.batcher, "step", inner)


def sse_events(lines) -> list:
    """SSE lines -> parsed data objects; '[DONE]' stays a string. Every event must be valid UTF-8 JSON alone."""
    out = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "", f"unexpected SSE line {line!r}"
    return out


def stream_raw(url, path, body, headers=None) -> list:
    with httpx.stream("POST", url + path, json=body, headers=headers, timeout=TIMEOUT) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read()
    return sse_events(raw.decode("utf-8").split("\n"))


def assert_envelope(r, status, param=None):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]


# ================================================================================= continuous batching
def test_batcher_rows_join_and_leave_and_match_engine_alone(tok):
    """16 rows, each with its own settings and seed, joining every 3 steps into a batch of at most 6 (some cross
    the 64-token context and are cropped + prefilled again): each gives exactly what Engine gives it alone."""
    model = _random_model(tok, block_size=48)
    engine = Engine(model, tok)
    rng = random.Random(0)
    prompts = [tok.encode(TEXT[rng.randrange(200):][: rng.randrange(1, 60)]) or [0] for _ in range(16)]
    cfgs = [GenerationConfig(max_new_tokens=rng.randrange(5, 70), temperature=rng.choice([0, 0.8, 1.2]),
                             top_k=rng.choice([0, 5]), top_p=rng.choice([1.0, 0.9]),
                             repetition_penalty=rng.choice([1.0, 1.3]), no_repeat_ngram_size=rng.choice([0, 0, 3]),
                             seed=i, stop_token_ids=(),
                             stop=rng.choice([(), ("a",)])) for i in range(16)]
    alone = [engine.generate_ids(p, c) for p, c in zip(prompts, cfgs)]
    batcher = ContinuousBatcher(engine, max_batch=6)
    rows = [Row(p, c, tag=i) for i, (p, c) in enumerate(zip(prompts, cfgs))]
    todo, steps, widest = list(rows), 0, 0
    while todo or batcher.busy:
        if todo and steps % 3 == 0:
            batcher.add(todo.pop(0))
        batcher.step()
        widest = max(widest, batcher.running)
        steps += 1
        assert steps < 2000
    assert widest == 6  # the batch really was shared
    for r, a in zip(rows, alone):
        res = r.result()
        assert (res.token_ids, res.text, res.finish_reason) == (a.token_ids, a.text, a.finish_reason), r.tag
    assert any(r.result().completion_tokens + len(r.prompt_ids) > 48 for r in rows)  # crops happened


def test_batcher_cancel_frees_the_row_at_the_next_step(tok):
    engine = Engine(_random_model(tok), tok)
    batcher = ContinuousBatcher(engine, max_batch=2)
    cfg = GenerationConfig(max_new_tokens=50, temperature=0.0, stop_token_ids=())
    a, b, c = (Row(tok.encode(t), cfg, tag=t) for t in ("Ankara", "İstanbul", "Iğdır"))
    for r in (a, b, c):
        batcher.add(r)
    first = batcher.step()
    assert {r.tag for r in first.admitted} == {"Ankara", "İstanbul"} and batcher.queued == 1
    a.cancel()
    res = batcher.step()  # a leaves before this step computes anything; c takes its slot in the same step
    assert a in res.dropped and all(ev.row is not a for ev in res.events)
    assert res.admitted == [c] and batcher.running == 2 and batcher.queued == 0
    n = a.seq.completion_tokens
    batcher.step()
    assert a.seq.completion_tokens == n == 1


def test_batcher_new_row_gets_its_first_token_the_step_it_joins(tok):
    engine = Engine(_random_model(tok), tok)
    batcher = ContinuousBatcher(engine, max_batch=4)
    cfg = GenerationConfig(max_new_tokens=30, temperature=0.0, stop_token_ids=())
    long = Row(tok.encode("Öğretmen, öğrencilere ışığın hızını anlattı."), cfg)
    batcher.add(long)
    for _ in range(5):
        batcher.step()
    short = Row(tok.encode("Ankara"), GenerationConfig(max_new_tokens=3, temperature=0.0, stop_token_ids=()))
    batcher.add(short)
    res = batcher.step()
    assert {id(ev.row) for ev in res.events} == {id(long), id(short)}
    batcher.step()
    res = batcher.step()
    assert any(ev.row is short and ev.finished for ev in res.events)
    assert batcher.running == 1  # the finished row left at once
    assert short.result().token_ids == engine.generate_ids(short.prompt_ids, short.config).token_ids


# ================================================================================= the openai client
def test_openai_models_list_and_retrieve(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    m = client.models.retrieve("tiny")
    assert m.id == "tiny" and m.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_openai_chat_completion(client):
    r = client.chat.completions.create(model="tiny", messages=[
        {"role": "system", "content": "Kısa cevap ver."},
        {"role": "user", "content": [{"type": "text", "text": "Türkiye'nin başkenti "}, {"type": "text", "text": "neresidir?"}]},
    ], max_tokens=12, temperature=0.7, seed=3, frequency_penalty=0.0, user="someone")  # unknown fields ignored
    assert r.object == "chat.completion" and r.model == "tiny" and r.id.startswith("chatcmpl-")
    assert isinstance(r.created, int)
    (choice,) = r.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    again = client.chat.completions.create(model="tiny", messages=[
        {"role": "system", "content": "Kısa cevap ver."},
        {"role": "user", "content": "Türkiye'nin başkenti neresidir?"}], max_tokens=12, temperature=0.7, seed=3)
    assert again.choices[0].message.content == choice.message.content  # seeded; text parts == the joined string


@pytest.mark.parametrize("include_usage", [False, True])
def test_openai_chat_streaming(client, include_usage):
    kw = {"stream_options": {"include_usage": True}} if include_usage else {}
    messages = [{"role": "user", "content": "Merhaba, nasılsın?"}]
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=15, seed=5, stream=True, **kw))
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    body = [c for c in chunks if c.choices]
    assert body[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].finish_reason is None for c in body[:-1]) and body[-1].choices[0].finish_reason in ("stop", "length")
    text = "".join(c.choices[0].delta.content or "" for c in body)
    plain = client.chat.completions.create(model="tiny", messages=messages, max_tokens=15, seed=5)
    assert text == plain.choices[0].message.content
    if include_usage:
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
        assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens
        assert all(c.usage is None for c in chunks[:-1])
    else:
        assert all(c.choices for c in chunks) and all(getattr(c, "usage", None) is None for c in chunks)


def test_openai_completions_plain_streaming_and_n(client):
    r = client.completions.create(model="tiny", prompt="Türkiye'nin", max_tokens=8, seed=11, n=3, temperature=1.0)
    assert r.object == "text_completion" and [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.finish_reason in ("stop", "length") for c in r.choices)
    assert 3 <= r.usage.completion_tokens <= 24
    # choice i samples with seed + i: choice 1 of seed 11 is choice 0 of seed 12
    r12 = client.completions.create(model="tiny", prompt="Türkiye'nin", max_tokens=8, seed=12, temperature=1.0)
    assert r12.choices[0].text == r.choices[1].text
    chunks = list(client.completions.create(model="tiny", prompt="Türkiye'nin", max_tokens=8, seed=11, stream=True,
                                            stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 8


def test_openai_errors_are_the_clients_exception_types(client, chat_server, plain_dir):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert "gpt-4o" in e.value.message and e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x", temperature=-1)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="Ankara " * 200)
    assert "64 tokens" in e.value.message and e.value.body["code"] == "context_length_exceeded"
    with server_for(plain_dir) as (url, _):
        plain = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=TIMEOUT)
        with pytest.raises(openai.BadRequestError) as e:
            plain.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Merhaba"}])
        assert "not fine-tuned" in e.value.message
        assert plain.completions.create(model="tiny", prompt="Merhaba", max_tokens=4).choices[0].finish_reason


def test_openai_authentication_error(chat_dir):
    with server_for(chat_dir, api_key="s3cret-key") as (url, _):
        bad = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0, timeout=TIMEOUT)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret-key", max_retries=0, timeout=TIMEOUT)
        assert good.models.list().data[0].id == "tiny"
        for headers in ({}, {"Authorization": "Bearer s3cret-ke"}, {"Authorization": "Basic s3cret-key"},
                        {"Authorization": "Bearer s3cret-keyy"}):
            r = httpx.post(url + "/v1/completions", json={"prompt": "x"}, headers=headers, timeout=TIMEOUT)
            err = assert_envelope(r, 401)
            assert err["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
        assert httpx.get(url + "/health", timeout=TIMEOUT).status_code == 200  # probes need no key


# ================================================================================= raw HTTP: shapes and limits
def test_chat_chunk_shapes(chat_server):
    url, _ = chat_server
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Merhaba"}], "max_tokens": 10, "seed": 1,
            "stream": True, "n": 2}
    events = stream_raw(url, "/v1/chat/completions", body)
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    for c in chunks:
        assert c["object"] == "chat.completion.chunk" and c["model"] == "tiny" and "usage" not in c
        assert len(c["choices"]) == 1
    for i in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == i]
        assert mine[0]["delta"]["role"] == "assistant"
        assert all("role" not in ch["delta"] for ch in mine[1:])
        assert [ch["finish_reason"] is not None for ch in mine] == [False] * (len(mine) - 1) + [True]
        assert mine[-1]["delta"] == {}
    body["stream_options"] = {"include_usage": True}
    events = stream_raw(url, "/v1/chat/completions", body)
    *chunks, usage_chunk, done = events
    assert done == "[DONE]" and usage_chunk["choices"] == [] and all(c["usage"] is None for c in chunks)
    u = usage_chunk["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and u["completion_tokens"] <= 20


def test_completion_chunk_shapes(chat_server):
    url, _ = chat_server
    events = stream_raw(url, "/v1/completions", {"prompt": ["Ankara", "İzmir"], "max_tokens": 6, "stream": True})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1 and all(c["object"] == "text_completion" for c in chunks)
    finals = [c["choices"][0] for c in chunks if c["choices"][0]["finish_reason"]]
    assert sorted(ch["index"] for ch in finals) == [0, 1]  # one choice per prompt, each finished once


def test_streamed_turkish_is_never_split(turkish_server):
    """Every Turkish letter of this model's output is two byte tokens: the stream sends whole characters
    (no U+FFFD halves), and its pieces join to exactly the non-streamed text."""
    url, _ = turkish_server
    for prompt in ("Öğretmen, öğrencilere ", "İstanbul'da güneşli "):
        body = {"prompt": prompt, "max_tokens": 40, "temperature": 0, "ignore_eos": True}
        full = httpx.post(url + "/v1/completions", json=body, timeout=TIMEOUT).json()["choices"][0]["text"]
        # (max_tokens may cut the last letter in half: like tokenizer.decode, the end is then one U+FFFD)
        assert re.search(r"[çğıöşüÇĞİÖŞÜ]", full) and "\ufffd" not in full[:-1], full
        pieces = [c["choices"][0]["text"] for c in stream_raw(url, "/v1/completions", {**body, "stream": True})[:-1]]
        assert "".join(pieces) == full
        assert all("\ufffd" not in p for p in pieces[:-2])  # the last two: the final text and the finish chunk
        assert sum(1 for p in pieces if p) > 10  # it really streamed piece by piece


@pytest.mark.parametrize("body, param", [
    ({"messages": "Merhaba"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": "10"}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": True}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "top_p": 1.5}, "top_p"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": [1, 2]}, "stop"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "seed": -1}, "seed"),
    ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
    ({"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": 1}}, "include_usage"),
    ({"messages": [{"role": "user", "content": "x"}], "model": 3}, "model"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]}, None),
    ({"messages": [{"role": "user", "content": "Ankara " * 300}]}, "messages"),
])
def test_bad_chat_fields_are_400_naming_the_field(chat_server, body, param):
    url, _ = chat_server
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=TIMEOUT)
    err = assert_envelope(r, 400, param)
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize("body, param", [
    ({}, "prompt"), ({"prompt": 5}, "prompt"), ({"prompt": []}, "prompt"), ({"prompt": [1, "a"]}, "prompt"),
    ({"prompt": [[1, 2], []]}, "prompt"), ({"prompt": [10**9]}, None), ({"prompt": "x", "top_k": -2}, "top_k"),
    ({"prompt": "x", "repetition_penalty": 0}, "repetition_penalty"), ({"prompt": "x", "ignore_eos": "no"}, "ignore_eos"),
    ({"prompt": "x", "no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
    ({"prompt": "x", "no_repeat_ngram_size": 65}, "no_repeat_ngram_size"),
    ({"prompt": "x", "exponential_decay_length_penalty": 150}, "exponential_decay_length_penalty"),
    ({"prompt": "x", "exponential_decay_length_penalty": [150]}, "exponential_decay_length_penalty"),
    ({"prompt": "x", "exponential_decay_length_penalty": [150, 0.5]}, "exponential_decay_length_penalty"),
    ({"prompt": "x", "exponential_decay_length_penalty": [-1, 1.02]}, "exponential_decay_length_penalty"),
    ({"prompt": "x", "exponential_decay_length_penalty": [10**12, 1.02]}, "exponential_decay_length_penalty"),
    ({"prompt": "x", "exponential_decay_length_penalty": ["150", 1.02]}, "exponential_decay_length_penalty"),
    ({"prompt": "x", "prompt_boost": 4}, "prompt_boost"), ({"prompt": "x", "prompt_boost": [4]}, "prompt_boost"),
    ({"prompt": "x", "prompt_boost": [4, -1]}, "prompt_boost"), ({"prompt": "x", "prompt_boost": [101, 2]}, "prompt_boost"),
    ({"prompt": "x", "prompt_boost": ["4", 2]}, "prompt_boost"), ({"prompt": "x", "prompt_boost": [True, 2]}, "prompt_boost"),
])
def test_bad_completion_fields_are_400(chat_server, body, param):
    url, _ = chat_server
    assert_envelope(httpx.post(url + "/v1/completions", json=body, timeout=TIMEOUT), 400, param)


def test_malformed_bodies_and_routes(chat_server):
    url, _ = chat_server
    post = lambda content, **h: httpx.post(url + "/v1/chat/completions", content=content,  # noqa: E731
                                           headers={"content-type": "application/json", **h}, timeout=TIMEOUT)
    for content in (b"{", b"[1, 2]", b'"text"', b"\xff\xfe{}", b'{"messages": NaN}', b"[" * 100_000 + b"]" * 100_000):
        err = assert_envelope(post(content), 400)
        assert err["code"] == "invalid_json"
    big = b'{"prompt": "' + b"a" * (1 << 20) + b'"}'
    assert_envelope(httpx.post(url + "/v1/completions", content=big, headers={"content-type": "application/json"},
                               timeout=TIMEOUT), 413)

    def chunked():  # no Content-Length: the limit holds while reading
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"a" * 65536
        yield b'"}'
    assert_envelope(httpx.post(url + "/v1/completions", content=chunked(), headers={"content-type": "application/json"},
                               timeout=TIMEOUT), 413)
    # a form post, as a page elsewhere could send without asking: refused
    r = httpx.post(url + "/v1/completions", content=b'{"prompt": "x"}', headers={"content-type": "text/plain"}, timeout=TIMEOUT)
    assert_envelope(r, 415)
    assert_envelope(httpx.get(url + "/v1/nothing", timeout=TIMEOUT), 404)
    assert_envelope(httpx.get(url + "/v1/completions", timeout=TIMEOUT), 405)
    assert_envelope(httpx.post(url + "/v1/completions", json={"model": "nope", "prompt": "x"}, timeout=TIMEOUT), 404, "model")
    # DNS rebinding: a name that is not this machine
    r = httpx.get(url + "/v1/models", headers={"host": "evil.example:80"}, timeout=TIMEOUT)
    assert_envelope(r, 400)


def test_no_request_reaches_a_file(chat_server):
    url, _ = chat_server
    for path in ("/static/../app.py", "/static/..%2fapp.py", "/static/chat.html", "/static/%2e%2e/errors.py",
                 "/static/x/../../app.py", "/static//etc/passwd", "/../../etc/passwd"):
        r = httpx.get(url + path, timeout=TIMEOUT)
        assert r.status_code == 404 and "root:" not in r.text and "import" not in r.text, path
    r = httpx.post(url + "/v1/completions", json={"model": "/etc/passwd", "prompt": "x"}, timeout=TIMEOUT)
    assert_envelope(r, 404, "model")
    r = httpx.post(url + "/v1/completions", json={"prompt": "/etc/passwd", "max_tokens": 3}, timeout=TIMEOUT)
    assert r.status_code == 200 and "root:" not in r.text  # a prompt is text, nothing more


def test_page_and_static_files(chat_server, monkeypatch):
    url, _ = chat_server
    r = httpx.get(url + "/", timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    for name, kind in (("chat.js", "text/javascript"), ("chat.css", "text/css")):
        r = httpx.get(url + "/static/" + name, timeout=TIMEOUT)
        if r.status_code == 200:
            assert r.headers["content-type"].startswith(kind)
        else:
            assert_envelope(r, 404)  # the page engineer's file is not there (yet)
    from sifirdan.serve import app as app_module

    monkeypatch.setattr(app_module, "_resource", lambda name: None)
    r = httpx.get(url + "/", timeout=TIMEOUT)
    assert r.status_code == 200 and "missing" in r.text and "content-security-policy" in r.headers


def test_max_tokens_is_capped(chat_dir):
    with server_for(chat_dir, max_tokens_cap=5) as (url, _):
        r = httpx.post(url + "/v1/completions", json={"prompt": "Ankara", "max_tokens": 500, "ignore_eos": True},
                       timeout=TIMEOUT).json()
        assert r["usage"]["completion_tokens"] == 5 and r["choices"][0]["finish_reason"] == "length"


def test_stop_strings_and_finish_reason(turkish_server):
    url, _ = turkish_server
    body = {"prompt": "Öğretmen, öğrencilere ", "max_tokens": 40, "temperature": 0, "ignore_eos": True}
    full = httpx.post(url + "/v1/completions", json=body, timeout=TIMEOUT).json()["choices"][0]["text"]
    stop = full[10:13]
    r = httpx.post(url + "/v1/completions", json={**body, "stop": stop}, timeout=TIMEOUT).json()
    assert r["choices"][0]["text"] == full[: full.index(stop)] and r["choices"][0]["finish_reason"] == "stop"


def test_length_decay_extra_ends_a_chat_answer_early(chat_server):
    """exponential_decay_length_penalty (transformers' name) reaches the sampler: [0, 10] makes </RESP> the only
    likely token within a few tokens, where the same greedy request without it runs on; null is off."""
    url, _ = chat_server
    body = {"messages": [{"role": "user", "content": "Türkiye'nin başkenti neresidir?"}], "max_tokens": 40,
            "temperature": 0}
    post = lambda b: httpx.post(url + "/v1/chat/completions", json=b, timeout=TIMEOUT).json()  # noqa: E731
    plain, off = post(body), post({**body, "exponential_decay_length_penalty": None})
    pushed = post({**body, "exponential_decay_length_penalty": [0, 10.0]})
    assert off["choices"][0]["message"]["content"] == plain["choices"][0]["message"]["content"]
    assert plain["usage"]["completion_tokens"] > 5, plain
    assert pushed["choices"][0]["finish_reason"] == "stop" and pushed["usage"]["completion_tokens"] <= 5, pushed


def test_prompt_boost_extra_reaches_the_sampler(chat_server):
    """prompt_boost [boost, follow] reaches the sampler: a large boost and follow make the greedy reply copy the
    question's words, where the same request without them does not; null is off."""
    url, _ = chat_server
    body = {"messages": [{"role": "user", "content": "Ankara ve İstanbul"}], "max_tokens": 20, "temperature": 0}
    post = lambda b: httpx.post(url + "/v1/chat/completions", json=b, timeout=TIMEOUT).json()  # noqa: E731
    plain, off = post(body), post({**body, "prompt_boost": None})
    boosted = post({**body, "prompt_boost": [50, 50]})
    text = lambda r: r["choices"][0]["message"]["content"]  # noqa: E731
    assert text(off) == text(plain) and text(boosted) != text(plain)
    assert "Ankara" in text(boosted) and "Ankara" not in text(plain), (text(plain), text(boosted))


# ================================================================================= batching through HTTP
def test_seeded_request_alone_equals_among_15_others(chat_server):
    url, state = chat_server
    mine = {"model": "tiny", "messages": [{"role": "user", "content": "Türkiye'nin başkenti neresidir?"}],
            "max_tokens": 30, "temperature": 0.9, "top_p": 0.95, "seed": 1234, "ignore_eos": True}
    alone = httpx.post(url + "/v1/chat/completions", json=mine, timeout=TIMEOUT).json()["choices"][0]["message"]["content"]
    rng = random.Random(0)
    others = [{"model": "tiny", "messages": [{"role": "user", "content": rng.choice(["Merhaba", "Ankara nerede?", "Iğdır"]) * rng.randint(1, 3)}],
               "max_tokens": rng.randint(5, 40), "temperature": rng.choice([0, 0.5, 1.3]), "top_k": rng.choice([0, 7]),
               "repetition_penalty": rng.choice([1.0, 1.2]), "seed": rng.randint(0, 10**6), "stream": rng.random() < 0.5}
              for _ in range(15)]
    counts: list[int] = []
    restore = slow_steps(state, 0.003, counts)  # steps long enough that all 16 overlap

    async def run():
        async with httpx.AsyncClient(timeout=TIMEOUT) as c:
            async def one(body):
                if body.get("stream"):
                    text = []
                    async with c.stream("POST", url + "/v1/chat/completions", json=body) as r:
                        assert r.status_code == 200
                        async for line in r.aiter_lines():
                            if line.startswith("data: {"):
                                ch = json.loads(line[6:])["choices"]
                                text += [ch[0]["delta"].get("content") or ""] if ch else []
                    return "".join(text)
                r = await c.post(url + "/v1/chat/completions", json=body)
                assert r.status_code == 200, r.text
                return r.json()["choices"][0]["message"]["content"]
            bodies = others[:7] + [mine] + others[7:]
            return await asyncio.gather(*(one(b) for b in bodies))

    try:
        results = asyncio.run(run())
    finally:
        restore()
    assert results[7] == alone
    assert max(counts) >= 8, counts  # it really ran inside a shared batch


def test_disconnect_frees_the_row(chat_server):
    url, state = chat_server
    sched = state.scheduler
    restore = slow_steps(state, 0.01)
    try:
        body = {"prompt": "Ankara", "max_tokens": 1000, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=TIMEOUT) as r:
            lines = r.iter_lines()
            got = 0
            for line in lines:
                got += line.startswith("data: ")
                if got >= 3:
                    break
            assert sched.running == 1
            steps_at_close = sched.steps
        # the response is closed: the server sees the client go and the row leaves before the next step
        deadline = time.monotonic() + 10
        while sched.running:
            assert time.monotonic() < deadline, "the row was never freed"
            time.sleep(0.005)
        assert sched.steps - steps_at_close <= 3  # 10 ms steps: freed within a step or so of the close
        assert sched.queued == 0
        r = httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=TIMEOUT)
        assert r.status_code == 200  # and the server goes on
    finally:
        restore()


def test_non_streaming_disconnect_frees_the_row(chat_server):
    url, state = chat_server
    sched = state.scheduler
    restore = slow_steps(state, 0.01)
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/completions", json={"prompt": "Ankara", "max_tokens": 1000, "ignore_eos": True},
                       timeout=httpx.Timeout(TIMEOUT, read=0.3))
        deadline = time.monotonic() + 10
        while sched.running:
            assert time.monotonic() < deadline, "the row was never freed"
            time.sleep(0.01)
    finally:
        restore()


def test_full_queue_answers_429_with_retry_after(chat_dir):
    with server_for(chat_dir, max_batch=1, max_queue=1) as (url, state):
        restore = slow_steps(state, 0.01)
        body = {"prompt": "Ankara", "max_tokens": 1000, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=TIMEOUT) as first:
            lines = first.iter_lines()  # kept: a dropped iterator would close the response
            next(lines)  # running
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=TIMEOUT) as second:
                deadline = time.monotonic() + 10
                while state.scheduler.queued < 1:  # waiting for the one row
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                r = httpx.post(url + "/v1/completions", json={"prompt": "x"}, timeout=TIMEOUT)
                err = assert_envelope(r, 429)
                assert r.headers["retry-after"] == "1" and err["code"] == "server_busy"
                c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=TIMEOUT)
                with pytest.raises(openai.RateLimitError):
                    c.completions.create(model="tiny", prompt="x")
                assert second.status_code == 200
        deadline = time.monotonic() + 10
        while state.scheduler.running or state.scheduler.queued:
            assert time.monotonic() < deadline, state.scheduler.stats()
            time.sleep(0.01)
        restore()
        r = httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=TIMEOUT)
        assert r.status_code == 200


def test_a_failed_step_is_a_500_and_the_server_goes_on(chat_dir):
    with server_for(chat_dir) as (url, state):
        sched = state.scheduler
        inner = sched.batcher.step

        def broken():
            sched.batcher.step = inner  # fail once
            raise RuntimeError("simulated failure")

        sched.batcher.step = broken
        r = httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 3}, timeout=TIMEOUT)
        err = assert_envelope(r, 500)
        assert "simulated failure" in err["message"]
        r = httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 3}, timeout=TIMEOUT)
        assert r.status_code == 200 and sched.queued == 0


# ================================================================================= the CLI
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_serve_subprocess(chat_dir, tmp_path, sig):
    """The real `sifirdan serve`: --port 0 prints the URL, --api-key is enforced, Ctrl-C (or SIGTERM) stops it
    cleanly: exit code 0, "server stopped", no traceback."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SIFIRDAN_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "sifirdan", "serve", "--model", str(chat_dir), "--port", "0",
                             "--api-key", "k3y", "--threads", "1", "--max-batch", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        line = _readline(proc, 90)
        m = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
        assert m, line
        url = m.group(1)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert httpx.get(url + "/v1/models", timeout=TIMEOUT).status_code == 401
        c = openai.OpenAI(base_url=url + "/v1", api_key="k3y", max_retries=0, timeout=TIMEOUT)
        assert c.models.list().data[0].id == chat_dir.name
        r = c.chat.completions.create(model=chat_dir.name, messages=[{"role": "user", "content": "Merhaba"}], max_tokens=4)
        assert r.choices[0].finish_reason in ("stop", "length")
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "server stopped" in out and "Traceback" not in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _readline(proc, timeout):
    box = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    assert box, "sifirdan serve printed nothing"
    return box[0]


@pytest.mark.parametrize("argv, needle", [
    (["--port", "http"], "--port must be an integer"),
    (["--max-batch", "0"], "--max-batch must be from 1"),
    (["--max-tokens-cap", "-3"], "--max-tokens-cap must be from 1"),
    (["--api-key", " "], "--api-key"),
])
def test_cli_bad_flags_are_one_line(chat_dir, argv, needle, capsys):
    from sifirdan.cli import main

    assert main(["serve", "--model", str(chat_dir), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_threads_0_shares_the_cpu_as_training_does(chat_dir, monkeypatch, capsys):
    """--threads 0 means what it means in pretrain: the cores other programs leave free, re-decided while serving."""
    from sifirdan.cli import main
    from sifirdan.errors import UserError
    from sifirdan.serve import app as app_module

    seen = []

    def load_app(model_dir, config, device):
        seen.append(config.share_cpu)
        raise UserError("stop before serving")

    monkeypatch.setattr(app_module, "load_app", load_app)
    for threads in ("0", "auto", "1"):  # 1: the count this module runs with
        assert main(["serve", "--model", str(chat_dir), "--port", "0", "--device", "cpu", "--threads", threads]) == 2
    assert seen == [True, True, False] and "stop before serving" in capsys.readouterr().err


def test_a_cpu_sharing_worker_redecides_its_threads(chat_dir, monkeypatch):
    from sifirdan.serve.scheduler import Scheduler
    from sifirdan.train import runtime

    calls = []
    monkeypatch.setattr(Scheduler, "SHARE_CPU_EVERY", 0.0)
    monkeypatch.setattr(runtime.CpuShare, "adjust", lambda self: calls.append(1))  # the count stays as it is
    with server_for(chat_dir, share_cpu=True) as (url, _):
        r = httpx.post(url + "/v1/completions", json={"prompt": "Ankara", "max_tokens": 3}, timeout=TIMEOUT)
        assert r.status_code == 200
    assert calls


def test_cli_port_in_use_and_missing_model(chat_dir, tmp_path, capsys):
    from sifirdan.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert main(["serve", "--model", str(chat_dir), "--port", str(port)]) == 2
        err = capsys.readouterr().err.strip()
        assert "cannot listen" in err and "--port" in err and len(err.splitlines()) == 1
    assert main(["serve", "--model", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ================================================================================= under attack (issue 19)
def _submissions(state) -> list:
    """Every request that reached the scheduler (so could generate) is appended to the returned list."""
    seen = []
    inner = state.scheduler.submit

    def submit(rows):
        seen.append(len(rows))
        return inner(rows)

    state.scheduler.submit = submit
    return seen


def test_a_post_without_content_type_is_415_and_generates_nothing(chat_server):
    """A page elsewhere can POST a Blob (no Content-Type) without a CORS preflight: that must not generate."""
    url, state = chat_server
    seen = _submissions(state)
    try:
        for headers in ({}, {"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"},
                        {"content-type": "multipart/form-data; boundary=x"}):
            r = httpx.post(url + "/v1/completions", content=b'{"prompt": "Ankara", "max_tokens": 2}', headers=headers,
                           timeout=TIMEOUT)
            err = assert_envelope(r, 415)
            assert err["code"] == "unsupported_media_type" and "application/json" in err["message"]
        assert seen == []
        r = httpx.post(url + "/v1/completions", content=b'{"prompt": "Ankara", "max_tokens": 2}',
                       headers={"content-type": "application/json; charset=utf-8"}, timeout=TIMEOUT)
        assert r.status_code == 200 and seen == [1]
    finally:
        del state.scheduler.submit


def test_cross_origin_requests_are_refused_unless_allowed(chat_dir):
    body = {"prompt": "Ankara", "max_tokens": 2}
    with server_for(chat_dir, allow_origins=frozenset({"http://app.example:3000"})) as (url, state):
        seen = _submissions(state)
        # a page on another origin (another port of 127.0.0.1 included), as a browser marks it
        for headers in ({"origin": "http://evil.example"}, {"origin": "http://127.0.0.1:1"}, {"origin": "null"},
                        {"sec-fetch-site": "same-site"}, {"sec-fetch-site": "cross-site"},
                        {"origin": url.replace("127.0.0.1", "localhost"), "sec-fetch-site": "same-site"}):
            r = httpx.post(url + "/v1/completions", json=body, headers=headers, timeout=TIMEOUT)
            err = assert_envelope(r, 403)
            assert err["code"] == "cross_origin" and "--allow-origin" in err["message"], headers
            assert "access-control-allow-origin" not in r.headers
            assert_envelope(httpx.get(url + "/v1/models", headers=headers, timeout=TIMEOUT), 403)
        assert seen == []
        # the server's own page (same origin), and clients that are no browser
        for headers in ({"origin": url, "sec-fetch-site": "same-origin"}, {"sec-fetch-site": "none"}, {}):
            assert httpx.post(url + "/v1/completions", json=body, headers=headers, timeout=TIMEOUT).status_code == 200
        # a link from elsewhere still opens the page; the page's files and /health do nothing
        nav = {"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"}
        assert httpx.get(url + "/", headers=nav, timeout=TIMEOUT).status_code == 200
        assert httpx.get(url + "/health", headers=nav, timeout=TIMEOUT).status_code == 200
        # CORS preflight: answered for the named origin only
        pre = {"access-control-request-method": "POST", "access-control-request-headers": "content-type"}
        r = httpx.options(url + "/v1/completions", headers={"origin": "http://evil.example", **pre}, timeout=TIMEOUT)
        assert_envelope(r, 403)
        assert "access-control-allow-origin" not in r.headers
        r = httpx.options(url + "/v1/completions", headers={"origin": "http://app.example:3000", **pre}, timeout=TIMEOUT)
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "http://app.example:3000"
        assert "POST" in r.headers["access-control-allow-methods"]
        assert "content-type" in r.headers["access-control-allow-headers"].lower()
        n = len(seen)
        r = httpx.post(url + "/v1/completions", json=body, headers={"origin": "http://app.example:3000",
                                                                    "sec-fetch-site": "cross-site"}, timeout=TIMEOUT)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example:3000"
        assert len(seen) == n + 1
        # an allowed origin still cannot skip the Content-Type rule
        r = httpx.post(url + "/v1/completions", content=json.dumps(body).encode(),
                       headers={"origin": "http://app.example:3000"}, timeout=TIMEOUT)
        assert_envelope(r, 415)
        assert len(seen) == n + 1


def test_host_header_is_checked_for_any_bind_address():
    from sifirdan.cli.serve import allowed_hosts

    for host in ("0.0.0.0", "10.1.2.3", "::"):
        names = allowed_hosts(host, [])
        assert names is not None and "evil.example" not in names and host in names  # the check stays on
    assert "sifirdan.lan" in allowed_hosts("0.0.0.0", ["sifirdan.lan"])
    assert allowed_hosts("127.0.0.2", []) >= {"127.0.0.2", "localhost", "127.0.0.1"}
    assert allowed_hosts("0.0.0.0", ["*"]) is None
    from sifirdan.errors import UserError
    with pytest.raises(UserError, match="--allowed-host"):
        allowed_hosts("127.0.0.1", ["http://x.example/"])


def test_a_server_on_127_0_0_2_answers_its_own_address(chat_dir):
    from sifirdan.cli.serve import allowed_hosts

    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.2", 0))
    except OSError:
        pytest.skip("this system does not route 127.0.0.2 to loopback")
    with server_for(chat_dir, host="127.0.0.2", allowed_hosts=allowed_hosts("127.0.0.2", [])) as (url, _):
        assert httpx.get(url + "/v1/models", timeout=TIMEOUT).status_code == 200
        assert_envelope(httpx.get(url + "/v1/models", headers={"host": "evil.example"}, timeout=TIMEOUT), 400)
    # the address a connection reached counts even when no name list has it (0.0.0.0 reached on one interface)
    with server_for(chat_dir, allowed_hosts=frozenset({"sifirdan.lan"})) as (url, _):
        assert httpx.get(url + "/v1/models", timeout=TIMEOUT).status_code == 200
        assert httpx.get(url + "/v1/models", headers={"host": "sifirdan.lan:80"}, timeout=TIMEOUT).status_code == 200
        r = httpx.get(url + "/v1/models", headers={"host": "rebound.example"}, timeout=TIMEOUT)
        assert assert_envelope(r, 400)["code"] == "invalid_host"


def test_binding_every_interface_without_a_key_warns_in_one_line(chat_dir, monkeypatch, capsys):
    from sifirdan.cli import main
    from sifirdan.cli import serve as serve_cli

    bound = []

    def bind(host, port):  # the test never listens beyond loopback: what 0.0.0.0 would do, on 127.0.0.1
        bound.append(host)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        return sock

    monkeypatch.setattr(serve_cli, "bind", bind)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    assert main(["serve", "--model", str(chat_dir), "--host", "0.0.0.0", "--port", "0", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert bound == ["0.0.0.0"] and err.count("\n") == 1 and "warning" in err and "--api-key" in err
    assert main(["serve", "--model", str(chat_dir), "--host", "0.0.0.0", "--port", "0", "--threads", "1",
                 "--api-key", "k"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("field", ["temperature", "top_p"])
@pytest.mark.parametrize("tiny", [1e-300, 1e-45, 1e-320, 5e-5])
def test_tiny_sampling_values_never_make_nan(chat_server, field, tiny):
    """1e-300 underflows to 0 in float32: the answer must be the greedy one, never NaN's \\u0000 text."""
    url, _ = chat_server
    base = {"prompt": "Ankara", "max_tokens": 8, "ignore_eos": True, "seed": 3}
    greedy = httpx.post(url + "/v1/completions", json={**base, "temperature": 0}, timeout=TIMEOUT).json()
    r = httpx.post(url + "/v1/completions", json={**base, field: tiny}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    text = r.json()["choices"][0]["text"]
    assert "\x00" not in text
    if field == "temperature" or tiny < 1e-40:  # top_p that small keeps the most likely token alone
        assert text == greedy["choices"][0]["text"]


@pytest.mark.parametrize("value", [1e-300, 1e-45, 1e-320, 1e-4, 1e4, 1e300])
def test_repetition_penalty_out_of_range_is_400(chat_server, value):
    url, _ = chat_server
    r = httpx.post(url + "/v1/completions", json={"prompt": "x", "repetition_penalty": value}, timeout=TIMEOUT)
    assert "0.001" in assert_envelope(r, 400, "repetition_penalty")["message"]


@pytest.mark.parametrize("message, param", [
    ({"role": ["user"], "content": "x"}, "messages[0].role"),
    ({"role": {"a": 1}, "content": "x"}, "messages[0].role"),
    ({"role": "user", "content": {"text": "x"}}, "messages[0].content"),
    ({"role": "user", "content": [{"type": "text", "text": ["x"]}]}, "messages[0].content"),
])
def test_fields_of_the_wrong_type_are_400_not_500(chat_server, message, param):
    url, _ = chat_server
    r = httpx.post(url + "/v1/chat/completions", json={"messages": [message]}, timeout=TIMEOUT)
    assert_envelope(r, 400, param)
    r = httpx.post(url + "/v1/completions", json={"prompt": "x", "temperature": 10**400}, timeout=TIMEOUT)
    assert_envelope(r, 400, "temperature")


_json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                            | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
_FIELDS = ["model", "prompt", "messages", "temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "n",
           "seed", "stop", "stream", "stream_options", "repetition_penalty", "ignore_eos"]
_message = st.fixed_dictionaries({}, optional={"role": st.sampled_from(["user", "system", "assistant"]) | _json_values,
                                               "content": st.text(max_size=8) | _json_values})
_bodies = st.fixed_dictionaries({}, optional={**{f: _json_values for f in _FIELDS},
                                              "messages": st.lists(_message, max_size=3) | _json_values,
                                              "prompt": st.text(max_size=8) | st.lists(st.integers(0, 299), max_size=4)
                                              | _json_values})


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_bodies, kind=st.sampled_from(["chat", "completion"]))
def test_fuzzed_request_fields_are_parsed_or_400(body, kind):
    """Any JSON at all in any request field: parsed, or an APIError 400 naming a field; nothing else escapes."""
    from sifirdan.serve.errors import APIError
    from sifirdan.serve.protocol import parse_messages, parse_prompts, parse_sampling

    # each parser on its own: a bad sampling field must not hide what the message parser does with its field
    for parse in (lambda: parse_sampling(body, kind, 16), lambda: parse_messages(body), lambda: parse_prompts(body)):
        try:
            parse()
        except APIError as e:
            assert e.status == 400 and e.message


@pytest.fixture(scope="module")
def fuzz_server(chat_dir):
    with server_for(chat_dir, max_tokens_cap=2) as s:
        yield s


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_bodies, path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
def test_fuzzed_bodies_never_get_a_500(fuzz_server, body, path):
    url, _ = fuzz_server
    body = {**body, "stream": False} if isinstance(body.get("stream"), bool) else body
    if path == "/v1/chat/completions":  # the message fields alone, so that no sampling field is refused first
        body = {k: v for k, v in body.items() if k == "messages"}
    r = httpx.post(url + path, json=body, timeout=TIMEOUT)
    assert r.status_code in (200, 400, 404), (r.status_code, r.text)
    if r.status_code != 200:
        assert_envelope(r, r.status_code)


def test_bad_start_settings_are_one_line(chat_dir, capsys):
    from sifirdan.cli import main

    for argv, needle in ((["--api-key", "anahtarı"], "--api-key must be ASCII"),
                         (["--max-queue", "0"], "--max-queue must be from 1"),
                         (["--read-timeout", "0"], "--read-timeout"), (["--read-timeout", "x"], "--read-timeout"),
                         (["--allow-origin", "evil.example"], "--allow-origin")):
        assert main(["serve", "--model", str(chat_dir), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, (argv, err)
    from sifirdan.errors import UserError
    with pytest.raises(UserError, match="ASCII"):
        load_app(str(chat_dir), ServerConfig(api_key="şifre"))
    with pytest.raises(UserError, match="max-queue"):
        load_app(str(chat_dir), ServerConfig(max_queue=0))


def _raw(url: str) -> socket.socket:
    host, port = url.rsplit("/", 1)[1].rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=TIMEOUT)


def _read_all(sock) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def test_slow_headers_and_bodies_are_cut_off(chat_dir):
    """Slowloris: a client that trickles its headers or its body loses the connection after --read-timeout."""
    from sifirdan.serve.app import serve_protocol

    with server_for(chat_dir, http=serve_protocol(0.5), read_timeout=0.5) as (url, state):
        seen = _submissions(state)
        socks = [_raw(url) for _ in range(5)]
        for s in socks:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # ... and never the end
        t = time.monotonic()
        for s in socks:
            assert _read_all(s) == b""  # closed by the server
            s.close()
        assert time.monotonic() - t < 10
        # a body that never completes: 408 in the error envelope
        s = _raw(url)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"prompt\": ")
        reply = _read_all(s).decode()
        s.close()
        assert reply.startswith("HTTP/1.1 408") and '"request_timeout"' in reply
        assert seen == []
        # a keep-alive client that asks again in time is served both times
        with httpx.Client(timeout=TIMEOUT) as c:
            for _ in range(2):
                assert c.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200


def test_a_client_leaving_mid_body_logs_one_line(chat_dir):
    import logging

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("uvicorn.error", "uvicorn", "sifirdan.serve")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with server_for(chat_dir) as (url, state):
            seen = _submissions(state)
            for _ in range(3):
                s = _raw(url)
                s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 1000\r\n\r\n{\"prompt\": \"abc")
                time.sleep(0.2)
                s.close()
            deadline = time.monotonic() + 10
            while sum("left before" in r.getMessage() for r in records) < 3:
                assert time.monotonic() < deadline, [r.getMessage() for r in records]
                time.sleep(0.05)
            assert seen == []
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    assert not [r for r in records if r.exc_info or "Exception in ASGI" in r.getMessage()]


def test_requests_with_many_choices_share_the_batch_fairly(chat_dir):
    """max_batch 2: one request for n = 8 choices, then one for a single choice. First in, first out would run
    all 8 first; a free slot goes to the request holding fewest rows, so the second finishes first."""
    with server_for(chat_dir, max_batch=2) as (url, state):
        restore = slow_steps(state, 0.02)
        done = {}

        def ask(name, n):
            r = httpx.post(url + "/v1/completions", json={"prompt": "Ankara", "max_tokens": 6, "ignore_eos": True,
                                                          "n": n}, timeout=TIMEOUT)
            assert r.status_code == 200 and len(r.json()["choices"]) == n
            done[name] = time.monotonic()

        try:
            big = threading.Thread(target=ask, args=("big", 8))
            big.start()
            deadline = time.monotonic() + 20
            while state.scheduler.running < 2:
                assert time.monotonic() < deadline
                time.sleep(0.005)
            small = threading.Thread(target=ask, args=("small", 1))
            small.start()
            big.join(60)
            small.join(60)
        finally:
            restore()
        assert set(done) == {"big", "small"} and done["small"] < done["big"]
