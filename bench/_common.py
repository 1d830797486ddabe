"""Shared helpers for the benchmark scripts in bench/.

Every benchmark prints a markdown table and appends a dated section to bench/RESULTS.md, headed by the
machine it ran on -- numbers without the machine are meaningless, and ratios measured in one run are the
only numbers comparable across machines.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
_HEADER = (
    "# sifirdan benchmark results\n\n"
    "Appended by the scripts in `bench/` (newest last). Absolute numbers depend on the machine and its load;\n"
    "compare the ratios, which each script measures against a reference inside the same run.\n"
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict:
    """Where and with what a benchmark ran: date, CPU, cores, torch threads, versions, accelerator."""
    info = {
        "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "cpu": _cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["device"] = f"cuda: {torch.cuda.get_device_name(0)}"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            info["device"] = "mps"
        else:
            info["device"] = "cpu"
    except ImportError:  # helpers stay usable for torch-free benchmarks (e.g. the tokenizer)
        info["torch"] = "not installed"
        info["device"] = "cpu"
    return info


def machine_line(info: dict | None = None) -> str:
    info = info or machine_info()
    return ", ".join(f"{k}: {v}" for k, v in info.items() if k != "date")


def md_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; floats are printed as given, so format them before passing."""
    cells = [[str(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def append_results(title: str, table_md: str, notes: str = "", info: dict | None = None) -> Path:
    """Append a dated section (title, machine line, table, notes) to bench/RESULTS.md; create it if missing."""
    info = info or machine_info()
    if not RESULTS.exists():
        RESULTS.write_text(_HEADER, encoding="utf-8")
    section = f"\n## {info['date']} — {title}\n\n_Machine: {machine_line(info)}; command: `{' '.join(sys.argv)}`_\n\n{table_md}\n"
    if notes:
        section += f"\n{notes.strip()}\n"
    with open(RESULTS, "a", encoding="utf-8") as f:
        f.write(section)
    return RESULTS
