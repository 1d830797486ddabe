"""Benchmark: `sifirdan demo` end to end through the CLI, as a newcomer runs it; the time of each stage.

    python bench/demo.py [--profiles tiny,default] [--no-append]

Each profile runs `sifirdan demo --out <tmp> --fresh [--tiny|--full]` as a subprocess with an empty token-bin
cache (``SIFIRDAN_CACHE`` in a temporary folder, so tokenization is timed too) and the network proxies pointed
at a dead port. The stage times and results come from the demo's own ``demo.json``; the wall time is the whole
command, interpreter start included. Budgets (issue 13): the default demo <= 10 minutes on a 2-core CPU,
--tiny < 2 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_results, machine_info, md_table  # noqa: E402

STAGES = ("tokenizer", "pretrain", "finetune", "answers", "export")
BUDGET_S = {"tiny": 120, "default": 600, "full": None}


def run_profile(name: str) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"sifirdan-demo-{name}-") as tmp:
        out = Path(tmp) / "demo"
        dead = "http://127.0.0.1:9"
        env = {**os.environ, "SIFIRDAN_CACHE": str(Path(tmp) / "cache"), "HTTP_PROXY": dead, "HTTPS_PROXY": dead,
               "ALL_PROXY": dead, "NO_PROXY": ""}
        flags = {"tiny": ["--tiny"], "full": ["--full"], "default": []}[name]
        cmd = [sys.executable, "-m", "sifirdan", "demo", "--out", str(out), "--fresh", *flags]
        print(f"{name}: {' '.join(cmd[2:])}", flush=True)
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.perf_counter() - t0
        load = (load_before, os.getloadavg()[0])  # other programs on the machine slow every stage down
        if p.returncode != 0:
            sys.exit(f"{name}: the demo failed (exit {p.returncode}):\n{p.stdout[-3000:]}")
        state = json.loads((out / "demo.json").read_text(encoding="utf-8"))
        summary = p.stdout[p.stdout.rindex("summary\n-------"):]
        print(summary, flush=True)
        return {"wall": wall, "stages": state["stages"], "summary": summary, "load": load}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", default="tiny,default", help="comma list of tiny, default, full")
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = ap.parse_args(argv)
    info = machine_info()
    print(info, flush=True)
    rows, notes = [], []
    for name in args.profiles.split(","):
        r = run_profile(name)
        s = r["stages"]
        pre, ans, exp = s["pretrain"], s["answers"], s["export"]
        budget = BUDGET_S[name]
        verdict = "" if budget is None else (" (within)" if r["wall"] <= budget else " (OVER)")
        rows.append([
            name, *(f"{s[k]['seconds']:.0f}" for k in STAGES), f"{r['wall']:.0f}",
            "-" if budget is None else f"{budget}{verdict}",
            f"{pre['parameters']:,}", f"{pre['steps']}", f"{pre['val_bits_per_char']:.3f}",
            f"{ans['ended_rate']:.0%} / {ans['leak_rate']:.0%} / {ans['f1']:.3f}",
            "n/a" if exp["logits_max_abs_diff"] is None else f"{exp['logits_max_abs_diff']:.1e}",
            f"{r['load'][0]:.1f} -> {r['load'][1]:.1f}",
        ])
    table = md_table(["profile", *(f"{k} s" for k in STAGES), "whole command s", "budget s", "parameters",
                      "pretrain steps", "val bits/char", "ended / leaks / F1", "HF logit diff",
                      "load (1-min avg, start -> end)"], rows)
    print(table)
    notes.append(
        "`python bench/demo.py`: `sifirdan demo --fresh [--tiny]` as a subprocess, an empty token-bin cache (so "
        "tokenization is timed), proxies pointed at a dead port. Stage times from the demo's demo.json; 'whole "
        "command' is the subprocess's wall time (interpreter start and imports included). val bits/char: every "
        "token of the standard val split (Nutuk, last 10 % after dedup). Answers: the 30 held-out Nutuk QA "
        "questions, greedy. HF logit diff: the exported model reloaded by transformers vs ours, fp32. Load: the machine's "
        "1-minute load average before and after the command (2 cores: above 2, other programs shared them)."
    )
    if not args.no_append:
        append_results("demo: stage times through `sifirdan demo` (issue 13)", table, " ".join(notes), info)


if __name__ == "__main__":
    main()
