"""``sifirdan tokenizer {train,encode,decode,stats}``: train a byte-level BPE and use it from the shell."""

from __future__ import annotations

import argparse
import sys

from sifirdan.errors import UserError


def register(subparsers) -> None:
    from sifirdan.cli import options

    p = subparsers.add_parser(
        "tokenizer",
        help="train / use a byte-level BPE tokenizer",
        description="Train a byte-level BPE tokenizer on your text and use it (encode, decode, stats).",
    )
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    t = sub.add_parser("train", help="learn a tokenizer from text files", description="Learn a byte-level BPE tokenizer.")
    t.add_argument("--input", nargs="+", metavar="FILE", help="text files or folders (.txt .md .jsonl .json .csv) or corpus names (`sifirdan data list`); default: nutuk, bundled")
    options.add(t, "--vocab-size", type=int, default=8192)
    t.add_argument("--out", default="tokenizer.json", metavar="PATH", help="the tokenizer file to write, once "
                   "training has succeeded (default: ./tokenizer.json)")
    t.add_argument(
        "--special-tokens", nargs="*", metavar="TOKEN", default=None,
        help="special tokens, given ids after the merges; the flag alone: none (default: <|endoftext|> <PAD> <INST> "
        "</INST> <RESP> </RESP>)",
    )
    t.add_argument("--pre-tokenizer", choices=("turkish", "llama.cpp"), default="turkish",
                   help="the regex that cuts text into pieces before BPE: turkish (sifirdan's: apostrophe suffixes "
                   "and digit groups of three) or llama.cpp (llama.cpp's own Turkish one, 'ufakzeka': digits one "
                   "by one), with which llama.cpp, Ollama and LM Studio split text exactly as sifirdan does after "
                   "`sifirdan export gguf` (default: turkish)")
    options.add(t, "--errors", default="strict")
    options.add(t, "--text-field", default="text")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("encode", help="text -> ids", description="Print the token ids of a text, space-separated "
                       "(from --text or --input).")
    options.add(e, "--tokenizer", required=True)
    src = e.add_mutually_exclusive_group(required=True)
    options.add(src, "--text")
    src.add_argument("--input", metavar="FILE", help="a text file to encode (.txt as it is; .jsonl/.json/.csv: the "
                     "--text-field of each record)")
    e.add_argument("--allow-special", action="store_true", help="turn special-token text such as <|endoftext|> into its id")
    options.add(e, "--errors", default="strict")
    options.add(e, "--text-field", default="text")
    e.set_defaults(func=cmd_encode)

    d = sub.add_parser("decode", help="ids -> text", description="Print the text of token ids (from --ids, --input "
                       "or stdin). On a terminal a final newline is added; piped or redirected, the output is exactly "
                       "the decoded bytes.")
    options.add(d, "--tokenizer", required=True)
    src = d.add_mutually_exclusive_group()
    src.add_argument("--ids", metavar='"1 2 3"', help="token ids separated by spaces or commas")
    src.add_argument("--input", metavar="FILE", help="a file of token ids separated by spaces, commas or newlines")
    d.set_defaults(func=cmd_decode)

    s = sub.add_parser("stats", help="how well a tokenizer compresses a text", description="Chars/token, bytes/token and the longest tokens.")
    options.add(s, "--tokenizer", required=True)
    s.add_argument("--input", required=True, nargs="+", metavar="FILE", help="text files, folders or corpus names "
                   "(`sifirdan data list`) to measure on")
    options.add(s, "--errors", default="strict")
    options.add(s, "--text-field", default="text")
    s.add_argument("--top", type=int, default=20, metavar="K", help="how many of the longest tokens to show (default: 20)")
    s.set_defaults(func=cmd_stats)


def _visible(b: bytes) -> str:
    """A token shown readably: its text with spaces as ␣ and control characters escaped."""
    from sifirdan.tokenizer.base import bytes_to_text

    text = bytes_to_text(b)
    shown = repr(text)[1:-1].replace(" ", "␣")
    return shown


def cmd_train(args) -> int:
    import time

    from sifirdan import notes
    from sifirdan.data.corpus import DEFAULT_CORPUS_NAME, default_corpus, iter_texts
    from sifirdan.tokenizer import BPETokenizer
    from sifirdan.tokenizer.bpe import check_train_args
    from sifirdan.tokenizer.pattern import PRE_TOKENIZERS

    check_train_args(args.vocab_size, args.special_tokens)  # before reading any text
    notes.c_extensions([notes.TOKENIZER_CORE])
    if args.input:
        texts = iter_texts(args.input, errors=args.errors, text_field=args.text_field)
        source = ", ".join(args.input)
    else:
        docs = default_corpus()
        chars = sum(map(len, docs))
        print(
            f"no --input given: training on the default corpus, {DEFAULT_CORPUS_NAME} "
            f"({len(docs)} text(s), {chars / 1e6:.2f} M characters; `sifirdan data list` shows the others)",
            file=sys.stderr,
        )
        texts = docs
        source = DEFAULT_CORPUS_NAME
    t0 = time.perf_counter()
    with notes.warnings_as_notes():  # e.g. "stopped at vocab size N": one line, not Python's two
        tok = BPETokenizer.train(texts, args.vocab_size, special_tokens=args.special_tokens, verbose=not args.quiet,
                                 pattern=PRE_TOKENIZERS[args.pre_tokenizer])
    seconds = time.perf_counter() - t0
    path = tok.save(args.out)  # only now, after training succeeded
    st = tok.train_stats
    print(f"trained on {source}: {st['chars']:,} characters, {st['pieces']:,} pre-tokens ({st['unique_pieces']:,} distinct)")
    print(
        f"vocab size {tok.vocab_size} (asked {args.vocab_size}), {st['merges']} merges, "
        f"{len(tok.special_tokens)} special tokens, {seconds:.2f} s"
    )
    print(f"chars/token on the training text: {st['chars_per_token']:.3f}")
    print(f"saved {path}")
    return 0


def _load(path):
    from sifirdan.tokenizer import BPETokenizer

    return BPETokenizer.load(path)


def cmd_encode(args) -> int:
    tok = _load(args.tokenizer)
    allowed = "all" if args.allow_special else ()
    out = sys.stdout
    if args.text is not None:
        out.write(" ".join(map(str, tok.encode(args.text, allowed_special=allowed))) + "\n")
        return 0
    from sifirdan.data.corpus import iter_texts

    first = True
    for text in iter_texts([args.input], errors=args.errors, text_field=args.text_field):
        ids = tok.encode(text, allowed_special=allowed)
        if ids:
            out.write(("" if first else " ") + " ".join(map(str, ids)))
            first = False
    out.write("\n")
    return 0


def cmd_decode(args) -> int:
    tok = _load(args.tokenizer)
    if args.ids is not None:
        raw, where = args.ids, "--ids"
    elif args.input is not None:
        from pathlib import Path

        p = Path(args.input)
        if not p.is_file():
            raise UserError(f"input {p} does not exist; check the path")
        raw, where = p.read_text(encoding="utf-8", errors="replace"), str(p)
    else:
        if sys.stdin.isatty():
            raise UserError("no ids given; pass --ids \"1 2 3\", --input FILE, or pipe ids on stdin")
        raw, where = sys.stdin.read(), "stdin"
    ids = []
    for word in raw.replace(",", " ").split():
        try:
            ids.append(int(word))
        except ValueError:
            raise UserError(f"{where} holds {word!r}, which is not a token id; give integers separated by spaces") from None
    data = tok.decode_bytes(ids)
    if sys.stdout.isatty() and not data.endswith(b"\n"):
        data += b"\n"  # a terminal: the shell prompt goes on a line of its own
    sys.stdout.flush()
    # piped or redirected: the raw bytes and nothing else, lossless (also for ids that end inside a character)
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0


def cmd_stats(args) -> int:
    from sifirdan.data.corpus import iter_texts

    tok = _load(args.tokenizer)
    chars = nbytes = ntok = 0
    for text in iter_texts(args.input, errors=args.errors, text_field=args.text_field):
        chars += len(text)
        nbytes += len(text.encode("utf-8", "surrogatepass"))
        ntok += len(tok.encode(text))
    if ntok == 0:
        raise UserError("the input is empty; pass a file with some text in it")
    print(f"tokenizer: {args.tokenizer} (vocab size {tok.vocab_size}, {len(tok.merge_list)} merges, {len(tok.special_tokens)} special tokens)")
    print(f"text: {chars:,} characters, {nbytes:,} bytes -> {ntok:,} tokens")
    print(f"chars/token: {chars / ntok:.3f}")
    print(f"bytes/token: {nbytes / ntok:.3f}")
    longest = sorted(tok.vocab.items(), key=lambda kv: (-len(kv[1]), kv[0]))[: max(args.top, 0)]
    if longest:
        print(f"{len(longest)} longest tokens (␣ = space):")
        for i, b in longest:
            print(f"  {i:>6}  {len(b):>3} bytes  {_visible(b)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """A parser with only this command (handy for tests and for trying it alone)."""
    parser = argparse.ArgumentParser(prog="sifirdan")
    register(parser.add_subparsers(dest="command"))
    return parser
