"""The web chat page (sifirdan/serve/static/) in a real browser: Debian's headless Chromium driven by playwright.

Two servers:
  * a stand-in written here (stdlib http.server) that serves the page's three files with the same
    ``Content-Security-Policy: default-src 'self'`` and fakes ``/v1/models`` and a streaming
    ``/v1/chat/completions``: it records every request and cuts its event stream mid-line and mid-UTF-8
    character, so the page's parsing, multi-turn bookkeeping, Stop, Regenerate, Reset, errors and escaping are
    checked exactly, whatever the real server does;
  * the real ``sifirdan serve`` with a tiny fine-tuned-style checkpoint (trained for a few seconds so that it
    answers in Turkish words): the page works against it end to end, and the screenshot ``docs/chat.png`` is
    taken there (greedy decoding: the same conversation every run). The browser reaches it through a TCP relay
    that can deliver the server's bytes slowly, so Stop lands mid-reply although the model is fast.

Needs ``chromium`` (``apt-get install chromium``) and the ``playwright`` Python package (no ``playwright
install``: the system browser is used). Either missing -> skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import sifirdan

REPO = Path(__file__).resolve().parents[1]
STATIC = Path(sifirdan.__file__).resolve().parent / "serve" / "static"
SCREENSHOT = REPO / "docs" / "chat.png"
CSP = "default-src 'self'"
CHROMIUM = os.environ.get("SIFIRDAN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 20_000  # bound on every wait in the browser

TURKISH = "Merhaba, nasılsın? Çok güzel bir gün!"
XSS = '<img src=x onerror="window.__xss=1">'


# ------------------------------------------------------------------------------------------------ browser
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium (a fresh profile) for the module; each test opens its own pages."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is not installed (pip install -e '.[test]'); the page needs a browser test")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium); the page needs a browser test")
    pw = sync_playwright().start()
    try:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1000, "height": 700}, locale="tr-TR", timeout=60_000)
        ctx.set_default_timeout(TIMEOUT_MS)
        yield ctx
        ctx.close()
    finally:
        pw.stop()


class PageLog:
    """Console errors, page errors and CSP violations of a page: a page that breaks its CSP shows them here."""

    def __init__(self, page):
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._console)

    def _console(self, msg):
        where = (msg.location or {}).get("url", "")
        if msg.type == "error" and not where.endswith("/favicon.ico"):  # the browser asks; no server must have one
            self.errors.append(f"{msg.text} [{where}]")

    def assert_clean(self, allow: tuple[str, ...] = ()):
        bad = [e for e in self.errors if not any(a in e for a in allow)]
        assert not bad, bad


def open_page(browser, url: str, width: int = 1000, height: int = 700):
    page = browser.new_page()
    page.set_viewport_size({"width": width, "height": height})
    log = PageLog(page)
    page.goto(url)
    return page, log


def wait_model(page, model_id: str):
    # a function, not an expression: playwright evaluates expression strings with eval, which the CSP forbids
    page.wait_for_function("id => document.getElementById('model-name').textContent === id", arg=model_id)


def wait_idle(page):
    page.wait_for_selector("body[data-state=idle]", timeout=TIMEOUT_MS)


def assistant_texts(page) -> list[str]:
    return page.locator("#messages .msg.assistant .text").all_text_contents()


def user_texts(page) -> list[str]:
    return page.locator("#messages .msg.user .text").all_text_contents()


def watch_growth(page):
    """Record the length of the newest assistant bubble's text at every DOM change (reset per call)."""
    page.evaluate("""() => {
      if (window.__growthObserver) window.__growthObserver.disconnect();
      window.__growth = [];
      const obs = new MutationObserver(() => {
        const b = document.querySelectorAll('#messages .msg.assistant .text');
        if (b.length) window.__growth.push(b[b.length - 1].textContent.length);
      });
      obs.observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
      window.__growthObserver = obs;
    }""")


def growth(page) -> list[int]:
    lengths = page.evaluate("window.__growth")
    return [n for i, n in enumerate(lengths) if i == 0 or n != lengths[i - 1]]


def send(page, text: str):
    page.fill("#input", text)
    page.press("#input", "Enter")


def open_settings(page):
    if not page.locator("#settings").evaluate("d => d.open"):
        page.click("#settings summary")


def no_horizontal_scroll(page) -> tuple[int, int]:
    return page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")


# ------------------------------------------------------------------------------------------------ stand-in server
class StandIn:
    """A fake of the OpenAI-compatible API the page talks to. The last user message picks the behaviour:
    ``uzun`` streams (slowly) until the client goes away, ``hata`` answers 400 with OpenAI's error envelope,
    ``xss`` replies with markup, ``geniş`` with one long unbroken word; anything else gets ``reply(n)``."""

    MODEL = "sahte-model"

    def __init__(self, api_key: str | None = None):
        self.api_key = api_key
        self.requests: list[dict] = []
        self.disconnected = threading.Event()
        self.n = 0
        self.lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                files = {"/": ("chat.html", "text/html; charset=utf-8"),
                         "/static/chat.js": ("chat.js", "text/javascript; charset=utf-8"),
                         "/static/chat.css": ("chat.css", "text/css; charset=utf-8")}
                if self.path in files:
                    name, ctype = files[self.path]
                    return self.reply(200, (STATIC / name).read_bytes(), ctype)
                if self.path.startswith("/v1/") and not self.authorized():
                    return
                if self.path == "/v1/models":
                    return self.json(200, {"object": "list", "data": [{"id": StandIn.MODEL, "object": "model",
                                                                        "created": 0, "owned_by": "sifirdan"}]})
                self.json(404, {"error": {"message": f"no route {self.path}", "type": "not_found_error",
                                          "param": None, "code": None}})

            def do_POST(self):
                if not self.authorized():
                    return
                if self.path != "/v1/chat/completions":
                    return self.json(404, {"error": {"message": "no route", "type": "not_found_error"}})
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with stand_in.lock:
                    stand_in.n += 1
                    n = stand_in.n
                    stand_in.requests.append({"body": body, "authorization": self.headers.get("Authorization")})
                last = body["messages"][-1]["content"]
                if "hata" in last:
                    return self.json(400, {"error": {"message": "İstem çok uzun: bağlam 64 belirteç", "type":
                                                     "invalid_request_error", "param": "messages", "code": None}})
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream; charset=utf-8")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Content-Security-Policy", CSP)
                self.end_headers()
                try:
                    if "uzun" in last:
                        self.events((f"kelime{i} " for i in range(100_000)), split=None, delay=0.02)
                    elif "xss" in last:
                        self.events(["Şöyle: ", XSS, " ve <b>kalın</b> &amp; <script>window.__xss=2</script>"])
                    elif "geniş" in last:
                        self.events(["ş" * 400])
                    else:
                        self.events(StandIn.pieces(n))
                except (BrokenPipeError, ConnectionResetError):
                    stand_in.disconnected.set()

            def events(self, pieces, split: int | None = 7, delay: float = 0.004):
                """OpenAI's chunk stream: role delta, content deltas, finish_reason, [DONE]. Raw UTF-8 (not
                \\u escapes), written `split` bytes at a time, so reads end mid-line and mid-character."""
                def chunk(delta, finish=None):
                    return "data: " + json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk",
                                                  "created": 0, "model": StandIn.MODEL, "choices": [
                                                      {"index": 0, "delta": delta, "finish_reason": finish}]},
                                                 ensure_ascii=False) + "\n\n"

                def write(text: str):
                    data = text.encode("utf-8")
                    step = split or len(data)
                    for i in range(0, len(data), step):
                        self.wfile.write(data[i:i + step])
                        self.wfile.flush()
                        time.sleep(delay)

                write(": keep-alive comment\n\n" + chunk({"role": "assistant", "content": ""}))
                for p in pieces:
                    write(chunk({"content": p}))
                write(chunk({}, "stop") + 'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[],'
                      '"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}\n\ndata: [DONE]\n\n')

            def authorized(self) -> bool:
                if stand_in.api_key is None or self.headers.get("Authorization") == f"Bearer {stand_in.api_key}":
                    return True
                self.json(401, {"error": {"message": "missing or wrong API key", "type": "invalid_request_error",
                                          "param": None, "code": "invalid_api_key"}})
                return False

            def json(self, status, obj):
                self.reply(status, json.dumps(obj).encode(), "application/json")

            def reply(self, status, data: bytes, ctype: str):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Security-Policy", CSP)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @staticmethod
    def pieces(n: int) -> list[str]:
        # multi-byte Turkish letters and a flag emoji (two 4-byte characters) to be cut mid-character
        return [f"Cevap {n}: ", "Merhaba! ", "Çok ", "iyiyim, ", "teşekkürler. ", "Iğdır'da ", "şu ", "an ",
                "güneşli ", "🇹🇷", "\nİkinci satır."]

    @staticmethod
    def reply(n: int) -> str:
        return "".join(StandIn.pieces(n))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_page_against_stand_in_server(browser):
    with StandIn(api_key="gizli-anahtar") as api:
        # a server with an API key: the model list is refused until the key is entered
        page, log = open_page(browser, api.url + "/")
        assert page.title() == "sifirdan sohbet"
        page.wait_for_selector("#error:not([hidden])")
        assert "missing or wrong API key" in page.text_content("#error")
        assert page.text_content("#model-name") == "—"
        open_settings(page)
        page.fill("#api-key", "gizli-anahtar")
        page.press("#api-key", "Tab")
        wait_model(page, StandIn.MODEL)
        assert page.is_hidden("#error")

        # settings are sent with each request; the API key only as a Bearer header
        from sifirdan.chat.session import DEFAULT_TEMPERATURE

        assert float(page.input_value("#temperature")) == DEFAULT_TEMPERATURE  # the page starts at chat's default
        page.fill("#temperature", "0.5")
        page.fill("#max-tokens", "77")

        # turn 1: the Turkish message, a reply that streams in (split mid-line and mid-character)
        watch_growth(page)
        send(page, TURKISH)
        page.wait_for_selector("body[data-state=streaming]")
        wait_idle(page)
        assert user_texts(page) == [TURKISH]
        assert assistant_texts(page) == [StandIn.reply(1)]
        g = growth(page)
        assert len(g) >= 5 and g == sorted(g), f"the reply did not grow piece by piece: {g}"
        req = api.requests[-1]
        assert req["authorization"] == "Bearer gizli-anahtar"
        assert req["body"]["messages"] == [{"role": "user", "content": TURKISH}]
        assert req["body"]["stream"] is True and req["body"]["model"] == "sahte-model"
        assert req["body"]["temperature"] == 0.5 and req["body"]["max_tokens"] == 77
        # chat's anti-loop defaults ride along (without the n-gram ban a small model's answers loop)
        from sifirdan.chat.session import DEFAULT_LENGTH_DECAY, DEFAULT_NO_REPEAT_NGRAM, DEFAULT_PROMPT_BOOST, DEFAULT_TOP_P

        assert req["body"]["top_p"] == DEFAULT_TOP_P == 0.9
        assert req["body"]["no_repeat_ngram_size"] == DEFAULT_NO_REPEAT_NGRAM == 3
        assert tuple(req["body"]["exponential_decay_length_penalty"]) == DEFAULT_LENGTH_DECAY
        assert tuple(req["body"]["prompt_boost"]) == DEFAULT_PROMPT_BOOST
        assert page.input_value("#input") == ""

        # turn 2: the whole conversation is sent
        send(page, "İkinci soru: Ankara'nın nüfusu?")
        wait_idle(page)
        turn2 = [{"role": "user", "content": TURKISH}, {"role": "assistant", "content": StandIn.reply(1)},
                 {"role": "user", "content": "İkinci soru: Ankara'nın nüfusu?"}]
        assert api.requests[-1]["body"]["messages"] == turn2
        assert assistant_texts(page) == [StandIn.reply(1), StandIn.reply(2)]

        # Regenerate: the same conversation again, without the last reply, which is replaced
        page.click("#regenerate")
        wait_idle(page)
        assert api.requests[-1]["body"]["messages"] == turn2
        assert assistant_texts(page) == [StandIn.reply(1), StandIn.reply(3)]
        assert len(user_texts(page)) == 2

        # a system message goes first
        page.fill("#system", "Kısa cevap ver.")
        send(page, "Üçüncü")
        wait_idle(page)
        assert api.requests[-1]["body"]["messages"][0] == {"role": "system", "content": "Kısa cevap ver."}
        assert api.requests[-1]["body"]["messages"][1:] == turn2 + [
            {"role": "assistant", "content": StandIn.reply(3)}, {"role": "user", "content": "Üçüncü"}]
        page.fill("#system", "")

        # Stop during a long reply: the stream is cancelled (the server sees the client go), the text stays
        send(page, "uzun bir cevap yaz")
        page.wait_for_function("""() => { const b = document.querySelectorAll('#messages .msg.assistant .text');
                                          return b.length === 4 && b[3].textContent.length > 40; }""")
        assert page.is_enabled("#stop") and not page.is_enabled("#send") and not page.is_enabled("#regenerate")
        page.click("#stop")
        wait_idle(page)
        assert api.disconnected.wait(10), "the stand-in server never saw the stopped stream's connection close"
        stopped = assistant_texts(page)[-1]
        assert stopped.startswith("kelime0 kelime1 ") and not stopped.endswith("kelime99999 ")
        page.wait_for_timeout(300)
        assert assistant_texts(page)[-1] == stopped
        assert page.locator("#messages .msg.assistant").last.locator(".note").text_content() == "durduruldu"
        assert page.is_enabled("#send") and not page.is_enabled("#stop") and page.is_enabled("#regenerate")
        # the stopped (partial) reply is part of the conversation
        send(page, "Devam")
        wait_idle(page)
        assert api.requests[-1]["body"]["messages"][-2:] == [{"role": "assistant", "content": stopped},
                                                             {"role": "user", "content": "Devam"}]

        # an error from the server's envelope is shown; the failed message goes back into the input
        n_before = len(user_texts(page))
        send(page, "hata ver")
        page.wait_for_selector("#error:not([hidden])")
        wait_idle(page)
        assert page.text_content("#error").endswith("İstem çok uzun: bağlam 64 belirteç")
        assert len(user_texts(page)) == n_before and page.input_value("#input") == "hata ver"
        page.fill("#input", "")

        # model output is text, never HTML: no element is made from it and nothing runs
        send(page, "xss dene")
        wait_idle(page)
        assert page.is_hidden("#error")  # the next turn cleared the old error
        reply = assistant_texts(page)[-1]
        assert XSS in reply and "<script>window.__xss=2</script>" in reply and "&amp;" in reply
        assert page.locator("#messages img, #messages b, #messages script").count() == 0
        page.wait_for_timeout(200)
        assert page.evaluate("typeof window.__xss") == "undefined"

        # Reset: the page and the conversation are empty; the next request sends only the new message
        page.click("#reset")
        assert page.locator("#messages .msg").count() == 0 and page.is_visible("#empty")
        assert not page.is_enabled("#regenerate")
        send(page, "Yeni sohbet")
        wait_idle(page)
        assert api.requests[-1]["body"]["messages"] == [{"role": "user", "content": "Yeni sohbet"}]

        # Reset while a reply streams: it stops, and nothing of it comes back
        send(page, "uzun olsun")
        page.wait_for_function("() => document.querySelectorAll('#messages .msg.assistant').length === 2")
        page.click("#reset")
        wait_idle(page)
        page.wait_for_timeout(200)
        assert page.locator("#messages .msg").count() == 0

        # the event-stream parser on its own: \r\n split between reads, comments, multi-line data, no final blank
        events = page.evaluate("""() => {
          const out = []; const p = new window.sifirdanChat.SSEParser(d => out.push(d));
          for (const piece of ['data: a\\r', '\\n\\r\\n: ping\\n\\nda', 'ta: b\\ndata:c\\n\\n', 'event: x\\ndata: [DONE]'])
            p.feed(piece);
          p.end(); return out; }""")
        assert events == ["a", "b\nc", "[DONE]"]
        log.assert_clean(allow=("status of 400", "status of 401"))  # the deliberate error turn, the missing key
        page.close()

        # phone width: no horizontal scrollbar, even with a long unbroken word and the settings open
        page, log = open_page(browser, api.url + "/", 375, 700)
        open_settings(page)
        page.fill("#api-key", "gizli-anahtar")
        page.press("#api-key", "Tab")
        wait_model(page, StandIn.MODEL)
        send(page, "geniş bir kelime")
        wait_idle(page)
        send(page, TURKISH)
        wait_idle(page)
        scroll_width, client_width = no_horizontal_scroll(page)
        assert scroll_width <= 375 and client_width <= 375, (scroll_width, client_width)
        for sel in ("#send", "#stop", "#regenerate", "#reset", "#input"):
            box = page.locator(sel).bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 375, (sel, box)
        log.assert_clean(allow=("status of 401",))  # before the key was entered
        page.close()


def test_page_errors_when_the_server_is_gone(browser):
    """No server behind the page any more: the model line and a send say so instead of failing silently."""
    with StandIn() as api:
        page, _ = open_page(browser, api.url + "/")
        wait_model(page, StandIn.MODEL)
    # the stand-in is shut down: fetch fails at the network level
    send(page, "kimse var mı?")
    page.wait_for_selector("#error:not([hidden])")
    wait_idle(page)
    assert "kimse var mı?" == page.input_value("#input") and page.locator("#messages .msg").count() == 0
    assert page.text_content("#error").startswith("Sunucuya ulaşılamadı")
    page.close()


# ------------------------------------------------------------------------------------------------ real server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


QUESTIONS = [TURKISH, "Ankara'yı anlat, lütfen.", "Meclis ne yaptı?", "Bugün ne var?"]


def _tiny_checkpoint(directory: Path) -> Path:
    """A tiny fine-tuned-style checkpoint: BPE, a 2-layer GPT, the default chat template, and 150 full-batch
    steps on made-up conversations (a few seconds), so that the replies are Turkish words that end with
    </RESP> rather than a random model's control bytes: the screenshot shows a conversation one can read."""
    import random

    import torch
    from conftest import TINY_WORDS

    from sifirdan.chat.template import DEFAULT_TEMPLATE
    from sifirdan.checkpoint import save_model
    from sifirdan.model import GPT, IGNORE_INDEX, GPTConfig
    from sifirdan.tokenizer import BPETokenizer

    rng = random.Random(0)

    def sentence(lo: int, hi: int, end: str) -> str:
        words = [rng.choice(TINY_WORDS) for _ in range(rng.randint(lo, hi))]
        return " ".join([words[0][:1].upper() + words[0][1:]] + words[1:]) + end

    conversations = []
    for _ in range(48):
        turns = []
        for _ in range(rng.randint(1, 2)):
            question = rng.choice(QUESTIONS) if rng.random() < 0.5 else sentence(3, 6, "?")
            turns += [{"role": "user", "content": question}, {"role": "assistant", "content": sentence(4, 9, ".")}]
        conversations.append(turns)
    tok = BPETokenizer.train("\n".join(m["content"] for c in conversations for m in c), vocab_size=384)
    torch.manual_seed(0)
    # block_size 256, not 64: a two-turn conversation must fit (a longer prompt is a 400, by design)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=256, n_embd=32, n_head=2, n_layer=2))
    rows = [DEFAULT_TEMPLATE.render(c, tok) for c in conversations]  # (ids, loss mask: 1 on the answers)
    width = max(len(ids) for ids, _ in rows) - 1
    x = torch.zeros(len(rows), width, dtype=torch.long)
    y = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (ids, mask) in enumerate(rows):
        x[i, :len(ids) - 1] = torch.tensor(ids[:-1])
        y[i, :len(ids) - 1] = torch.tensor([t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:])])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is fastest, and kind to a busy machine
    try:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(150):
            _, loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    save_model(directory, model.eval(), tok, {"chat_template": DEFAULT_TEMPLATE.to_dict()})
    return directory


class SlowRelay:
    """A TCP relay in front of the real server. Bytes pass unchanged; while ``slow`` is set, the server's bytes
    reach the browser 48 at a time every 40 ms (cut anywhere, mid-line and mid-character), so that a reply
    from a tiny, fast model is still arriving when the test presses Stop. Closing either side closes both."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.slow = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src, dst, to_browser: bool):
        try:
            while data := src.recv(65536):
                slow = to_browser and self.slow.is_set()
                step = 48 if slow else len(data)
                for i in range(0, len(data), step):
                    dst.sendall(data[i:i + step])
                    if slow:
                        time.sleep(0.04)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def close(self):
        self.server.close()


def _server_present() -> bool:
    """sifirdan.serve as a real package (static/ alone makes it a namespace package, whose origin is None)."""
    try:
        spec = importlib.util.find_spec("sifirdan.serve")
    except ImportError:
        return False
    return spec is not None and spec.origin is not None


@pytest.fixture
def sifirdan_serve(tmp_path):
    """A real `sifirdan serve` on a free loopback port; yields its base URL; always terminated."""
    if not _server_present():
        pytest.skip("sifirdan.serve is not there yet (the server half of issue 12); the stand-in test covers the page")
    model_dir = _tiny_checkpoint(tmp_path / "tiny-chat")
    port = _free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sifirdan", "serve", "--model", str(model_dir), "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"sifirdan serve exited with {proc.returncode}:\n{log_path.read_text()}")
                try:
                    with urllib.request.urlopen(url + "/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError, OSError):
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"sifirdan serve did not answer /health within 90 s:\n{log_path.read_text()}")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def test_static_files_ship_with_the_package():
    if not _server_present():
        pytest.skip("sifirdan.serve is not there yet (the server half of issue 12)")
    from importlib.resources import files

    static = files("sifirdan.serve") / "static"
    for name in ("chat.html", "chat.js", "chat.css"):
        assert (static / name).is_file(), name
    html = (static / "chat.html").read_text(encoding="utf-8")
    # everything comes from this server and nothing is inline: the page must work under default-src 'self'
    assert "http://" not in html and "https://" not in html and " style=" not in html and " on" not in html.replace(" only", "")
    assert '<script src="/static/chat.js"' in html and "<script>" not in html


@pytest.fixture
def relay(sifirdan_serve):
    r = SlowRelay(int(sifirdan_serve.rsplit(":", 1)[1]))
    yield r
    r.close()


def test_page_against_sifirdan_serve(browser, sifirdan_serve, relay):
    url = sifirdan_serve
    with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:
        model_id = json.load(r)["data"][0]["id"]
    with urllib.request.urlopen(url + "/", timeout=10) as r:
        assert r.headers.get_content_type() == "text/html"
        assert "default-src 'self'" in r.headers.get("Content-Security-Policy", "")

    page, log = open_page(browser, relay.url + "/")  # the same server, through the relay (see the Stop step)
    bodies: list[dict] = []
    page.on("request", lambda req: req.url.endswith("/v1/chat/completions") and req.method == "POST"
            and bodies.append(json.loads(req.post_data)))
    wait_model(page, model_id)
    open_settings(page)
    page.fill("#temperature", "0")  # greedy: the same conversation every run, so the screenshot is stable
    page.fill("#max-tokens", "40")

    # a Turkish message; the reply streams in (the page shows every piece as it arrives)
    watch_growth(page)
    send(page, TURKISH)
    wait_idle(page)
    first = assistant_texts(page)
    assert len(first) == 1 and first[0], "no reply from the model"
    g = growth(page)
    assert len(g) >= 2 and g == sorted(g), f"the reply did not arrive in pieces: {g}"
    assert page.is_hidden("#error"), page.text_content("#error")
    assert bodies[-1]["messages"] == [{"role": "user", "content": TURKISH}] and bodies[-1]["model"] == model_id

    # Regenerate: the conversation without the last reply is sent again; greedy gives the same reply back
    page.click("#regenerate")
    wait_idle(page)
    assert bodies[-1]["messages"] == [{"role": "user", "content": TURKISH}]
    assert assistant_texts(page) == first and len(user_texts(page)) == 1

    # a second turn: the whole conversation goes to the server
    send(page, "Ankara'yı anlat, lütfen.")
    wait_idle(page)
    assert bodies[-1]["messages"] == [{"role": "user", "content": TURKISH}, {"role": "assistant", "content": first[0]},
                                      {"role": "user", "content": "Ankara'yı anlat, lütfen."}]
    assert len(assistant_texts(page)) == 2 and assistant_texts(page)[1]
    page.locator("#settings summary").click()  # fold the settings for the screenshot
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))

    # Stop while the reply is arriving (the relay delivers it slowly): the partial text stays, marked
    story = "Türk Türk Türk Türk Türk Türk"  # this checkpoint answers it with one of its longest replies
    open_settings(page)
    page.fill("#max-tokens", "2000")  # the server lowers it to its --max-tokens-cap
    relay.slow.set()
    send(page, story)
    page.wait_for_function("""() => { const b = document.querySelectorAll('#messages .msg.assistant .text');
                                      return b.length === 3 && b[2].textContent.length > 0; }""")
    page.click("#stop")
    wait_idle(page)
    relay.slow.clear()
    stopped = page.locator("#messages .msg.assistant").last
    assert stopped.locator(".note").text_content() == "durduruldu"
    kept = stopped.locator(".text").text_content()
    page.wait_for_timeout(300)
    assert stopped.locator(".text").text_content() == kept

    # Regenerate after Stop: the conversation without the partial reply; greedy, so the full reply extends it
    page.click("#regenerate")
    wait_idle(page)
    assert bodies[-1]["messages"][-1] == {"role": "user", "content": story} and len(bodies[-1]["messages"]) == 5
    full = assistant_texts(page)[-1]
    assert len(assistant_texts(page)) == 3 and full.startswith(kept) and len(full) > len(kept), (kept, full)
    assert page.locator("#messages .msg.assistant").last.locator(".note").count() == 0

    # an error from the real server's envelope is shown in the page: a prompt over the 256-token context
    too_long = "Türkiye Cumhuriyeti'nin başkenti Ankara'dır. " * 40
    send(page, too_long)
    page.wait_for_selector("#error:not([hidden])")
    wait_idle(page)
    assert "256" in page.text_content("#error"), page.text_content("#error")
    assert page.input_value("#input") == too_long and len(assistant_texts(page)) == 3
    page.fill("#input", "")

    # model output is text, never HTML (a reply made to order, through the page's real streaming code path)
    sse = "".join("data: " + json.dumps({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": model_id,
                                         "choices": [{"index": 0, "delta": d, "finish_reason": f}]}) + "\n\n"
                  for d, f in [({"role": "assistant"}, None), ({"content": "Tamam: "}, None), ({"content": XSS}, None),
                               ({}, "stop")]) + "data: [DONE]\n\n"
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=sse))
    send(page, "resim göster")
    wait_idle(page)
    page.unroute("**/v1/chat/completions")
    assert assistant_texts(page)[-1] == "Tamam: " + XSS
    assert page.locator("#messages img").count() == 0
    page.wait_for_timeout(200)
    assert page.evaluate("typeof window.__xss") == "undefined"

    # Reset
    page.click("#reset")
    assert page.locator("#messages .msg").count() == 0 and not page.is_enabled("#regenerate")
    log.assert_clean(allow=("status of 400",))  # the deliberate over-long prompt

    # phone width: a conversation, no horizontal scrollbar
    page.set_viewport_size({"width": 375, "height": 700})
    page.fill("#max-tokens", "60")
    send(page, TURKISH)
    wait_idle(page)
    scroll_width, client_width = no_horizontal_scroll(page)
    assert scroll_width <= 375, (scroll_width, client_width)
    page.close()


# ------------------------------------------------------------------------------------------------ another origin
class Elsewhere:
    """Another origin on this machine: a plain page on another 127.0.0.1 port (the same *site* to a browser,
    another origin), as a web page a user happens to visit would be."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = b"<!doctype html><html><head><meta charset='utf-8'><title>elsewhere</title></head><body>hi</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _random_chat_checkpoint(directory: Path) -> Path:
    import torch

    from sifirdan.chat.template import DEFAULT_TEMPLATE
    from sifirdan.checkpoint import save_model
    from sifirdan.model import GPT, GPTConfig
    from sifirdan.tokenizer import BPETokenizer

    tok = BPETokenizer.train(" ".join(QUESTIONS) * 4, vocab_size=300)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_embd=32, n_head=2, n_layer=2)).eval()
    return save_model(directory, model, tok, {"chat_template": DEFAULT_TEMPLATE.to_dict()})


class InProcessServer:
    """sifirdan.serve's app under uvicorn in a thread on a free 127.0.0.1 port, with a record of what arrived
    (method, path, Sec-Fetch-Site) and of every request that reached the scheduler (it would generate)."""

    def __init__(self, model_dir: Path, **config):
        import uvicorn

        from sifirdan.serve import ServerConfig, load_app

        app = load_app(str(model_dir), ServerConfig(model_name="tiny", **config))
        self.arrived: list[tuple] = []
        self.submitted: list[int] = []
        sched = app.state.scheduler
        inner = sched.submit
        sched.submit = lambda rows: self.submitted.append(len(rows)) or inner(rows)

        async def spy(scope, receive, send):
            if scope["type"] == "http":
                h = dict(scope["headers"])
                self.arrived.append((scope["method"], scope["path"], h.get(b"sec-fetch-site", b"").decode(),
                                     h.get(b"content-type", b"").decode()))
            await app(scope, receive, send)

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(spy, log_level="warning", lifespan="on", timeout_graceful_shutdown=3))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)

    def close(self):
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()


ATTACK = """async ([url, body]) => {
  const out = {};
  // what the probe of issue 19 did: no Content-Type (a Blob without a type), no CORS preflight
  const blob = await fetch(url + "/v1/completions", {method: "POST", mode: "no-cors", body: new Blob([body])});
  out.blob = blob.type;
  // a plain string body goes as text/plain, also without a preflight
  await fetch(url + "/v1/completions", {method: "POST", mode: "no-cors", body: body});
  // what a page must do to send JSON: the browser asks first (preflight), and sends only if the server says yes
  try {
    const r = await fetch(url + "/v1/completions", {method: "POST", headers: {"Content-Type": "application/json"}, body: body});
    out.cors = r.status;
    out.text = (await r.json()).choices[0].text;
  } catch (e) {
    out.cors = "blocked";
  }
  return out;
}"""


def test_a_page_on_another_port_cannot_make_the_server_generate(browser, tmp_path):
    """Issue 19, as the probe did it: a page on another 127.0.0.1 port POSTs a Blob in no-cors mode. The
    requests reach the server (checked) and nothing is generated; CORS JSON is refused at the preflight.
    With --allow-origin naming that page's origin, its CORS JSON request is answered (and the no-cors ones
    still are not: 415)."""
    if not _server_present():
        pytest.skip("sifirdan.serve is not there")
    model_dir = _random_chat_checkpoint(tmp_path / "tiny")
    elsewhere = Elsewhere()
    body = json.dumps({"prompt": "Ankara", "max_tokens": 4})
    try:
        for allowed in (frozenset(), frozenset({elsewhere.url})):
            server = InProcessServer(model_dir, allow_origins=allowed)
            try:
                page = browser.new_page()
                try:
                    page.goto(elsewhere.url + "/")
                    out = page.evaluate(ATTACK, [server.url, body])
                finally:
                    page.close()
                posts = [a for a in server.arrived if a[0] == "POST"]
                # the two no-cors posts did arrive, marked by the browser as coming from another origin of the site
                assert [a[2] for a in posts[:2]] == ["same-site", "same-site"], server.arrived
                assert posts[0][3] == "" and posts[1][3].startswith("text/plain"), posts
                assert out["blob"] == "opaque"
                if not allowed:
                    assert out["cors"] == "blocked" and server.submitted == []
                    assert [a[0] for a in server.arrived] == ["POST", "POST", "OPTIONS"], server.arrived
                    assert server.server.config.app is not None
                else:
                    assert out["cors"] == 200 and isinstance(out["text"], str)
                    assert server.submitted == [1]  # the CORS JSON request only
            finally:
                server.close()
    finally:
        elsewhere.close()
