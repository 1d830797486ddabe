"""``sifirdan chat``: talk to a fine-tuned model in the terminal (the guide's ``inference.py``, §9).

The logic (history, fitting the context, slash commands, the plain-completion fallback) is
``sifirdan.chat.session``; this module reads lines, prints the streamed reply and turns Ctrl-C into
``reply.cancel()``.
"""

from __future__ import annotations

import signal
import sys

from sifirdan.errors import UserError

FINETUNE_HINT = "sifirdan finetune --model DIR --data FILE --out RUN"


def register(subparsers) -> None:
    from sifirdan.chat.session import (DEFAULT_LENGTH_DECAY, DEFAULT_MAX_TOKENS, DEFAULT_NO_REPEAT_NGRAM,
                                       DEFAULT_PROMPT_BOOST, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P)
    from sifirdan.cli import options
    from sifirdan.generate.config import length_decay_text, prompt_boost_text

    p = subparsers.add_parser(
        "chat",
        help="chat with a fine-tuned model in the terminal",
        description=(
            "Chat with a fine-tuned model: each reply streams as it is generated, and the whole conversation is "
            "given to the model every turn in the template it was fine-tuned with. When the conversation no "
            "longer fits the model's context, the oldest turns are dropped (the system message stays) and a line "
            "says so. Type /help in the chat for its commands (/reset, /temperature, /top-p, /top-k, "
            "/max-tokens, /no-repeat-ngram, /length-decay, /prompt-boost, /exit). Ctrl-C while the model writes stops that reply (what it wrote so far stays in "
            "the conversation); Ctrl-C at the prompt or Ctrl-D quits. A pre-trained model without a chat "
            f"template is used for plain completion: your text is continued (for a chat model: `{FINETUNE_HINT}`)."
        ),
    )
    options.add(p, "--model", required=True)
    p.add_argument("--system", metavar="TEXT", help="a system message the model reads before the conversation (kept when old turns are dropped)")
    p.add_argument("-p", "--prompt", metavar="TEXT", help="answer this one message on stdout and exit (for scripts)")
    # numbers are parsed by us, not argparse, so a bad value is one clear line
    options.add(p, "--temperature", default=str(DEFAULT_TEMPERATURE))
    options.add(p, "--top-p", default=str(DEFAULT_TOP_P))
    options.add(p, "--top-k", default=str(DEFAULT_TOP_K))
    options.add(p, "--max-new-tokens", names=("--max-tokens", "--max-new-tokens"), dest="max_tokens",
                default=str(DEFAULT_MAX_TOKENS), note=f"{DEFAULT_MAX_TOKENS}; room for a reply this long, up to half "
                "the context, is kept free when fitting the conversation")
    options.add(p, "--repetition-penalty", default="1.0")
    options.add(p, "--no-repeat-ngram", default=str(DEFAULT_NO_REPEAT_NGRAM))
    options.add(p, "--length-decay", default=length_decay_text(DEFAULT_LENGTH_DECAY))
    options.add(p, "--prompt-boost", default=prompt_boost_text(DEFAULT_PROMPT_BOOST))
    options.add(p, "--seed", note="random; reply k uses SEED + k, so the same messages give the same chat")
    options.add(p, "--device", default="auto")
    p.set_defaults(func=cmd_chat)


def cmd_chat(args) -> int:
    from sifirdan.cli.options import parse_number
    from sifirdan.generate import GenerationConfig
    from sifirdan.generate.config import parse_length_decay, parse_prompt_boost

    config = GenerationConfig(
        max_new_tokens=parse_number(args.max_tokens, "max-tokens", int),
        temperature=parse_number(args.temperature, "temperature", float),
        top_k=parse_number(args.top_k, "top-k", int),
        top_p=parse_number(args.top_p, "top-p", float),
        repetition_penalty=parse_number(args.repetition_penalty, "repetition-penalty", float),
        no_repeat_ngram_size=parse_number(args.no_repeat_ngram, "no-repeat-ngram", int),
        exponential_decay_length_penalty=parse_length_decay(args.length_decay),
        prompt_boost=parse_prompt_boost(args.prompt_boost),
        seed=parse_number(args.seed, "seed", int),
    ).validate()  # before loading the model: a bad flag fails fast
    if args.prompt is not None and not args.prompt.strip():
        raise UserError("--prompt is empty; give the message to answer, e.g. -p \"Merhaba\"")

    from sifirdan.chat.session import ChatSession
    from sifirdan.chat.template import template_of
    from sifirdan.checkpoint import load_model, read_config, resolve_checkpoint_dir
    from sifirdan.generate import Engine
    from sifirdan.train.runtime import resolve_device

    resolve_checkpoint_dir(args.model, made_by="sifirdan finetune --out")  # a wrong path names what chat needs
    template = template_of(read_config(args.model))
    model, tokenizer = load_model(args.model, resolve_device(args.device))
    session = ChatSession(Engine(model, tokenizer), template, system=args.system if template else None, config=config,
                          seed=config.seed)

    once = args.prompt is not None
    note = sys.stderr if once else sys.stdout  # -p: stdout holds the answer alone
    if template is None:
        ignored = "; --system is ignored" if args.system else ""
        print(f"(this model has no chat template -- it is pre-trained, not fine-tuned -- so your text is continued as "
              f"plain text{ignored}; for a chat model run `{FINETUNE_HINT}`)", file=note, flush=True)
    if once:
        return _answer_once(session, args.prompt)
    return _interactive(session, args.model)


def _answer_once(session, text: str) -> int:
    reply = session.ask(text)
    if reply.notice:
        print(reply.notice, file=sys.stderr, flush=True)
    out = sys.stdout
    for piece in reply:
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    return 0


def _interactive(session, model_path: str) -> int:
    out = sys.stdout
    if sys.stdin is None or sys.stdin.closed:
        # started with stdin closed (`sifirdan chat ... 0<&-`): Python leaves sys.stdin None. Nothing can be
        # typed, which is the end of input at once: exit 0, as on Ctrl-D
        return 0
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401  -- line editing and history for input()
        except ImportError:
            pass
    what = "chat" if session.mode == "chat" else "plain completion"
    print(f"sifirdan chat: {model_path} ({what}, {session.block_size}-token context). "
          "/help for commands, Ctrl-D to quit.", flush=True)
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            out.flush()
            return 0
        if not line.strip():
            continue
        try:
            if _turn(session, line, out):
                return 0
        except KeyboardInterrupt:  # Ctrl-C in the moment between the prompt and the reply's own handler
            out.write("\n(stopped)\n")
            out.flush()


def _turn(session, line: str, out) -> bool:
    """One typed line: a command or a message. True = quit."""
    if session.is_command(line):
        result = session.command(line)
        if result.exit:
            return True
        print(result.message, file=out, flush=True)
        return False
    try:
        reply = session.ask(session.message_text(line))
    except UserError as e:
        print(f"error: {e}", file=out, flush=True)
        return False
    if reply.notice:
        print(reply.notice, file=out, flush=True)
    _stream(reply, out)
    return False


def _stream(reply, out) -> None:
    """Print a reply as it comes; Ctrl-C (SIGINT) meanwhile cancels it at the next token instead of raising."""
    previous = signal.signal(signal.SIGINT, lambda signum, frame: reply.cancel())
    try:
        out.write("model> ")
        out.flush()
        for piece in reply:
            out.write(piece)
            out.flush()
    finally:
        signal.signal(signal.SIGINT, previous)
    out.write("\n")
    if reply.finish_reason == "interrupted":
        if reply.text:
            out.write("(stopped; the reply so far stays in the conversation)\n")
        else:
            out.write("(stopped before any text; the message is not kept)\n")
    elif reply.finish_reason == "length":
        out.write(f"(reply cut at {reply.config.max_new_tokens} tokens; /max-tokens N allows longer ones)\n")
    out.flush()
