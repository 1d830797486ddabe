"""``sifirdan data list`` / ``sifirdan data show NAME``: the corpora a name can stand for (``--data NAME``).

    sifirdan data list                 # name, kind, size, license, source; whether it is available here
    sifirdan data show nutuk --n 3     # three passages of the text
    sifirdan data show nutuk-qa --n 3  # three question/answer pairs
"""

from __future__ import annotations

import sys

from sifirdan.errors import UserError

SHOW_CHARS = 300  # one passage of a text corpus, in characters


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="the bundled and named corpora: list them, show examples",
                              description="Corpora that a name can stand for wherever a command takes --data "
                              "(or tokenizer train --input): nutuk and nutuk-qa ship inside sifirdan; ataturk "
                              "needs its pip package.")
    sub = p.add_subparsers(dest="data_command", metavar="{list,show}")
    lst = sub.add_parser("list", help="name, kind, size, license and source of each corpus")
    lst.set_defaults(func=cmd_list)
    show = sub.add_parser("show", help="print a few examples of one corpus")
    show.add_argument("name", help="the corpus name (see `sifirdan data list`)")
    show.add_argument("--n", type=int, default=3, metavar="N", help="how many examples to show (default: 3)")
    show.set_defaults(func=cmd_show)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _size(c) -> str:
    if c.kind == "instructions":
        return f"{len(c.records()):,} pairs"
    docs = c.documents()
    chars = sum(map(len, docs))
    return f"{chars / 1e6:.2f} M chars" + (f", {len(docs)} texts" if len(docs) > 1 else "")


def cmd_list(args) -> int:
    from sifirdan.data import catalog

    rows = []
    for c in catalog.CORPORA.values():
        try:
            size = _size(c)
        except UserError:
            size = f"not installed: {c.install}"
        default = {catalog.DEFAULT_TEXT: " (default text)", catalog.DEFAULT_INSTRUCTIONS: " (default pairs)"}
        rows.append((c.name + default.get(c.name, ""), c.kind, size, c.license, c.source))
    heads = ("name", "kind", "size", "license", "source")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    for r in (heads, *rows):
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    print("\nuse a name wherever a command takes --data (e.g. `sifirdan pretrain --data ataturk`); "
          "attribution: sifirdan/data/bundled/SOURCES.md")
    return 0


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SHOW_CHARS else text[: SHOW_CHARS - 1] + "…"


def cmd_show(args) -> int:
    from sifirdan.data import catalog

    if args.n < 1:
        raise UserError(f"--n must be >= 1, got {args.n}")
    c = catalog.get(args.name)
    print(f"{c.name}: {c.title}\nlicense: {c.license}; source: {c.source}\n")
    if c.kind == "instructions":
        records = c.records()
        step = max(1, len(records) // args.n)
        for k, rec in enumerate(records[::step][: args.n], start=1):
            question = rec["instruction"] + (f"\n{rec['input']}" if rec.get("input") else "")
            print(f"[{k}] soru:  {_one_line(question)}\n    cevap: {_one_line(rec['output'])}")
        return 0
    # a text corpus: passages spread evenly over it, each from a line start
    text = "\n\n".join(c.documents())
    n = min(args.n, max(1, len(text) // SHOW_CHARS))
    for k in range(n):
        at = len(text) * k // n
        start = text.rfind("\n", 0, at) + 1 if at else 0
        print(f"[{k + 1}] (character {start:,} of {len(text):,})\n    {_one_line(text[start:start + SHOW_CHARS * 2])}")
    sys.stdout.flush()
    return 0
