"""The HTTP server: OpenAI's API over one continuously batched Engine, and the web chat page.

    app = build_app(model, tokenizer, meta, ServerConfig(model_name="ataturk"))   # a Starlette ASGI app
    uvicorn.run(app, host="127.0.0.1", port=8000)       # what `sifirdan serve` does

Routes:
    GET  /                      the web chat page (sifirdan/serve/static/chat.html)
    GET  /static/NAME           chat.js, chat.css: a fixed list of file names, never a path from the request
    GET  /health                {"status": "ok", "running": ..., "queued": ...}: no key needed
    GET  /v1/models             the one model this server serves (and GET /v1/models/ID)
    POST /v1/completions        prompt -> text
    POST /v1/chat/completions   messages -> the assistant's answer, in the checkpoint's chat template

Limits (each answered in OpenAI's error envelope):
    body over 1 MB -> 413; not JSON, not an object, a field of the wrong type or range -> 400 naming the field;
    a POST whose Content-Type is not application/json, a missing one included -> 415 (a web page elsewhere
    cannot send that type without the browser asking first); a request from a page on another origin -> 403
    unless --allow-origin names that origin (the browser's Origin and Sec-Fetch-Site headers say so; the CORS
    preflight is answered for the named origins only); unknown model -> 404; a prompt of block_size tokens or
    more -> 400 naming the limit; max_tokens over --max-tokens-cap -> capped; --max-queue requests waiting ->
    429 with Retry-After; --api-key set and no ``Authorization: Bearer KEY`` -> 401 (constant-time compare);
    a Host header that names neither the bound address, nor this machine, nor an --allowed-host -> 400 (DNS
    rebinding); a body not complete within --read-timeout seconds -> 408 (the headers: the connection closes).
No request names a file: the model is fixed at start, the page and its two assets are package resources.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from sifirdan.errors import UserError
from sifirdan.generate import Engine
from sifirdan.generate.continuous import Row
from sifirdan.serve.errors import APIError, bad_request, dumps
from sifirdan.serve.protocol import parse_messages, parse_prompts, parse_sampling, usage
from sifirdan.serve.scheduler import QueueFull, Scheduler, Ticket

MAX_BODY = 1 << 20  # 1 MiB
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
READ_TIMEOUT = 10.0  # seconds a client has for a request's headers, and again for its body
log = logging.getLogger("sifirdan.serve")
STATIC_FILES = {"chat.js": "text/javascript; charset=utf-8", "chat.css": "text/css; charset=utf-8"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
PLACEHOLDER = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>sifirdan</title></head><body>"
               "<h1>sifirdan serve</h1><p>The web chat page (sifirdan/serve/static/chat.html) is missing from this "
               "installation. The OpenAI-compatible API works: <code>/v1/models</code>, <code>/v1/completions</code>, "
               "<code>/v1/chat/completions</code>.</p></body></html>")


@dataclass
class ServerConfig:
    model_name: str = "sifirdan"
    api_key: str | None = None
    max_batch: int = 32  # rows generated together
    max_queue: int = 128  # requests waiting for a row before new ones get 429
    max_tokens_cap: int = 1024  # max_tokens above this is lowered to it
    max_body: int = MAX_BODY
    # Host header names accepted besides the address the connection reached (see _Guard); None: any (the
    # CLI's --allowed-host '*', for a server behind a proxy that checks names itself)
    allowed_hosts: frozenset[str] | None = LOOPBACK_HOSTS
    # origins (scheme://host[:port]) whose pages may call the API; any other page is refused (see _Guard)
    allow_origins: frozenset[str] = frozenset()
    read_timeout: float = READ_TIMEOUT  # seconds for a request's body (and, with serve_protocol, its headers)
    retry_after: int = 1  # seconds, in the 429's Retry-After
    # a busy batch (more than `busy_rows` rows) writes each stream at most every `stream_interval` seconds, the
    # tokens in between merged into one chunk: a write costs the server and the client the same work whatever
    # its size. The first text and the end are never held back; with few rows every token is written at once.
    stream_interval: float = 0.025
    busy_rows: int = 8
    # CPU threads follow the cores other programs leave free, re-decided while serving (--threads 0 on a CPU,
    # as in training: see sifirdan.train.runtime.CpuShare); False keeps the count the server started with
    share_cpu: bool = False


def check_config(config: ServerConfig) -> None:
    """One-line UserErrors for settings that could never serve a request."""
    if config.api_key is not None and not config.api_key.isascii():
        # an HTTP header arrives as bytes that Starlette reads as latin-1: a key typed in UTF-8 would never match
        raise UserError("--api-key must be ASCII (letters, digits, punctuation): HTTP headers carry no other "
                        "characters reliably; pick another key")
    if config.max_queue < 1:
        raise UserError(f"--max-queue must be at least 1, got {config.max_queue}: with no room to wait every request "
                        "would be refused with 429")
    if config.max_batch < 1:
        raise UserError(f"--max-batch must be at least 1, got {config.max_batch}")
    if not config.read_timeout > 0:
        raise UserError(f"--read-timeout must be a number of seconds > 0, got {config.read_timeout}")


class _State:
    def __init__(self, model, tokenizer, meta: dict, config: ServerConfig):
        from sifirdan.chat.template import template_of

        check_config(config)
        self.config = config
        self.engine = Engine(model, tokenizer)
        self.tokenizer = tokenizer
        self.block_size = self.engine.block_size
        self.template = template_of(meta or {})
        if self.template is not None:
            missing = self.template.missing_tokens(tokenizer)
            if missing:
                raise UserError(f"the model's chat template needs the special token(s) {', '.join(missing)} but its "
                                "tokenizer has none; fine-tune it again with `sifirdan finetune`")
            self.chat_stop_ids = tuple(self.template.stop_ids(tokenizer))
            self.chat_suppressed_ids = self.template.suppressed_ids(tokenizer)
        # no token is longer than this many bytes: a text of more than block_size * this bytes cannot fit,
        # and is refused before it costs a tokenization
        self.max_token_bytes = max([len(b) for b in tokenizer.vocab.values()] + [1])
        self.scheduler = Scheduler(self.engine, config.max_batch, config.max_queue, share_cpu=config.share_cpu)
        self.tokenize_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sifirdan-tokenize")
        self.created = int(time.time())

    def stream_interval(self) -> float:
        return self.config.stream_interval if self.scheduler.running > self.config.busy_rows else 0.0

    def model_card(self) -> dict:
        return {"id": self.config.model_name, "object": "model", "created": self.created, "owned_by": "sifirdan",
                # extras a client may use: the context, the cap on max_tokens, whether chat works
                "context_length": self.block_size, "max_tokens_cap": self.config.max_tokens_cap,
                "chat": self.template is not None}


# ------------------------------------------------------------------------------------------------ helpers
def _json(obj, status: int = 200, headers: dict | None = None) -> Response:
    return Response(dumps(obj), status_code=status, headers=headers, media_type="application/json")


def _error_response(e: APIError) -> Response:
    return _json(e.body(), e.status, e.headers)


def _check_auth(request: Request) -> None:
    key = request.app.state.s.config.api_key
    if not key:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # compare_digest on bytes of any length: no early exit that would tell how much of a guess was right.
    # Starlette decodes headers as latin-1, so encoding back gives the very bytes the client sent (the key is
    # ASCII: check_config)
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("latin-1", "replace"),
                                                             key.encode("utf-8")):
        raise APIError(401, "missing or wrong API key: send the header Authorization: Bearer KEY",
                       type="invalid_request_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def _read_json(request: Request) -> dict:
    limit = request.app.state.s.config.max_body
    ctype = request.headers.get("content-type")
    # no Content-Type is refused too: a page on another origin can POST a Blob or a text body without one, and
    # without asking the browser's permission first (no CORS preflight); application/json it cannot
    if ctype is None or ctype.split(";")[0].strip().lower() != "application/json":
        got = "none" if ctype is None else repr(ctype[:80])
        raise APIError(415, f"send the body as JSON with the header Content-Type: application/json (got {got})",
                       type="invalid_request_error", code="unsupported_media_type")
    too_big = APIError(413, f"the request body is larger than {limit // 1024} KiB", type="invalid_request_error",
                       code="request_too_large")
    length = request.headers.get("content-length")
    if length is not None and (not length.strip().isdigit() or int(length) > limit):
        raise too_big
    body = bytearray()
    timeout = request.app.state.s.config.read_timeout
    try:
        async with asyncio.timeout(timeout):  # a client that sends a byte a minute must not hold a connection
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise too_big
    except TimeoutError:
        raise APIError(408, f"the request body did not arrive within {timeout:g} s (--read-timeout); send it at once",
                       type="invalid_request_error", code="request_timeout", headers={"Connection": "close"}) from None
    try:
        data = json.loads(bytes(body), parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        msg = str(e) if isinstance(e, ValueError) else "nested too deeply"
        raise bad_request(f"the body is not valid JSON ({msg[:200]})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request(f"the body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    return data


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def _check_model(s: _State, body: dict) -> None:
    model = body.get("model")
    if model is None:
        return  # lenient: the one model there is
    if not isinstance(model, str):
        raise bad_request(f"model must be a string, got {type(model).__name__}", param="model")
    if model != s.config.model_name:
        raise APIError(404, f"the model {model[:100]!r} does not exist; this server serves {s.config.model_name!r} "
                            "(GET /v1/models)", type="invalid_request_error", param="model", code="model_not_found")


def _too_long(s: _State, n: int, param: str) -> APIError:
    what = f"{n} tokens" if n >= 0 else "longer than that"
    return bad_request(f"the prompt is {what}; this model's context is {s.block_size} tokens, so a prompt may have at "
                       f"most {s.block_size - 1} (the answer needs room); shorten it", param=param,
                       code="context_length_exceeded")


async def _tokenize(s: _State, fn):
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(s.tokenize_pool, fn)
    except UserError as e:
        raise bad_request(str(e)) from None


def _submit(s: _State, rows: list[Row]) -> Ticket:
    try:
        return s.scheduler.submit(rows)
    except QueueFull:
        raise APIError(429, f"the server is busy: {s.config.max_queue} requests are waiting already; retry in a moment",
                       type="rate_limit_error", code="server_busy",
                       headers={"Retry-After": str(s.config.retry_after)}) from None


def _rows(s: _State, prompts_ids: list[list[int]], sampling, stop_ids) -> list[Row]:
    rows = []
    for ids in prompts_ids:
        for j in range(sampling.n):
            cfg = sampling.config
            if cfg.seed is not None:
                cfg = replace(cfg, seed=cfg.seed + j)  # choice j samples like row j of `sifirdan generate`
            rows.append(Row(ids, cfg, stop_ids))
    return rows


async def _watch_disconnect(receive, ticket: Ticket) -> None:
    """Wait for the client to leave, then abandon the request: its rows are cancelled (the batch frees them
    before its next step) and whoever reads its events stops at once."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            ticket.abandon()
            return


async def _collect(request: Request, ticket: Ticket) -> list[dict]:
    """Wait for every choice of a non-streaming request."""
    texts = [[] for _ in ticket.rows]
    finish = [None] * len(ticket.rows)
    tokens = [0] * len(ticket.rows)
    watcher = asyncio.ensure_future(_watch_disconnect(request.receive, ticket))
    try:
        while ticket.open:
            ev = await ticket.events.get()
            if ev.gone:
                raise APIError(499, "the client closed the connection")  # nobody reads this
            if ev.error:
                raise APIError(500, ev.error, type="server_error")
            texts[ev.index].append(ev.text)
            tokens[ev.index] = ev.completion_tokens
            if ev.finished:
                finish[ev.index] = ev.finish_reason
                ticket.open -= 1
    finally:
        ticket.cancel()  # no-op for rows that finished
        watcher.cancel()
    return [{"text": "".join(t), "finish_reason": f, "completion_tokens": n} for t, f, n in zip(texts, finish, tokens)]


class _EventStream:
    """A text/event-stream response that also listens for the client leaving: then the request's rows are
    cancelled at once, and the batch frees them before its next step (not only when a write fails)."""

    def __init__(self, ticket: Ticket, chunks):
        self.ticket = ticket
        self.chunks = chunks  # async iterator of bytes; it ends early when the ticket is abandoned

    async def __call__(self, scope, receive, send) -> None:
        watcher = asyncio.ensure_future(_watch_disconnect(receive, self.ticket))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]})
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if not self.ticket.abandoned:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the connection went away mid-write
            pass
        finally:
            self.ticket.cancel()  # no-op for rows that finished
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await self.chunks.aclose()


def _sse(obj) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


async def _stream_events(ticket: Ticket, make_chunk, make_finish, usage_chunk, interval=lambda: 0.0):
    """Events -> SSE bytes, one write per wake-up. Events that are waiting together go out as one chunk per
    choice: the text is the same, the overhead per token is not. ``interval()`` (see
    ``ServerConfig.stream_interval``) is the least time between two writes while the batch is busy."""
    total = 0
    loop = asyncio.get_running_loop()
    last = None  # when text was last written
    while ticket.open:
        evs = [await ticket.events.get()]
        first = evs[0]
        if last is not None and not (first.finished or first.gone or first.error):
            wait = last + interval() - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
        while not ticket.events.empty():
            evs.append(ticket.events.get_nowait())
        out: list[bytes] = []
        text: dict[int, list[str]] = {}
        for ev in evs:
            if ev.gone:
                return
            if ev.error:
                out.append(_sse({"error": {"message": ev.error, "type": "server_error", "param": None, "code": None}}))
                yield b"".join(out)
                return
            if ev.text:
                text.setdefault(ev.index, []).append(ev.text)
            if ev.finished:
                if ev.index in text:
                    out.append(make_chunk(ev.index, "".join(text.pop(ev.index))))
                out.append(make_finish(ev.index, ev.finish_reason))
                total += ev.completion_tokens
                ticket.open -= 1
        for index, parts in text.items():
            out.append(make_chunk(index, "".join(parts)))
        if not ticket.open:
            if usage_chunk is not None:
                out.append(usage_chunk(total))
            out.append(b"data: [DONE]\n\n")
        if out:
            last = loop.time()
            yield b"".join(out)


# ------------------------------------------------------------------------------------------------ endpoints
async def completions(request: Request) -> Response:
    s: _State = request.app.state.s
    _check_auth(request)
    body = await _read_json(request)
    _check_model(s, body)
    sampling = parse_sampling(body, "completion", s.config.max_tokens_cap)
    prompts = parse_prompts(body)
    if len(prompts) * sampling.n > 64:
        raise bad_request(f"prompts x n is {len(prompts) * sampling.n}; at most 64 per request", param="n")
    for p in prompts:
        if isinstance(p, str) and len(p.encode("utf-8", "surrogatepass")) > s.block_size * s.max_token_bytes:
            raise _too_long(s, -1, "prompt")

    def encode():
        return [s.engine.encode_prompt(p) if isinstance(p, str) else s.engine._check_ids(p) for p in prompts]

    prompts_ids = await _tokenize(s, encode)
    for ids in prompts_ids:
        if len(ids) >= s.block_size:
            raise _too_long(s, len(ids), "prompt")
    ticket = _submit(s, _rows(s, prompts_ids, sampling, None))
    cid, created, name = f"cmpl-{uuid.uuid4().hex}", int(time.time()), s.config.model_name
    prompt_tokens = sum(len(ids) for ids in prompts_ids)  # each prompt once, whatever n is (as OpenAI counts)

    def base(choices, **extra):
        return {"id": cid, "object": "text_completion", "created": created, "model": name, "choices": choices, **extra}

    if sampling.stream:
        u = {"usage": None} if sampling.include_usage else {}

        def chunk(i, text):
            return _sse(base([{"index": i, "text": text, "logprobs": None, "finish_reason": None}], **u))

        def finish(i, reason):
            return _sse(base([{"index": i, "text": "", "logprobs": None, "finish_reason": reason}], **u))

        usage_chunk = (lambda total: _sse(base([], usage=usage(prompt_tokens, total)))) if sampling.include_usage else None
        return _EventStream(ticket, _stream_events(ticket, chunk, finish, usage_chunk, s.stream_interval))
    results = await _collect(request, ticket)
    choices = [{"index": i, "text": r["text"], "logprobs": None, "finish_reason": r["finish_reason"]}
               for i, r in enumerate(results)]
    return _json(base(choices, usage=usage(prompt_tokens, sum(r["completion_tokens"] for r in results))))


async def chat_completions(request: Request) -> Response:
    s: _State = request.app.state.s
    _check_auth(request)
    body = await _read_json(request)
    _check_model(s, body)
    sampling = parse_sampling(body, "chat", s.config.max_tokens_cap)
    messages = parse_messages(body)
    if s.template is None:
        raise bad_request(f"the model {s.config.model_name!r} is pre-trained, not fine-tuned: it has no chat template, so "
                          "it cannot answer messages; use /v1/completions (it continues a prompt), or fine-tune it with "
                          "`sifirdan finetune`", param="messages", code="model_not_chat")
    if sum(len(m["content"].encode("utf-8", "surrogatepass")) for m in messages) > s.block_size * s.max_token_bytes:
        raise _too_long(s, -1, "messages")
    ids = await _tokenize(s, lambda: s.template.render_prompt(messages, s.tokenizer))
    if len(ids) >= s.block_size:
        raise _too_long(s, len(ids), "messages")
    if sampling.ignore_eos:  # raw output: no stop ids, nothing suppressed
        stop_ids = ()
    else:  # the template's tokens that do not end the answer never appear in it
        stop_ids = s.chat_stop_ids
        sampling = replace(sampling, config=replace(sampling.config, suppress_token_ids=s.chat_suppressed_ids))
    ticket = _submit(s, _rows(s, [ids], sampling, stop_ids))
    cid, created, name = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), s.config.model_name

    def base(choices, obj="chat.completion", **extra):
        return {"id": cid, "object": obj, "created": created, "model": name, "choices": choices, **extra}

    if sampling.stream:
        u = {"usage": None} if sampling.include_usage else {}
        started = set()

        def chunk(i, text):
            delta = {"content": text}
            if i not in started:  # the first delta of each choice carries the role
                started.add(i)
                delta = {"role": "assistant", "content": text}
            return _sse(base([{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}],
                             "chat.completion.chunk", **u))

        def finish(i, reason):
            head = chunk(i, "") if i not in started else b""
            return head + _sse(base([{"index": i, "delta": {}, "logprobs": None, "finish_reason": reason}],
                                    "chat.completion.chunk", **u))

        usage_chunk = None
        if sampling.include_usage:
            usage_chunk = lambda total: _sse(base([], "chat.completion.chunk", usage=usage(len(ids), total)))  # noqa: E731

        async def with_role():
            # the role goes out at once: the client sees the answer begin before the first token is sampled
            for i in range(len(ticket.rows)):
                yield chunk(i, "")
            async for c in _stream_events(ticket, chunk, finish, usage_chunk, s.stream_interval):
                yield c

        return _EventStream(ticket, with_role())
    results = await _collect(request, ticket)
    choices = [{"index": i, "message": {"role": "assistant", "content": r["text"]}, "logprobs": None,
                "finish_reason": r["finish_reason"]} for i, r in enumerate(results)]
    return _json(base(choices, usage=usage(len(ids), sum(r["completion_tokens"] for r in results))))


async def models(request: Request) -> Response:
    _check_auth(request)
    return _json({"object": "list", "data": [request.app.state.s.model_card()]})


async def model_info(request: Request) -> Response:
    _check_auth(request)
    s: _State = request.app.state.s
    name = request.path_params["model"]
    if name != s.config.model_name:
        raise APIError(404, f"the model {name[:100]!r} does not exist; this server serves {s.config.model_name!r}",
                       type="invalid_request_error", param="model", code="model_not_found")
    return _json(s.model_card())


async def health(request: Request) -> Response:
    s: _State = request.app.state.s
    return _json({"status": "ok", "model": s.config.model_name, **s.scheduler.stats()})


_PAGE_HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache", "X-Frame-Options": "DENY",
                 "Referrer-Policy": "no-referrer"}


def _resource(name: str) -> bytes | None:
    try:
        return resources.files("sifirdan.serve").joinpath("static").joinpath(name).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


async def page(request: Request) -> Response:
    data = _resource("chat.html")
    return Response(PLACEHOLDER if data is None else data, media_type="text/html; charset=utf-8",
                    headers=_PAGE_HEADERS)


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    media = STATIC_FILES.get(name)  # the name must be one of the list, exactly: never a path
    data = _resource(name) if media else None
    if data is None:
        raise APIError(404, f"no such file: /static/{name[:100]}", type="invalid_request_error")
    return Response(data, media_type=media, headers=_PAGE_HEADERS)


# ------------------------------------------------------------------------------------------------ the app
async def _api_error(request, exc: APIError):
    return _error_response(exc)


async def _http_error(request, exc: HTTPException):
    msg = {404: f"no route {request.method} {request.url.path[:200]}", 405: f"{request.method} is not allowed here"}
    return _error_response(APIError(exc.status_code, msg.get(exc.status_code, str(exc.detail)),
                                    headers=dict(exc.headers or {})))


async def _client_left(request, exc: ClientDisconnect):
    # the client closed the connection before its body was complete: nobody reads an answer; one log line,
    # not uvicorn's "Exception in ASGI application" traceback
    client = request.client
    log.warning("sifirdan: a client%s left before its request body was complete", f" ({client.host})" if client else "")
    return Response(status_code=400)


async def _server_error(request, exc: Exception):
    return _error_response(APIError(500, f"internal error: {type(exc).__name__}", type="server_error"))


def _refuse(status: int, message: str, code: str, headers: dict | None = None) -> Response:
    return _error_response(APIError(status, message, code=code, headers=headers))


class _Guard:
    """Outermost layer: which requests may reach the app at all, and ``X-Content-Type-Options: nosniff`` on
    every response.

    * Host (DNS rebinding: a page whose name is rebound to this machine's address must not reach the API):
      the Host header must name the address the connection reached (``scope["server"]``: the bound address,
      or, bound to 0.0.0.0, the interface the client used), or one of ``allowed_hosts`` (the loopback names,
      the --host name, this machine's name, --allowed-host values). Else 400 ``invalid_host``.
    * Origin (a page on another origin, including another port of 127.0.0.1, must not make this server
      generate): a request that a browser marks as coming from elsewhere -- an ``Origin`` header that is not
      this server's own origin, or ``Sec-Fetch-Site: cross-site``/``same-site`` -- is refused with 403
      ``cross_origin`` unless its origin is one of ``allow_origins``. Top-level GET navigations to the page,
      its static files and /health are let through (they do nothing and reveal nothing); everything under
      /v1 and every other method is checked. Clients that are not browsers send neither header.
    * CORS: an OPTIONS preflight from an allowed origin gets 204 with Access-Control-Allow-* headers; from any
      other origin, 403. Responses to an allowed origin carry Access-Control-Allow-Origin.
    """

    def __init__(self, app, allowed_hosts, allow_origins=frozenset()):
        self.app = app
        self.allowed = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
        self.origins = frozenset(o.lower().rstrip("/") for o in allow_origins)

    def _host_ok(self, name: str, scope) -> bool:
        if self.allowed is None:
            return True
        server = scope.get("server")
        return name in self.allowed or (server is not None and name == str(server[0]).lower())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        name = (host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]", 1)[0]).lower()
        if not self._host_ok(name, scope):
            r = _refuse(400, f"the Host header {host[:100]!r} does not name this server; ask for it by the address it "
                             "listens on (or start it with --allowed-host NAME)", "invalid_host")
            return await r(scope, receive, send)
        origin = headers.get(b"origin")
        origin = origin.decode("latin-1").lower().rstrip("/") if origin is not None else None
        site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
        method = scope["method"]
        allowed_origin = origin is not None and origin in self.origins
        if method == "OPTIONS" and origin is not None and b"access-control-request-method" in headers:
            if not allowed_origin:
                r = _refuse(403, f"cross-origin requests from {origin[:100]} are refused; start the server with "
                                 f"--allow-origin {origin[:100]} to allow that page", "cross_origin")
                return await r(scope, receive, send)
            r = Response(status_code=204, headers={
                "Access-Control-Allow-Origin": origin, "Access-Control-Allow-Methods": "GET, POST",
                "Access-Control-Allow-Headers": "Authorization, Content-Type", "Access-Control-Max-Age": "600",
                "Vary": "Origin"})
            return await r(scope, receive, send)
        own = f"{scope.get('scheme', 'http')}://{host.lower()}"
        foreign = (origin is not None and origin != own) or site in ("cross-site", "same-site")
        harmless = method in ("GET", "HEAD") and not scope["path"].startswith("/v1")
        if foreign and not allowed_origin and not harmless:
            who = origin if origin is not None else f"a {site} page"
            r = _refuse(403, f"a request from {who[:100]} (another origin) is refused; start the server with "
                             "--allow-origin ORIGIN to let that page use the API", "cross_origin")
            return await r(scope, receive, send)
        extra = [(b"x-content-type-options", b"nosniff")]
        if allowed_origin:
            extra += [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        return await self.app(scope, receive, send_with_headers)


def serve_protocol(read_timeout: float = READ_TIMEOUT):
    """uvicorn's h11 protocol with a deadline on request headers (uvicorn has none): a connection whose
    request headers are not complete ``read_timeout`` seconds after it opened, or after its previous response,
    is closed (slowloris). Pass it as ``uvicorn.Config(app, http=serve_protocol(t))``; the body's deadline is
    ``ServerConfig.read_timeout``, checked by the app."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        _deadline = None

        def _arm(self):
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(read_timeout, self._late)

        def _late(self):
            self._deadline = None
            waiting = self.cycle is None or self.cycle.response_complete  # no request in progress: headers pending
            if waiting and not self.transport.is_closing():
                log.warning("sifirdan: closed a connection whose request headers took over %g s (--read-timeout)",
                            read_timeout)
                self.transport.close()

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self):
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc):
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            super().connection_lost(exc)

    return HeaderDeadline


def build_app(model, tokenizer, meta: dict | None = None, config: ServerConfig | None = None):
    """The ASGI app for one model. Its lifespan starts and stops the batch worker thread."""
    config = config or ServerConfig()
    state = _State(model, tokenizer, meta or {}, config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.scheduler.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            state.scheduler.stop()
            state.tokenize_pool.shutdown(wait=False)

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/static/{name}", static, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model_info, methods=["GET"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        APIError: _api_error, HTTPException: _http_error, ClientDisconnect: _client_left, Exception: _server_error})
    app.state.s = state
    guarded = _Guard(app, config.allowed_hosts, config.allow_origins)
    guarded.state = state  # for tests and the CLI
    return guarded


def load_app(model_dir: str, config: ServerConfig | None = None, device="cpu"):
    from sifirdan.checkpoint import load_model, read_config

    meta = read_config(model_dir)
    model, tokenizer = load_model(model_dir, device)
    return build_app(model, tokenizer, meta, config)
