"""Benchmark: the pre-training data pipeline (dedup, standard split, token bins, batches) on Nutuk.

    python bench/data.py                # ~2-3 min on 2 cores: Nutuk and Nutuk x100 (~170 MB, built in /tmp, deleted)
    python bench/data.py --copies 20    # a smaller big corpus

What it measures, all in this run:

* Dedup on Nutuk: lines / characters removed, and the val overlap -- the fraction of val lines of >= 40
  characters that also occur in train -- for the standard split with and without dedup.
* Peak RSS of ``prepare_bins`` for Nutuk vs Nutuk x N, dedup on and off, each in a fresh subprocess (so one run's
  memory cannot hide another's). With dedup on the N copies collapse to one (every repeated line is dropped), so
  dedup-off is the run that shows the streaming bound: N times the text, (nearly) the same memory. The reference
  is the RSS of just reading the big file into one Python string, what a non-streaming pipeline starts with.
* A cache hit on the big corpus (hash the input, tokenize nothing) and BatchSampler speed on the memmap.

The table is printed and appended, dated, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
DATA = ROOT.parent / "shared" / "data" / "nutuk.txt"


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark (Linux >= 4.0), so importing torch does not hide what follows."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def child(args: dict) -> dict:
    """One measurement in a fresh process: peak RSS before and after the work."""
    import numpy as np

    from sifirdan.data import DataConfig, prepare_bins
    from sifirdan.tokenizer import BPETokenizer

    tok = BPETokenizer.load(args["tokenizer"])
    import gc

    gc.collect()
    reset = _reset_peak_rss()
    base = _status_mb("VmRSS") if reset else _peak_rss_mb()
    t0 = time.perf_counter()
    if args["mode"] == "read_whole":
        text = Path(args["input"]).read_text(encoding="utf-8")
        out = {"chars": len(text)}
    else:
        bins = prepare_bins(args["input"], tok, DataConfig(dedup=args["dedup"]), cache_dir=args["cache"], progress=False)
        out = {
            "reused": bins.reused,
            "tokens": int(len(bins.train) + len(bins.val)),
            "unique_long_lines": bins.meta["dedup"]["unique_long_lines"],
            "chars_kept": bins.meta["dedup"]["chars"] - bins.meta["dedup"]["chars_removed"],
            "checksum": int(np.asarray(bins.val[-1000:], dtype=np.int64).sum()),
        }
    out.update(seconds=time.perf_counter() - t0, base_rss_mb=base, peak_rss_mb=_peak_rss_mb(), hwm_reset=reset)
    return out


def run_child(args: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(args)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=100, help="size of the big corpus in copies of Nutuk")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to bench/RESULTS.md")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return
    if not DATA.is_file():
        raise SystemExit(f"needs the guide's corpus at {DATA} (../shared/data beside the repo)")

    from sifirdan.data import BatchSampler, DataConfig, iter_train_texts, prepare_bins, standard_split, val_overlap
    from sifirdan.tokenizer import BPETokenizer

    # ------------------------------------------------------------------ dedup and val overlap on Nutuk
    t0 = time.perf_counter()
    train, val, stats = standard_split(DATA)
    t_split = time.perf_counter() - t0
    train_raw, val_raw, _ = standard_split(DATA, DataConfig(dedup=False))
    d = stats["dedup"]
    ov, ov_raw = val_overlap(train, val), val_overlap(train_raw, val_raw)
    dedup_rows = [
        ["lines (all / removed)", f"{d['lines']:,} / {d['lines_removed']:,} ({100 * d['lines_removed'] / d['lines']:.1f}%)"],
        ["chars (all / removed)", f"{d['chars']:,} / {d['chars_removed']:,} ({100 * d['chars_removed'] / d['chars']:.1f}%)"],
        ["unique lines >= 40 chars", f"{d['unique_long_lines']:,}"],
        ["train / val chars (dedup)", f"{stats['train']['n_chars']:,} / {stats['val']['n_chars']:,}"],
        ["val lines >= 40 chars found in train, no dedup", f"{100 * ov_raw:.1f}%"],
        ["val lines >= 40 chars found in train, dedup", f"{100 * ov:.1f}%"],
        ["standard_split time", f"{t_split:.2f} s"],
    ]
    from _common import md_table

    t1 = md_table(["Nutuk (standard split, val_fraction 0.1)", "value"], dedup_rows)
    print(t1, flush=True)

    work = Path(tempfile.mkdtemp(prefix="sifirdan-bench-data-"))
    try:
        tok = BPETokenizer.train(iter_train_texts(DATA), a.vocab_size)
        tok_path = tok.save(work / "tokenizer.json")
        big = work / f"nutuk_x{a.copies}.txt"
        raw = DATA.read_bytes()
        if not raw.endswith(b"\n"):
            raw += b"\n"
        with open(big, "wb") as f:
            for _ in range(a.copies):
                f.write(raw)
        del raw
        big_mb = big.stat().st_size / 1e6
        small_mb = DATA.stat().st_size / 1e6

        runs = []
        for label, path, dedup, mb in [
            ("Nutuk, dedup on", DATA, True, small_mb),
            (f"Nutuk x{a.copies}, dedup on", big, True, big_mb),
            ("Nutuk, dedup off", DATA, False, small_mb),
            (f"Nutuk x{a.copies}, dedup off", big, False, big_mb),
            (f"Nutuk x{a.copies}, dedup off, cache hit", big, False, big_mb),
        ]:
            cache = work / "cache" / ("on" if dedup else "off") / path.name
            r = run_child({"mode": "bins", "input": str(path), "dedup": dedup, "cache": str(cache), "tokenizer": str(tok_path)})
            runs.append((label, mb, r))
            print(f"  {label}: {r}", file=sys.stderr, flush=True)
        ref = run_child({"mode": "read_whole", "input": str(big), "tokenizer": str(tok_path)})

        rows = []
        for label, mb, r in runs:
            rows.append(
                [
                    label,
                    f"{mb:.1f}",
                    f"{r['tokens']:,}",
                    f"{r['unique_long_lines']:,}",
                    "yes" if r["reused"] else "no",
                    f"{r['seconds']:.1f}",
                    f"{mb / r['seconds']:.1f}",
                    f"{r['base_rss_mb']:.0f}",
                    f"{r['peak_rss_mb']:.0f}",
                    f"{r['peak_rss_mb'] - r['base_rss_mb']:.0f}",
                ]
            )
        rows.append(
            [
                f"reference: read Nutuk x{a.copies} into one str",
                f"{big_mb:.1f}",
                "-",
                "-",
                "-",
                f"{ref['seconds']:.1f}",
                f"{big_mb / ref['seconds']:.1f}",
                f"{ref['base_rss_mb']:.0f}",
                f"{ref['peak_rss_mb']:.0f}",
                f"{ref['peak_rss_mb'] - ref['base_rss_mb']:.0f}",
            ]
        )
        t2 = md_table(
            ["prepare_bins (fresh process each)", "input MB", "tokens", "dedup hash set", "cached", "s", "MB/s",
             "RSS before MiB", "peak RSS MiB", "growth MiB"],
            rows,
        )
        print(t2, flush=True)
        small_off = runs[2][2]["peak_rss_mb"] - runs[2][2]["base_rss_mb"]
        big_off = runs[3][2]["peak_rss_mb"] - runs[3][2]["base_rss_mb"]
        ref_growth = ref["peak_rss_mb"] - ref["base_rss_mb"]

        # ------------------------------------------------------------------ batch sampling speed
        bins = prepare_bins(DATA, tok, DataConfig(), cache_dir=work / "cache" / "on" / DATA.name, progress=False)
        sampler = BatchSampler(bins.train, batch_size=32, block_size=256, seed=0)
        n = 300
        t0 = time.perf_counter()
        for _ in range(n):
            sampler.next_batch()
        per_batch_ms = 1000 * (time.perf_counter() - t0) / n
        bpt, cpt = bins.bytes_per_token("val"), bins.chars_per_token("val")
        t3 = md_table(
            ["other", "value"],
            [
                ["dtype / vocab", f"{bins.meta['dtype']} / {bins.meta['vocab_size']}"],
                ["val bytes/token, chars/token", f"{bpt:.3f}, {cpt:.3f}"],
                ["BatchSampler.next_batch (32 x 256, memmap)", f"{per_batch_ms:.3f} ms"],
            ],
        )
        print(t3, flush=True)
        notes = (
            f"Tokenizer: sifirdan BPE, vocab {a.vocab_size}, trained on Nutuk's train split. "
            f"Dedup off: {a.copies}x the input ({big_mb:.0f} MB vs {small_mb:.1f} MB) grew peak RSS by {big_off:.0f} MiB "
            f"vs {small_off:.0f} MiB; reading the big file into one str alone grows it by {ref_growth:.0f} MiB. "
            "Dedup on: every repeated long line is dropped, so the copies collapse to Nutuk plus the short lines "
            "(< 40 chars, always kept) of each copy; the hash set stays at Nutuk's unique lines. "
            + (
                "RSS: 'before' is VmRSS after imports and loading the tokenizer, with the peak mark reset there "
                "(/proc/self/clear_refs); 'peak' is VmHWM at the end; each row is a fresh process."
                if runs[0][2]["hwm_reset"]
                else "RSS: ru_maxrss of a fresh process (peak mark could not be reset: growth below the import peak is hidden)."
            )
        )
        print(notes)
        if not a.no_append:
            from _common import append_results

            path = append_results("data pipeline (dedup, split, token bins)", t1 + "\n\n" + t2 + "\n\n" + t3, notes)
            print(f"appended to {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
