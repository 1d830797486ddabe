"""Benchmark: prefill and decode speed of `sifirdan generate`'s engine against llama.cpp on the same model.

    python bench/gguf_speed.py [--threads 1] [--batch 8] [--repeats 3] [--profile] [--no-append]

For the ``guide`` preset (128/4/4, vocab 500) and sifirdan's default model (GPTConfig(): 128/4/4, vocab 4096,
LM-head bias), random init (speed does not depend on the weights; the tokenizer is trained on Nutuk's train
split for the vocabulary size, since llama.cpp needs merges), each exported with `sifirdan export gguf`
(f32) and run, in this one process, by:

* sifirdan: ``Engine.generate_ids`` / ``iter_tokens`` (what `sifirdan generate` calls), greedy, the KV cache;
* llama.cpp: llama-cpp-python's low-level API (``llama_decode`` on a ``llama_batch``, greedy argmax of
  ``llama_get_logits_ith`` in numpy): the loop a llama.cpp client runs, with the same thread count.

Prefill: tokens/s of reading a ``--prompt-tokens`` prompt until the first logits. Decode: tokens/s of each
further token (prompt + ``block_size - prompt`` new tokens: the context fills, nothing is cropped). Batched:
``--batch`` prompts of the same length at once (sifirdan: one batch; llama.cpp: one sequence id each). Median
of ``--repeats``. ``--profile`` adds where sifirdan's time per decoded token goes (cProfile, single stream).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench._common import append_results, machine_info, md_table  # noqa: E402
from sifirdan import checkpoint as ckpt  # noqa: E402
from sifirdan.generate import Engine, GenerationConfig  # noqa: E402
from sifirdan.model import GPT, GPTConfig  # noqa: E402
from sifirdan.tokenizer import BPETokenizer  # noqa: E402


def _models():
    return {
        "guide": GPTConfig.from_preset("guide", dropout=0.0),
        "default": GPTConfig(),
    }


class LlamaCpp:
    """One llama.cpp context for ``n_seq`` sequences of up to ``n_ctx`` tokens each, driven by llama_decode."""

    def __init__(self, path: Path, n_ctx: int, n_seq: int, threads: int):
        import llama_cpp as L

        self.L = L
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx * n_seq
        cp.n_batch = n_ctx * n_seq
        cp.n_ubatch = n_ctx * n_seq
        cp.n_seq_max = n_seq
        cp.n_threads = threads
        cp.n_threads_batch = threads
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.batch = L.llama_batch_init(n_ctx * n_seq, 0, n_seq)

    def clear(self):
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)

    def decode(self, rows: list[tuple[int, list[int], int]]) -> list[int]:
        """``rows``: (sequence id, tokens, first position). Runs them in one llama_decode; returns each row's
        greedy next token (the argmax of its last position's logits)."""
        b = self.batch
        n = 0
        last = []
        for seq, tokens, pos in rows:
            for k, t in enumerate(tokens):
                b.token[n] = t
                b.pos[n] = pos + k
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = seq
                b.logits[n] = k == len(tokens) - 1
                n += 1
            last.append(n - 1)
        b.n_tokens = n
        if self.L.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        out = []
        for i in last:
            ptr = self.L.llama_get_logits_ith(self.ctx, i)
            logits = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,))
            out.append(int(logits.argmax()))
        return out

    def generate(self, prompts: list[list[int]], n_new: int) -> tuple[float, float, list[list[int]]]:
        """(prefill seconds, decode seconds, tokens) for greedy generation of ``n_new`` tokens per prompt."""
        self.clear()
        t0 = time.perf_counter()
        nxt = self.decode([(s, p, 0) for s, p in enumerate(prompts)])
        t1 = time.perf_counter()
        out = [[t] for t in nxt]
        for step in range(1, n_new):
            nxt = self.decode([(s, [out[s][-1]], len(p) + step - 1) for s, p in enumerate(prompts)])
            for s, t in enumerate(nxt):
                out[s].append(t)
        return t1 - t0, time.perf_counter() - t1, out

    def close(self):
        L = self.L
        L.llama_batch_free(self.batch)
        L.llama_free(self.ctx)
        L.llama_model_free(self.model)


def ours(engine: Engine, prompts: list[list[int]], n_new: int) -> tuple[float, float, list[list[int]]]:
    """(prefill seconds, decode seconds, tokens): the first token event ends the prefill (as llama.cpp's first
    logits do), the rest is decode."""
    cfg = GenerationConfig(max_new_tokens=n_new, temperature=0.0, stop_token_ids=())
    out = [[] for _ in prompts]
    t0 = time.perf_counter()
    t1 = None
    for ev in engine.iter_tokens(prompts, cfg):
        if t1 is None:
            t1 = time.perf_counter()
        out[ev.row].append(ev.token_id)
    return t1 - t0, time.perf_counter() - t1, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="threads for both (torch and llama.cpp; default 1)")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=list(_models()))
    ap.add_argument("--profile", action="store_true", help="also profile sifirdan's single-stream decode (cProfile)")
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = ap.parse_args()
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        sys.exit("llama-cpp-python is not installed: pip install llama-cpp-python==0.3.36 (builds llama.cpp, 10-25 min)")
    from sifirdan.interop.gguf import export_gguf

    torch.set_num_threads(args.threads)
    from sifirdan.data.split import iter_train_texts

    tokenizers = {}  # llama.cpp loads no BPE tokenizer without merges: a real one per vocabulary size
    gen = torch.Generator().manual_seed(0)
    rows, profiles = [], {}
    tmp = Path(tempfile.mkdtemp(prefix="gguf_speed_"))
    for name in args.models:
        config = _models()[name]
        torch.manual_seed(0)
        model = GPT(config).eval()
        if config.lm_head_bias:  # a non-zero head bias, as a trained default model has (the export folds it)
            with torch.no_grad():
                model.lm_head.bias.normal_(0, 0.5)
        if config.vocab_size not in tokenizers:
            tokenizers[config.vocab_size] = BPETokenizer.train(iter_train_texts(None), vocab_size=config.vocab_size)
        ck = ckpt.save_model(tmp / f"ck-{name}", model, tokenizers[config.vocab_size], {})
        (tmp / name).mkdir()
        path = tmp / name / "model.gguf"
        export_gguf(ck, path, "f32", measure_text=[])
        model, tokenizer = ckpt.load_model(ck)
        engine = Engine(model, tokenizer)
        P = args.prompt_tokens
        n_new = config.block_size - P
        single = [torch.randint(0, 256, (P,), generator=gen).tolist()]
        batch = [torch.randint(0, 256, (P,), generator=gen).tolist() for _ in range(args.batch)]
        llama = LlamaCpp(path, config.block_size, args.batch, args.threads)
        ours(engine, single, 4)  # warm-up both
        llama.generate(single, 4)
        results = {}
        for label, prompts in (("single", single), (f"batch {args.batch}", batch)):
            for who, fn in (("sifirdan", lambda p: ours(engine, p, n_new)), ("llama.cpp", lambda p: llama.generate(p, n_new))):
                runs = [fn(prompts) for _ in range(args.repeats)]
                pre = statistics.median(r[0] for r in runs)
                dec = statistics.median(r[1] for r in runs)
                results[(label, who)] = (len(prompts) * P / pre, len(prompts) * (n_new - 1) / dec, runs[0][2])
        same = results[("single", "sifirdan")][2] == results[("single", "llama.cpp")][2]
        for label in ("single", f"batch {args.batch}"):
            o, lc = results[(label, "sifirdan")], results[(label, "llama.cpp")]
            rows.append([f"{name} ({config.n_embd}/{config.n_head}/{config.n_layer}, v{config.vocab_size}, "
                         f"{model.num_parameters() / 1e6:.2f}M)", label,
                         f"{o[0]:,.0f}", f"{lc[0]:,.0f}", f"{lc[0] / o[0]:.1f}x",
                         f"{o[1]:,.0f}", f"{lc[1]:,.0f}", f"{lc[1] / o[1]:.1f}x",
                         "yes" if label == "single" and same else ("-" if label != "single" else "NO")])
        if args.profile:
            profiles[name] = _profile(engine, single, n_new)
        llama.close()
        print(f"{name}: done", file=sys.stderr)
    headers = ["model", "stream", "prefill tok/s sifirdan", "prefill tok/s llama.cpp", "llama.cpp / sifirdan",
               "decode tok/s sifirdan", "decode tok/s llama.cpp", "llama.cpp / sifirdan", "same greedy tokens"]
    table = md_table(headers, rows)
    notes = (f"{args.prompt_tokens}-token prompt, then greedy decoding until the context (block_size) is full; "
             f"{args.threads} thread(s) for both (torch.set_num_threads, llama.cpp n_threads / n_threads_batch); random "
             f"init, f32 GGUF from `sifirdan export gguf`; batched: {args.batch} prompts of {args.prompt_tokens} tokens "
             f"(sifirdan: one batch through Engine.iter_tokens; llama.cpp: one llama_decode per step with {args.batch} "
             f"sequence ids); median of {args.repeats}. Same greedy tokens: sifirdan's and llama.cpp's single-stream "
             "tokens compared (llama.cpp's GELU is the tanh approximation, so a near tie may differ).")
    print(table)
    print(notes)
    for name, text in profiles.items():
        print(f"\n### where sifirdan's decode time goes ({name}, single stream)\n{text}")
    if not args.no_append:
        body = table
        for name, text in profiles.items():
            body += f"\n\nsifirdan single-stream decode profile, {name} (cProfile, per decoded token):\n\n{text}"
        append_results("gguf: sifirdan's engine vs llama.cpp, prefill and decode (issue 22)", body, notes, machine_info())
    return 0


def _profile(engine, prompts, n_new) -> str:
    """The functions taking the most time per decoded token (cProfile tottime), as a markdown table."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    ours(engine, prompts, n_new)
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    rows = []
    total = sum(v[2] for v in stats.stats.values())
    for (file, line, func), (cc, nc, tt, ct, _) in sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:12]:
        where = f"{Path(file).name}:{line}({func})" if file != "~" else func
        rows.append([where, f"{nc}", f"{tt / n_new * 1e6:.0f}", f"{100 * tt / total:.0f} %"])
    return (f"wall {wall / n_new * 1e3:.2f} ms per token under the profiler\n\n"
            + md_table(["function", "calls", "µs per token (own time)", "share"], rows))


if __name__ == "__main__":
    sys.exit(main())
