"""Benchmark: sifirdan's BPE tokenizer against Hugging Face ``tokenizers`` on Nutuk.

    python bench/tokenizer.py          # ~30 s: training at vocab 500 / 8192, full-corpus encode, chars/token
    python bench/tokenizer.py --big    # + peak RSS of training on a ~100 MB corpus (written to /tmp, deleted)

Both run in this one process, on the same text: Nutuk's first 90 % of characters (train split); chars/token is
measured on the last 10 % (val split). Hugging Face trains with the same pre-tokenizer regex (Split + ByteLevel
without its own regex); it is timed both on the text as one string and line by line, and the faster counts.
Encoding times use freshly loaded tokenizers (cold caches) and the *same*
tokenizer.json for both libraries (their ids are identical; the script checks). Each time is the best of
--repeat runs. The table is printed and appended, dated, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "nutuk.txt"
RESULTS = ROOT / "bench" / "RESULTS.md"


def best_of(n, fn):
    best, out = float("inf"), None
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def hf_train(texts: list[str], vocab_size: int, pattern: str):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from sifirdan.tokenizer import DEFAULT_SPECIAL_TOKENS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(DEFAULT_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


BIG_CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from sifirdan.data.corpus import iter_texts
from sifirdan.tokenizer import BPETokenizer
t = time.perf_counter()
tok = BPETokenizer.train(iter_texts([sys.argv[2]]), 8192)
dt = time.perf_counter() - t
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(f"{dt:.3f} {rss:.1f} {tok.train_stats['chars']} {tok.vocab_size}")
"""


def run_big(text: str) -> dict:
    data = text.encode("utf-8")
    copies = -(-100_000_000 // len(data))
    fd, path = tempfile.mkstemp(prefix="sifirdan-bench-", suffix=".txt", dir="/tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for _ in range(copies):
                f.write(data)
                if not data.endswith(b"\n"):
                    f.write(b"\n")
        size = os.path.getsize(path)
        out = subprocess.run([sys.executable, "-c", BIG_CHILD, str(ROOT), path], capture_output=True, text=True, check=True)
        seconds, rss, chars, vocab = out.stdout.split()
        return {"bytes": size, "copies": copies, "seconds": float(seconds), "rss_mib": float(rss), "chars": int(chars), "vocab": int(vocab)}
    finally:
        os.unlink(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", action="store_true", help="also measure peak RSS training on ~100 MB (slow)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-save", action="store_true", help="print only, do not append to bench/RESULTS.md")
    args = ap.parse_args()
    if not DATA.is_file():
        print(f"{DATA} is missing: the benchmark needs Nutuk (../shared/data/nutuk.txt next to the repo)", file=sys.stderr)
        return 2
    import tokenizers

    from sifirdan.tokenizer import BPETokenizer, GPT4_PATTERN, TURKISH_PATTERN
    from sifirdan.tokenizer.bpe import _train_backend
    from sifirdan.tokenizer.train import learn_merges

    backend = "c" if _train_backend("auto") is not learn_merges else "python"
    text = DATA.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    train, val = text[:cut], text[cut:]
    lines = train.splitlines(keepends=True)
    rows = []  # (what, ours, theirs, ratio)
    cpt = []
    tmp = Path(tempfile.mkdtemp(prefix="sifirdan-bench-"))
    for vocab in (500, 8192):
        t_ours, ours = best_of(args.repeat, lambda: BPETokenizer.train(train, vocab))
        # HF gets the faster of two ways to feed it: one string, or line by line (it parallelises over texts)
        t_hf, hf = best_of(args.repeat, lambda: hf_train([train], vocab, TURKISH_PATTERN))
        t_hf = min(t_hf, best_of(args.repeat, lambda: hf_train(lines, vocab, TURKISH_PATTERN))[0])
        rows.append((f"train, vocab {vocab}", t_ours, t_hf))
        path = ours.save(tmp / f"ours-{vocab}.json")
        t_enc, ids = best_of(args.repeat, lambda: BPETokenizer.load(path).encode(train))
        t_hf_enc, enc = best_of(args.repeat, lambda: tokenizers.Tokenizer.from_file(str(path)).encode(train))
        assert enc.ids == ids, "ids differ from Hugging Face tokenizers"
        t_hf_enc = min(t_hf_enc, best_of(args.repeat, lambda: tokenizers.Tokenizer.from_file(str(path)).encode_batch(lines))[0])
        rows.append((f"encode train split, vocab {vocab}", t_enc, t_hf_enc))
        gpt4 = BPETokenizer.train(train, vocab, pattern=GPT4_PATTERN)
        hf_val = len(hf.encode(val).ids)
        cpt.append((vocab, len(val) / len(ours.encode(val)), len(val) / len(gpt4.encode(val)), len(val) / hf_val))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_py, _ = best_of(1, lambda: BPETokenizer.train(train, 8192, backend="python"))
    big = run_big(text) if args.big else None

    lines = []
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines.append(f"## Tokenizer — {now}")
    lines.append("")
    lines.append(
        f"Machine: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"torch {version('torch')}, tokenizers {tokenizers.__version__}; sifirdan backend: {backend}."
    )
    lines.append(f"Data: Nutuk, train split {len(train):,} chars (first 90 %), val split {len(val):,} chars. Best of {args.repeat}.")
    lines.append("")
    lines.append("| task | sifirdan (s) | HF tokenizers (s) | ratio (ours / HF) |")
    lines.append("|---|---:|---:|---:|")
    for what, a, b in rows:
        lines.append(f"| {what} | {a:.3f} | {b:.3f} | {a / b:.2f}× |")
    lines.append(f"| train, vocab 8192, pure-Python reference | {t_py:.3f} | | {t_py / rows[2][2]:.2f}× |")
    lines.append("")
    lines.append("| vocab | chars/token, Turkish pattern | chars/token, GPT-4 pattern | chars/token, HF trainer (Turkish pattern) |")
    lines.append("|---:|---:|---:|---:|")
    for vocab, a, b, c in cpt:
        lines.append(f"| {vocab} | {a:.3f} | {b:.3f} | {c:.3f} |")
    if big:
        lines.append("")
        lines.append(
            f"Big corpus (`--big`): Nutuk × {big['copies']} = {big['bytes'] / 1e6:.0f} MB streamed through iter_texts, "
            f"vocab 8192: {big['seconds']:.1f} s, peak RSS {big['rss_mib']:.0f} MiB (limit 1024)."
        )
    report = "\n".join(lines) + "\n"
    print(report)
    if not args.no_save:
        from sifirdan.fileio import atomic_write_text

        old = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n\nAppended by the scripts in `bench/`; do not edit by hand.\n"
        atomic_write_text(RESULTS, old.rstrip("\n") + "\n\n" + report)
        print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
