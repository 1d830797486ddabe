"""Benchmark: `sifirdan serve` with continuous batching vs one request at a time, on loopback.

    python bench/serve.py [--clients 32] [--requests 20] [--new-tokens 64] [--threads 1] [--no-append]

A guide-preset model (128/4/4, vocab 500, block 128; random weights: speed does not depend on them) with a BPE
tokenizer trained on a few Turkish sentences, saved to a temporary directory. For each mode the real CLI,
`sifirdan serve --model DIR --port 0 --max-batch N`, runs as a subprocess (the clients' Python work does not
share its GIL): --max-batch 32 (continuous batching) and --max-batch 1 (one request at a time: the others
wait in the queue). Then --clients concurrent clients each send --requests streaming /v1/completions
requests one after another (the load is bounded and the run stops by itself), each for exactly --new-tokens
tokens: ``ignore_eos: true`` (vLLM's extra parameter) so no stop token ends a text early, and
``stream_options.include_usage`` so the server's own count of generated tokens is checked, with
finish_reason "length". Prompts are 10 different Turkish sentences, sampled at temperature 1 with a seed
per request.

Reported per mode: requests/s, generated tokens/s, latency (request sent -> last byte) p50/p99, time to
first token (request sent -> the first chunk with text) p50/p99, errors and wrong lengths.
Goal: continuous throughput >= 5x one-at-a-time and p99 TTFT < 1 s; floor: >= 3x and zero errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import append_results, machine_info, md_table  # noqa: E402

GOAL, FLOOR, TTFT_GOAL = 5.0, 3.0, 1.0
SENTENCES = [
    "Türkiye'nin başkenti Ankara'dır ve Meclis orada toplanır.",
    "Çiğdem ağaçların altında şarkı söylüyor, kuşlar da ona eşlik ediyor.",
    "Öğretmen, öğrencilere ışığın hızını ve yıldızların uzaklığını anlattı.",
    "İstanbul'da güneşli bir gün; boğazda vapurlar ağır ağır geçiyor.",
    "Iğdır'da yağmur yağıyor, çiftçiler tarlalarına sevinçle bakıyor.",
    "Cumhuriyet, milletin kendi kaderini kendi eline almasıdır.",
    "Egemenlik kayıtsız şartsız milletindir.",
    "Bir dil, o dili konuşan milletin hafızasıdır.",
    "Yurtta sulh, cihanda sulh.",
    "Hayatta en hakiki mürşit ilimdir, fendir.",
]


def make_model(directory: Path) -> None:
    import torch

    from sifirdan.chat.template import DEFAULT_TEMPLATE
    from sifirdan.checkpoint import save_model
    from sifirdan.model import GPT, GPTConfig
    from sifirdan.tokenizer import BPETokenizer

    cfg = GPTConfig.from_preset("guide")
    tok = BPETokenizer.train(" ".join(SENTENCES * 30), vocab_size=cfg.vocab_size)
    torch.manual_seed(0)
    save_model(directory, GPT(cfg).eval(), tok, {"chat_template": DEFAULT_TEMPLATE.to_dict()})


class Server:
    """`sifirdan serve` in a subprocess on a free port; stopped with SIGINT (then killed) on exit."""

    def __init__(self, model_dir: Path, max_batch: int, threads: int, max_queue: int):
        cmd = [sys.executable, "-m", "sifirdan", "serve", "--model", str(model_dir), "--port", "0",
               "--max-batch", str(max_batch), "--threads", str(threads), "--max-queue", str(max_queue)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line = self._readline(120)
        m = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
        if not m:
            self.close()
            raise SystemExit(f"sifirdan serve did not start: {line!r}")
        self.url = m.group(1)

    def _readline(self, timeout: float) -> str:
        box: list[str] = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        return box[0] if box else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


async def one_request(client, url: str, body: dict, n_tokens: int) -> dict:
    t0 = time.perf_counter()
    first = None
    usage = finish = None
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return {"error": f"HTTP {r.status_code}: {r.text[:200]}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                obj = json.loads(line[6:])
                for ch in obj.get("choices") or ():
                    if ch.get("text") and first is None:
                        first = time.perf_counter()
                    finish = ch.get("finish_reason") or finish
                if obj.get("usage"):
                    usage = obj["usage"]
    except Exception as e:  # noqa: BLE001 -- a benchmark counts every failure
        return {"error": f"{type(e).__name__}: {e}"}
    t1 = time.perf_counter()
    tokens = usage["completion_tokens"] if usage else 0
    return {"latency": t1 - t0, "ttft": (first or t1) - t0, "tokens": tokens,
            "right": tokens == n_tokens and finish == "length"}


async def load(url: str, clients: int, requests: int, n_tokens: int) -> tuple[list[dict], float]:
    import httpx

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        warm = {"prompt": SENTENCES[0], "max_tokens": 4, "stream": True}
        await one_request(client, url, warm, 4)

        async def worker(c: int) -> list[dict]:
            out = []
            for k in range(requests):
                body = {"prompt": SENTENCES[(c + k) % len(SENTENCES)], "max_tokens": n_tokens,
                        "temperature": 1.0, "seed": c * 1000 + k, "ignore_eos": True, "stream": True,
                        "stream_options": {"include_usage": True}}
                out.append(await one_request(client, url, body, n_tokens))
            return out

        t0 = time.perf_counter()
        results = await asyncio.gather(*(worker(c) for c in range(clients)))
        wall = time.perf_counter() - t0
    return [r for rs in results for r in rs], wall


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=20, help="requests per client, one after another")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=32, help="the continuous-batching server's --max-batch")
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads (default 1)")
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = ap.parse_args()
    total = args.clients * args.requests
    rows, stats = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "guide"
        make_model(model_dir)
        for label, max_batch in ((f"continuous batching (--max-batch {args.max_batch})", args.max_batch),
                                 ("one at a time (--max-batch 1)", 1)):
            with Server(model_dir, max_batch, args.threads, max_queue=args.clients + 8) as server:
                results, wall = asyncio.run(load(server.url, args.clients, args.requests, args.new_tokens))
            ok = [r for r in results if "error" not in r]
            errors = [r["error"] for r in results if "error" in r]
            wrong = sum(1 for r in ok if not r["right"])
            tokens = sum(r["tokens"] for r in ok)
            lat = [r["latency"] for r in ok] or [float("nan")]
            ttft = [r["ttft"] for r in ok] or [float("nan")]
            stats[max_batch] = {"rps": len(ok) / wall, "tps": tokens / wall, "p99_ttft": pct(ttft, 99),
                                "errors": len(errors), "wrong": wrong}
            rows.append([label, f"{len(ok)}/{total}", len(errors), wrong, f"{wall:.1f}", f"{len(ok) / wall:.2f}",
                         f"{tokens / wall:.0f}", f"{pct(lat, 50):.3f}", f"{pct(lat, 99):.3f}",
                         f"{pct(ttft, 50):.3f}", f"{pct(ttft, 99):.3f}"])
            print(f"{label}: {len(ok)}/{total} ok in {wall:.1f} s" + (f"; first error: {errors[0]}" if errors else ""),
                  file=sys.stderr)
    cont, single = stats[args.max_batch], stats[1]
    ratio = cont["tps"] / single["tps"] if single["tps"] else float("inf")
    clean = all(s["errors"] == 0 and s["wrong"] == 0 for s in stats.values())
    goal = ratio >= GOAL and cont["p99_ttft"] < TTFT_GOAL and clean
    floor = ratio >= FLOOR and clean
    verdict = "meets the goal" if goal else ("above the floor, below the goal" if floor else "BELOW THE FLOOR")
    headers = ["server", "ok", "errors", "wrong length", "wall s", "requests/s", "generated tok/s",
               "latency p50 s", "latency p99 s", "TTFT p50 s", "TTFT p99 s"]
    table = md_table(headers, rows)
    notes = (
        f"{args.clients} concurrent clients x {args.requests} streaming /v1/completions requests each, on loopback, "
        f"{args.new_tokens} new tokens per request (ignore_eos; the usage chunk's completion_tokens checked, "
        f"finish_reason length), temperature 1, a seed per request; guide preset (128/4/4, vocab 500, block 128), "
        f"random weights; the server (`sifirdan serve`, a subprocess) with {args.threads} torch thread(s), the clients "
        f"(httpx, asyncio) in the benchmark's process. TTFT: request sent -> first chunk with text. Throughput "
        f"(generated tokens/s) of continuous batching: {ratio:.1f}x one at a time; p99 TTFT "
        f"{cont['p99_ttft']:.3f} s: {verdict} (goal {GOAL:.0f}x and p99 TTFT < {TTFT_GOAL:.0f} s, floor "
        f"{FLOOR:.0f}x and zero errors). One at a time, TTFT includes the wait behind the other clients' "
        "requests in the queue."
    )
    print(table)
    print(notes)
    if not args.no_append:
        append_results("serving: continuous batching vs one at a time (issue 12)", table, notes, machine_info())
    return 0 if floor else 1


if __name__ == "__main__":
    sys.exit(main())
