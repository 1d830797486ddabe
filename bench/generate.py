"""Benchmark: generation speed with the KV cache vs recomputing every step (the guide's way).

    python bench/generate.py [--new-tokens 256] [--threads 1] [--no-append]

For the ``guide`` (128/4/4) and ``small`` (256/8/6) presets, vocab 500, random init (speed does not depend
on the weights), block_size raised to 512 so that 32 prompt + 256 new = 288 tokens fit without a crop:
* tokens/s of greedy generation with the cache and without it (``use_cache=False``: the whole context is
  run again for each token; it computes only the last position's logits, so it is a stricter reference than
  the guide's code, which computes logits for every position), and the speed-up;
* first-token latency (prefill + one sampling step) with the cache;
* throughput of a batch of 8 prompts of different lengths (left-padded) with the cache;
* peak RSS of the process.
Both sides run in this process on the same model; the median of --repeats runs is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench._common import append_results, machine_info, md_table, peak_rss_mb  # noqa: E402
from sifirdan.generate import Engine, GenerationConfig  # noqa: E402
from sifirdan.model import GPT, GPTConfig  # noqa: E402
from sifirdan.tokenizer import DEFAULT_SPECIAL_TOKENS, BPETokenizer  # noqa: E402

GOAL, FLOOR = 5.0, 3.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a 1-token step is too small to split)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--presets", nargs="+", default=["guide", "small"])
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rss_start = peak_rss_mb()  # python + torch loaded: the floor under every number below
    # speed needs no merges: the 256 byte tokens + the special tokens (the model still has 500 ids)
    tok = BPETokenizer(special_tokens={name: 256 + i for i, name in enumerate(DEFAULT_SPECIAL_TOKENS)})
    gen = torch.Generator().manual_seed(0)
    rows, ratios = [], {}
    for preset in args.presets:
        torch.manual_seed(0)
        model = GPT(GPTConfig.from_preset(preset, block_size=512, vocab_size=500, dropout=0.0)).to(args.device).eval()
        engine = Engine(model, tok)
        prompt = torch.randint(0, 256, (args.prompt_tokens,), generator=gen).tolist()
        lens = [args.prompt_tokens * k // 8 + 4 for k in range(1, 9)]  # 8 prompts of 8..36 tokens (for 32)
        batch = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in lens]
        cfg = GenerationConfig(max_new_tokens=args.new_tokens, temperature=0.0, stop_token_ids=())
        engine.generate_ids(prompt, GenerationConfig(max_new_tokens=8, temperature=0.0))  # warm-up

        def timed(fn):
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return statistics.median(times)

        def first_token():
            next(iter(engine.iter_tokens([prompt], cfg)))

        t_cache = timed(lambda: engine.generate_ids(prompt, cfg))
        t_nocache = timed(lambda: engine.generate_ids(prompt, GenerationConfig(**{**vars(cfg), "use_cache": False})))
        t_first = timed(first_token)
        t_batch = timed(lambda: engine.generate_ids(batch, cfg))
        same = engine.generate_ids(prompt, cfg).token_ids == engine.generate_ids(prompt, GenerationConfig(**{**vars(cfg), "use_cache": False})).token_ids
        n = args.new_tokens
        ratios[preset] = t_nocache / t_cache
        rows.append([
            f"{preset} ({model.config.n_embd}/{model.config.n_head}/{model.config.n_layer}, {model.num_parameters() / 1e6:.2f}M)",
            f"{n / t_nocache:.0f}", f"{n / t_cache:.0f}", f"{ratios[preset]:.1f}x", f"{t_first * 1e3:.1f}",
            f"{8 * n / t_batch:.0f}", "yes" if same else "NO",
        ])
        print(f"{preset}: done", file=sys.stderr)
    headers = ["model", "no cache tok/s (guide's way)", "KV cache tok/s", "speed-up", "first token ms",
               "batch of 8 tok/s", "same tokens"]
    table = md_table(headers, rows)
    worst = min(ratios.values())
    verdict = "meets the goal" if worst >= GOAL else ("above the floor, below the goal" if worst >= FLOOR else "BELOW THE FLOOR")
    notes = (
        f"{args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, greedy, block_size 512 (so {args.prompt_tokens + args.new_tokens} "
        f"tokens fit without a crop), random init, vocab 500, device {args.device}, {args.threads} torch thread(s), median of {args.repeats}. The batch "
        f"is 8 prompts of {min(lens)}..{max(lens)} tokens, left-padded. Peak RSS {peak_rss_mb():.0f} MiB "
        f"(of which {rss_start:.0f} MiB is Python + torch before any model). "
        f"Smallest speed-up {worst:.1f}x: {verdict} (goal {GOAL:.0f}x, floor {FLOOR:.0f}x)."
    )
    print(table)
    print(notes)
    if not args.no_append:
        append_results("generation: KV cache vs recompute", table, notes, machine_info())
    return 0 if worst >= FLOOR else 1


if __name__ == "__main__":
    sys.exit(main())
