"""Benchmark anchors: classical compressors on the standard val split, in bits per character.

    pip install pyppmd        # PPMd (variant H, as 7-Zip uses it); only this script needs it
    python bench/compressors.py [--no-append]

The val text is exactly what every `--quality` row and `sifirdan demo` score (Nutuk, dedup, last 10 % of the
characters: ``standard_split(None)``). Two ways, bits/char = 8 x compressed bytes / val characters:
* "val alone": the compressor sees only the val text;
* "after train" (the fair one beside a model, which learns on the train split): the size of train + val compressed
  together minus the size of train alone, i.e. the val text coded by a compressor that has read the train text.
PPMd (variant H, as 7-Zip) at several model orders with 16 MiB and 256 MiB of memory; xz at -9e.
"""

from __future__ import annotations

import argparse
import lzma
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_results, machine_info, md_table  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args(argv)
    from sifirdan.data import standard_split

    info = machine_info()
    print(info)
    train, val, _ = standard_split(None)
    data = val.encode("utf-8")
    prior = train.encode("utf-8")
    chars = len(val)
    rows = []

    def row(name: str, size: int) -> None:
        rows.append([name, f"{size:,}", f"{8 * size / chars:.4f}"])
        print(rows[-1], flush=True)

    def xz(b: bytes) -> int:
        return len(lzma.compress(b, preset=9 | lzma.PRESET_EXTREME))

    row("raw UTF-8", len(data))
    row("xz -9e, val alone", xz(data))
    row("xz -9e, after train", xz(prior + data) - xz(prior))
    try:
        import pyppmd
    except ImportError:
        sys.exit("PPMd needs `pip install pyppmd`")
    for mem_mb in (16, 256):
        for order in (4, 6, 8, 16):
            def ppmd(b: bytes) -> int:
                return len(pyppmd.compress(b, max_order=order, mem_size=mem_mb << 20))

            row(f"PPMd H, order {order}, {mem_mb} MiB, val alone", ppmd(data))
            row(f"PPMd H, order {order}, {mem_mb} MiB, after train", ppmd(prior + data) - ppmd(prior))
    table = md_table(["compressor", "bytes", "bits/char"], rows)
    print(table)
    notes = (f"`python bench/compressors.py`: the standard val split of Nutuk ({chars:,} characters, {len(data):,} "
             "bytes UTF-8), compressed alone and after the train split (sizes of train+val minus train). pyppmd " + getattr(pyppmd, "__version__", "?") + ".")
    if not args.no_append:
        append_results("compressors on the standard val split (the anchors beside the models)", table, notes, info)


if __name__ == "__main__":
    main()
