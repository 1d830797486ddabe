"""``sifirdan template show``: see exactly what fine-tuning trains on -- the rendered conversation, with the
tokens that carry loss marked.

    sifirdan template show --model runs/nutuk --data nutuk_qa.jsonl --n 2

Trained tokens (each answer and its ``</RESP>``) are shown in colour on a terminal, and between ``[[`` and ``]]``
otherwise; special tokens are shown by name. The template is the model's own (a fine-tuned checkpoint saves
it) or the default one a fine-tuning run would use.
"""

from __future__ import annotations

import os
import sys

GREEN, DIM, RESET = "\033[32m", "\033[2m", "\033[0m"


def register(subparsers) -> None:
    from sifirdan.cli import options

    p = subparsers.add_parser("template", help="show the chat template: how examples are rendered and what is trained")
    sub = p.add_subparsers(dest="template_command", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="print rendered examples with the trained tokens marked",
                          description="Render instruction examples with the model's chat template and mark the tokens "
                          "the loss is on (colour on a terminal, [[...]] otherwise).")
    options.add(show, "--model", required=True)
    show.add_argument("--data", required=True, metavar="PATH", help="instruction data (.jsonl / .json / .csv)")
    show.add_argument("--n", type=int, default=2, metavar="N", help="how many examples to show (default: 2)")
    options.add(show, "--field-map")
    options.add(show, "--train-on-prompt")
    show.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                      help="mark the trained tokens in green: auto = on a terminal (unless $NO_COLOR is set); never "
                      "= between [[ and ]] (default: auto)")
    show.set_defaults(func=run)


def mark(tokenizer, ids: list[int], mask: list[int], color: bool) -> str:
    """The rendered text, trained runs marked; special tokens by name (dimmed on a terminal)."""
    specials = {i: t for t, i in tokenizer.special_tokens.items()}
    out, run, run_trained = [], [], None

    def flush():
        if not run:
            return
        text = tokenizer.decode(run)  # a run of ordinary tokens: whole characters
        if run_trained:
            out.append(f"{GREEN}{text}{RESET}" if color else f"[[{text}]]")
        else:
            out.append(text)
        run.clear()

    for i, m in zip(ids, mask):
        if i in specials:  # special tokens are their own runs, so their names are shown whole
            flush()
            name = specials[i]
            if m:
                out.append(f"{GREEN}{name}{RESET}" if color else f"[[{name}]]")
            else:
                out.append(f"{DIM}{name}{RESET}" if color else name)
            run_trained = None
            continue
        if run_trained is not None and bool(m) != run_trained:
            flush()
        run_trained = bool(m)
        run.append(i)
    flush()
    return "".join(out)


def run(args) -> int:
    from sifirdan import checkpoint as ckpt
    from sifirdan.chat.template import DEFAULT_TEMPLATE, template_of
    from sifirdan.data.instructions import parse_field_map, read_records, to_conversations
    from sifirdan.errors import UserError

    if args.n <= 0:
        raise UserError(f"--n must be a positive integer, got {args.n}")
    directory = ckpt.resolve_checkpoint_dir(args.model)
    meta = ckpt.read_config(directory)
    tokenizer = ckpt.load_tokenizer(directory, meta)
    template = template_of(meta) or DEFAULT_TEMPLATE
    missing = template.missing_tokens(tokenizer)
    if missing:
        tokenizer.add_special_tokens(missing)  # as finetune would; shown only, nothing is saved
    convs = to_conversations(read_records(args.data)[: max(args.n * 4, args.n)], parse_field_map(args.field_map))[: args.n]
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    origin = "saved with the model" if template_of(meta) else "the default a fine-tuning run would use"
    print(f"template {template.name} ({origin}); trained tokens " + ("in green" if color else "between [[ and ]]"))
    for k, conv in enumerate(convs, start=1):
        ids, mask = template.render(conv, tokenizer)
        if args.train_on_prompt:
            mask = [0] + [1] * (len(ids) - 1)
        print(f"\n--- example {k}: {len(ids)} tokens, {sum(mask)} trained")
        print(mark(tokenizer, ids, mask, color))
    return 0
