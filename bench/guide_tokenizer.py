"""Benchmark: what the guide's tokenizer loses of a text, and what sifirdan's loses (nothing).

    python bench/guide_tokenizer.py [--data nutuk.txt]     # a few seconds; appends to bench/RESULTS.md

The guide's tokenizer (GUIDE.md §2) starts with ``re.findall(r'\\S+', text.lower())``: it lowercases the text,
splits it on whitespace and learns merges inside the words, so what it gives back is the lowercased words
joined by single spaces, with ``<UNK>`` for a character its training text never had. What is lost does not
depend on the merges (they only group characters inside a word), so no BPE training of the guide's kind is
needed to measure it. On the standard split (dedup, last 10 % of characters = val), characters of the val
text that the round trip does not give back, by cause:

* capitals: every character that ``str.lower()`` changes (``İ`` becomes two characters, ``i`` + U+0307);
* whitespace: newlines, tabs and runs of spaces become one space; whitespace at the start or end is dropped;
* unknown: a character whose lowercase form is not in the lowercased train split becomes ``<UNK>``.

sifirdan's tokenizer (vocab 500, trained on the train split) is checked on the same text: ``decode(encode(val))``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_results, md_table  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "nutuk.txt"


def guide_losses(train: str, val: str) -> dict:
    known = set(train.lower())
    capitals = sum(1 for c in val if c.lower() != c)
    unknown_chars = sorted({c for c in val if not c.isspace() and any(ch not in known for ch in c.lower())})
    unknown = sum(1 for c in val if c in unknown_chars)
    whitespace = 0
    pieces = re.findall(r"\s+|\S+", val)
    for i, p in enumerate(pieces):
        if not p[0].isspace():
            continue
        if i == 0 or i == len(pieces) - 1:  # leading / trailing whitespace: dropped
            whitespace += len(p)
        else:  # between two words: one ' ' comes back
            whitespace += len(p) - 1 if " " in p else len(p)
    words = re.findall(r"\S+", val.lower())
    decoded = " ".join("".join(c if c in known else "<UNK>" for c in w) for w in words)
    return {"capitals": capitals, "whitespace": whitespace, "unknown": unknown, "unknown_chars": unknown_chars,
            "dotted_capital_I": val.count("İ"), "round_trip_equal": decoded == val, "decoded_chars": len(decoded)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--no-append", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = p.parse_args()
    from sifirdan.data import standard_split
    from sifirdan.tokenizer import BPETokenizer

    train, val, _ = standard_split(Path(args.data))
    g = guide_losses(train, val)
    tok = BPETokenizer.train(train, vocab_size=500)
    ours_equal = tok.decode(tok.encode(val)) == val
    n = len(val)
    lost = g["capitals"] + g["whitespace"] + g["unknown"]
    rows = [
        ["capitals (changed by lower())", f"{g['capitals']:,}", f"{100 * g['capitals'] / n:.2f} %", "0"],
        ["whitespace (newlines, tabs, runs of spaces, ends)", f"{g['whitespace']:,}", f"{100 * g['whitespace'] / n:.2f} %", "0"],
        [f"unknown -> <UNK> ({' '.join(map(repr, g['unknown_chars'])) or 'none'})", f"{g['unknown']:,}",
         f"{100 * g['unknown'] / n:.3f} %", "0"],
        ["total not given back", f"{lost:,}", f"{100 * lost / n:.2f} %", "0"],
        ["decode(encode(val)) == val", str(g["round_trip_equal"]), "", str(ours_equal)],
    ]
    table = md_table(["val characters the round trip loses", "guide's tokenizer", "share of val", "sifirdan"], rows)
    notes = (
        f"Corpus {Path(args.data).name}, standard split: val = {n:,} characters. The guide's tokenizer: "
        "re.findall(r'\\S+', text.lower()), characters from the lowercased train split, <UNK> for others, words "
        f"joined by one space on decode ({g['decoded_chars']:,} characters come back). Each 'İ' "
        f"({g['dotted_capital_I']:,} in val) lowercases to two characters. sifirdan: byte-level BPE, vocab 500, "
        "trained on the train split."
    )
    print(table)
    print()
    print(notes)
    if not args.no_append:
        append_results("the guide's tokenizer vs sifirdan's: what a round trip loses", table, notes)


if __name__ == "__main__":
    main()
