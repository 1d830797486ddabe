"""``sifirdan serve``: an OpenAI-compatible HTTP API (continuous batching) and a web chat page for one model.

    sifirdan serve --model runs/chat                      # http://127.0.0.1:8000/  and  /v1/...

The server is ``sifirdan.serve`` (Starlette + uvicorn, the ``serve`` extra); this module checks the flags,
binds the socket (so a port in use is one line, not a traceback) and runs uvicorn until Ctrl-C.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import signal
import socket
import sys
from pathlib import Path

from sifirdan.errors import UserError

DEFAULTS = {"max_batch": 32, "max_tokens_cap": 1024, "max_queue": 128, "read_timeout": 10}


def register(subparsers) -> None:
    from sifirdan.cli import options

    p = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API, with a web chat page",
        description=(
            "Serve one model over HTTP: OpenAI's /v1/models, /v1/completions and /v1/chat/completions (any OpenAI "
            "client works: base_url http://HOST:PORT/v1), streaming, and a web chat page at /. Concurrent requests "
            "share one running batch (continuous batching): a new request joins between two decode steps, a "
            "finished one leaves at once. Chat needs a fine-tuned model (it uses the chat template saved in the "
            "checkpoint); completions work with any model. Binds 127.0.0.1 (this machine only) unless --host says "
            "otherwise; give --api-key (or $SIFIRDAN_API_KEY) before you open it to a network."
        ),
    )
    options.add(p, "--model", required=True)
    p.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                   help="address to listen on; 0.0.0.0 = every interface (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", default="8000", metavar="N", help="TCP port; 0 = any free port (default: 8000)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require the header `Authorization: Bearer KEY` on /v1 (default: $SIFIRDAN_API_KEY, else none)")
    p.add_argument("--max-batch", default=str(DEFAULTS["max_batch"]), metavar="N",
                   help=f"sequences generated together at most; 1 = one at a time (default: {DEFAULTS['max_batch']})")
    p.add_argument("--max-tokens-cap", default=str(DEFAULTS["max_tokens_cap"]), metavar="N",
                   help=f"a request's max_tokens, in tokens, is lowered to this (default: {DEFAULTS['max_tokens_cap']})")
    p.add_argument("--max-queue", default=str(DEFAULTS["max_queue"]), metavar="N",
                   help=f"requests that may wait for the batch; more get 429 + Retry-After (default: {DEFAULTS['max_queue']})")
    p.add_argument("--read-timeout", default=str(DEFAULTS["read_timeout"]), metavar="SECONDS",
                   help="a client has this long for a request's headers, and again for its body; a slower one is "
                   f"cut off (408 for a body) so that it cannot hold a connection (default: {DEFAULTS['read_timeout']})")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host header is NAME (a DNS name this server is reached by; "
                   "repeatable); the bound address, this machine's name and, on loopback, localhost always work; "
                   "'*' = any name (behind a proxy that checks names itself)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from ORIGIN (e.g. http://localhost:3000; repeatable) call the API with CORS; "
                   "requests a browser sends from any other page are refused (403)")
    p.add_argument("--model-name", default=None, metavar="NAME",
                   help="the model id clients send and /v1/models lists (default: the directory's name)")
    options.add(p, "--device", default="auto")
    options.add(p, "--threads", default=0)
    p.set_defaults(func=cmd_serve)


def _int(value, name: str, lo: int, hi: int) -> int:
    try:
        n = int(str(value).strip(), 10)
    except ValueError:
        raise UserError(f"--{name} must be an integer, got {value!r}") from None
    if not lo <= n <= hi:
        raise UserError(f"--{name} must be from {lo} to {hi}, got {n}")
    return n


def _seconds(value, name: str) -> float:
    try:
        x = float(str(value).strip())
    except ValueError:
        raise UserError(f"--{name} must be a number of seconds, got {value!r}") from None
    if not (math.isfinite(x) and 0 < x <= 3600):
        raise UserError(f"--{name} must be from 0 to 3600 seconds (not 0), got {value!r}")
    return x


def allowed_hosts(host: str, extra: list[str]) -> frozenset[str] | None:
    """The Host header names this server answers besides the address a connection reached (the app adds that):
    the --host value itself, the loopback names when bound to loopback, this machine's names when bound
    beyond it, and every --allowed-host. None ('*' given): any name."""
    from sifirdan.serve.app import LOOPBACK_HOSTS

    names = {h.strip().lower() for h in extra}
    if "*" in names:
        return None
    for h in names:
        if not h or not re.fullmatch(r"[a-z0-9._\-]+|\[?[0-9a-f:.]+\]?", h):
            raise UserError(f"--allowed-host {h!r} is not a host name; give a name such as sifirdan.local (no port, no scheme)")
    names = {h.strip("[]") for h in names} | {host.lower().strip("[]")}
    if is_loopback(host):
        names |= LOOPBACK_HOSTS
    else:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        names |= LOOPBACK_HOSTS  # 0.0.0.0 also takes the loopback interface
    return frozenset(names)


def allow_origins(values: list[str]) -> frozenset[str]:
    out = set()
    for v in values:
        o = v.strip().rstrip("/").lower()
        if not re.fullmatch(r"https?://[^/\s?#]+", o):
            raise UserError(f"--allow-origin {v!r} is not an origin; give scheme://host[:port], e.g. http://localhost:3000")
        out.add(o)
    return frozenset(out)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line UserError (port in use, no such address)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host!r} is not an address of this machine ({e.strerror}); use e.g. 127.0.0.1") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        hint = "pick another with --port (or stop the program that uses it)" if e.errno in (98, 48) else "check --host/--port"
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); {hint}") from None
    sock.set_inheritable(True)
    return sock


def warning_line(host: str, port: int) -> str:
    return (f"sifirdan: warning: listening beyond this machine ({host}) without --api-key: anyone who can reach "
            f"port {port} can use the model")


class _Stopped(Exception):
    pass


def _stop(signum, frame):
    raise _Stopped


def _serve_extra():
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise UserError(f"sifirdan serve needs the serve extra ({e.name} is not installed): "
                        "pip install -e \".[serve]\"") from None
    return uvicorn


def _checked_api_key(args) -> str | None:
    api_key = args.api_key if args.api_key is not None else os.environ.get("SIFIRDAN_API_KEY") or None
    if api_key is not None and (not api_key.strip() or any(c.isspace() for c in api_key)):
        raise UserError("--api-key must be a non-empty string without spaces")
    if api_key is not None and not api_key.isascii():
        # the header arrives as bytes Starlette reads as latin-1: a UTF-8 key would never match
        raise UserError("--api-key must be ASCII (letters, digits, punctuation): HTTP headers carry no other "
                        "characters reliably; pick another key")
    return api_key


def cmd_serve(args) -> int:
    uvicorn = _serve_extra()
    from sifirdan.generate.config import MAX_NEW_TOKENS_CAP

    port = _int(args.port, "port", 0, 65535)
    max_batch = _int(args.max_batch, "max-batch", 1, 1024)
    cap = _int(args.max_tokens_cap, "max-tokens-cap", 1, MAX_NEW_TOKENS_CAP)
    # 0 would leave no room to wait: every request would get 429 (issue 19)
    max_queue = _int(args.max_queue, "max-queue", 1, 1_000_000)
    read_timeout = _seconds(args.read_timeout, "read-timeout")
    threads = args.threads  # 0: the cores other programs leave free, re-decided while serving (the scheduler)
    api_key = _checked_api_key(args)
    hosts = allowed_hosts(args.host, args.allowed_host)
    origins = allow_origins(args.allow_origin)

    import torch

    from sifirdan.checkpoint import resolve_checkpoint_dir
    from sifirdan.serve.app import ServerConfig, load_app, serve_protocol
    from sifirdan.train.runtime import resolve_device

    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(args.device)
    name = args.model_name or Path(args.model).resolve().name or "sifirdan"
    loopback = is_loopback(args.host)
    config = ServerConfig(model_name=name, api_key=api_key, max_batch=max_batch, max_queue=max_queue,
                          max_tokens_cap=cap, allowed_hosts=hosts, allow_origins=origins, read_timeout=read_timeout,
                          share_cpu=threads == 0 and device.type == "cpu")
    resolve_checkpoint_dir(args.model, made_by="sifirdan finetune --out")  # a wrong path: one line, before anything loads
    sock = bind(args.host, port)  # before the weights: a port in use fails fast
    try:
        app = load_app(args.model, config, device)
        s = app.state
        bound = sock.getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        url = f"http://{shown}:{bound[1]}"
        kind = "chat + completions" if s.template is not None else "completions only (no chat template: pre-trained)"
        print(f"sifirdan: serving {name!r} ({kind}; context {s.block_size} tokens, max batch {max_batch}) at {url}/ "
              f"-- OpenAI API at {url}/v1{', API key required' if api_key else ''}; Ctrl-C stops", flush=True)
        if not loopback and not api_key:
            print(warning_line(args.host, bound[1]), file=sys.stderr, flush=True)
        server = uvicorn.Server(uvicorn.Config(app, http=serve_protocol(read_timeout), log_level="warning", access_log=False,
                                               timeout_graceful_shutdown=5, lifespan="on"))
        # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again: stopping is the normal
        # end of a server, so both end here, with "server stopped" and exit code 0
        old = signal.signal(signal.SIGTERM, _stop)
        try:
            server.run(sockets=[sock])
        except (KeyboardInterrupt, _Stopped):
            pass
        finally:
            signal.signal(signal.SIGTERM, old)
    finally:
        sock.close()
    print("sifirdan: server stopped", flush=True)
    return 0
