"""``sifirdan eval``: how well a trained model predicts a text -- every token of it, once.

    sifirdan eval --model runs/nutuk --data held_out.txt
    sifirdan eval --model runs/nutuk --data held_out.txt --json

Reports the loss (nats/token), perplexity = e^loss, bits per byte and per character (comparable across
tokenizers) and the number of tokens scored. The whole text is covered with non-overlapping windows of
block_size tokens (the last window is shifted back to be full; its already-scored targets are skipped).
"""

from __future__ import annotations

import json
import math
import sys

from sifirdan.errors import UserError


def register(subparsers) -> None:
    from sifirdan.cli import options

    p = subparsers.add_parser("eval", help="loss / perplexity / bits per byte of a model on a text",
                              description="Score every token of a text with a trained model.")
    options.add(p, "--model", required=True)
    p.add_argument("--data", nargs="+", metavar="PATH", help="text file(s), folder(s) or corpus names (`sifirdan data list`); default: nutuk, bundled")
    options.add(p, "--json")
    options.add(p, "--batch-size", type=int, default=32)
    options.add(p, "--device", default="auto")
    # fp32 by default, not auto: the numbers a user compares across runs and machines
    options.add(p, "--dtype", default="fp32")
    options.add(p, "--text-field", default="text")
    options.add(p, "--errors", default="strict")
    p.set_defaults(func=run)


def evaluate_text(model, tokenizer, text: str, batch_size: int = 32, device=None, dtype=None) -> dict:
    """Full-coverage evaluation of ``text``; returns loss, perplexity, bits_per_byte, bits_per_char, tokens."""
    import numpy as np
    import torch

    from sifirdan.data import bits_per_unit, iter_eval_batches
    from sifirdan.model.gpt import IGNORE_INDEX
    from sifirdan.train.runtime import autocast

    device = device or next(model.parameters()).device
    dtype = dtype or torch.float32
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    if len(ids) < 2:
        raise UserError("the text has fewer than 2 tokens, so there is nothing to predict; pass a longer text")
    T = min(model.config.block_size, len(ids) - 1)
    total, count = 0.0, 0
    model.eval()
    from sifirdan import kernels

    forward = kernels.accelerate(model)  # the same loss; the C kernels where they apply (fp32 on a CPU)
    with torch.no_grad():
        for x, y in iter_eval_batches(ids, batch_size, T, "eval"):
            x, y = x.to(device), y.to(device)
            with autocast(device, dtype):
                _, loss = forward(x, y)
            n = int((y != IGNORE_INDEX).sum())
            total += float(loss) * n
            count += n
    loss = total / count
    n_tokens = len(ids)
    return {
        "loss": loss,
        "perplexity": math.exp(loss) if loss < 700 else float("inf"),
        "bits_per_byte": bits_per_unit(loss, len(text.encode("utf-8", "surrogatepass")) / n_tokens),
        "bits_per_char": bits_per_unit(loss, len(text) / n_tokens),
        "tokens": count,
    }


def run(args) -> int:
    from sifirdan import checkpoint as ckpt
    from sifirdan.data.corpus import DEFAULT_CORPUS_NAME, default_corpus, read_text
    from sifirdan.train.runtime import resolve_device, resolve_dtype

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    model, tokenizer = ckpt.load_model(args.model, device=device)
    if args.data:
        text = read_text(args.data, errors=args.errors, text_field=args.text_field)
        source = ", ".join(args.data)
    else:
        text = "\n\n".join(default_corpus())
        source = DEFAULT_CORPUS_NAME
        if not args.json:
            print(f"no --data given: evaluating on the default corpus ({DEFAULT_CORPUS_NAME})", file=sys.stderr)
    r = evaluate_text(model, tokenizer, text, args.batch_size, device, dtype)
    if args.json:
        print(json.dumps(r))
    else:
        print(
            f"{source}: loss {r['loss']:.4f} nats/token | perplexity {r['perplexity']:.2f} | "
            f"{r['bits_per_byte']:.4f} bits/byte | {r['bits_per_char']:.4f} bits/char | {r['tokens']:,} tokens scored"
        )
    return 0
