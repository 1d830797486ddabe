"""``sifirdan generate``: continue a prompt with a trained model (KV cache, sampling, streaming), or, with
``--instruction``, have a fine-tuned model answer one instruction in its chat template (``sifirdan chat`` is the
multi-turn version)."""

from __future__ import annotations

import dataclasses
import sys

from sifirdan.errors import UserError


def register(subparsers) -> None:
    from sifirdan.cli import options

    p = subparsers.add_parser(
        "generate",
        help="generate text with a trained model",
        description=(
            "Continue a prompt with a trained model. Prints the prompt followed by the completion "
            "(--completion-only for the completion alone). An empty prompt starts from <|endoftext|>. "
            "--instruction TEXT asks a fine-tuned model instead: TEXT goes in the chat template the model was "
            "fine-tuned with, generation stops where the answer ends, and only the answer is printed."
        ),
    )
    options.add(p, "--model", required=True)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", metavar="TEXT", help="the prompt (default: empty -- start from <|endoftext|>)")
    src.add_argument("--input", metavar="FILE", help="read the prompt from a file ('-' = stdin)")
    src.add_argument("--instruction", metavar="TEXT",
                     help="a fine-tuned model answers TEXT (one user message in its chat template); prints the answer only")
    # numbers are parsed by us, not argparse, so a bad value is one clear line (see options.parse_number)
    options.add(p, "--max-new-tokens", default="200")
    options.add(p, "--temperature", default="0.8")
    options.add(p, "--top-k", default="0")
    options.add(p, "--top-p", default="1.0")
    options.add(p, "--repetition-penalty", default="1.0")
    options.add(p, "--no-repeat-ngram", default="0")
    options.add(p, "--length-decay", default="off")
    options.add(p, "--prompt-boost", default="off")
    options.add(p, "--seed", note="random; completion k of --num-samples uses SEED + k")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop before this text (repeatable)")
    p.add_argument("--num-samples", default="1", metavar="N", help="how many completions, generated as one batch (default: 1)")
    p.add_argument("--stream", action="store_true", help="print the text as it is generated")
    p.add_argument("--completion-only", action="store_true", help="print only the generated text, not the prompt")
    p.add_argument("--no-cache", action="store_true", help="recompute every step without the KV cache (the guide's way; slow)")
    options.add(p, "--device", default="auto")
    p.set_defaults(func=cmd_generate)


def _read_prompt(args) -> str:
    if args.prompt is not None:
        return args.prompt
    if args.input is None:
        return ""
    if args.input == "-":
        return sys.stdin.read()
    try:
        with open(args.input, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f"prompt file {args.input} does not exist; check the path or use --prompt") from None
    except UnicodeDecodeError:
        raise UserError(f"prompt file {args.input} is not UTF-8 text; convert it (e.g. iconv -t UTF-8)") from None
    except OSError as e:
        raise UserError(f"cannot read prompt file {args.input} ({e.strerror}); check the path") from None


def _instruction_template(args):
    """The chat template saved in the checkpoint, or a one-line error naming the fix."""
    from sifirdan.chat.template import template_of
    from sifirdan.checkpoint import read_config

    if not args.instruction.strip():
        raise UserError("--instruction is empty; give the instruction to answer, e.g. --instruction \"Merhaba\"")
    template = template_of(read_config(args.model))
    if template is None:
        raise UserError(f"{args.model} has no chat template (it is pre-trained, not fine-tuned), so it cannot follow "
                        "--instruction; fine-tune it first with `sifirdan finetune --model DIR --data FILE --out RUN`, "
                        "or use --prompt to continue text")
    return template


def _instruction_ids(template, instruction: str, tokenizer, block_size: int) -> list[int]:
    missing = template.missing_tokens(tokenizer)
    if missing:
        raise UserError(f"the model's chat template needs the special token(s) {', '.join(missing)} but its tokenizer "
                        "has none; the checkpoint is inconsistent -- fine-tune it again with `sifirdan finetune`")
    ids = template.render_prompt([{"role": "user", "content": instruction}], tokenizer)
    if len(ids) >= block_size:
        # the engine would crop the prompt's start -- the template's opening tags -- and the model would answer
        # a fragment; better to say so
        raise UserError(f"the instruction takes {len(ids)} tokens with the template; the model reads at most {block_size} "
                        "and needs room to answer; shorten it")
    return ids


def cmd_generate(args) -> int:
    from sifirdan.cli import options
    from sifirdan.generate import GenerationConfig
    from sifirdan.generate.config import parse_length_decay, parse_prompt_boost

    config = GenerationConfig(
        max_new_tokens=options.parse_number(args.max_new_tokens, "max-new-tokens", int),
        temperature=options.parse_number(args.temperature, "temperature", float),
        top_k=options.parse_number(args.top_k, "top-k", int),
        top_p=options.parse_number(args.top_p, "top-p", float),
        repetition_penalty=options.parse_number(args.repetition_penalty, "repetition-penalty", float),
        no_repeat_ngram_size=options.parse_number(args.no_repeat_ngram, "no-repeat-ngram", int),
        exponential_decay_length_penalty=parse_length_decay(args.length_decay),
        prompt_boost=parse_prompt_boost(args.prompt_boost),
        seed=options.parse_number(args.seed, "seed", int),
        stop=tuple(args.stop),
        use_cache=not args.no_cache,
    ).validate()  # before loading the model: a bad flag fails fast
    n = options.parse_number(args.num_samples, "num-samples", int)
    if not 1 <= n <= 64:
        raise UserError(f"--num-samples must be from 1 to 64, got {n}")
    prompt = _read_prompt(args)

    from sifirdan.checkpoint import load_model
    from sifirdan.generate import Engine
    from sifirdan.train.runtime import resolve_device

    template = _instruction_template(args) if args.instruction is not None else None  # before the weights load
    model, tokenizer = load_model(args.model, resolve_device(args.device))
    engine = Engine(model, tokenizer)
    if template is not None:
        ids = _instruction_ids(template, args.instruction, tokenizer, engine.block_size)
        config = dataclasses.replace(config, stop_token_ids=template.stop_ids(tokenizer),
                                     suppress_token_ids=template.suppressed_ids(tokenizer))
        prefix = ""  # the answer only
    else:
        ids = engine.encode_prompt(prompt)
        prefix = "" if args.completion_only else prompt
    out = sys.stdout
    for k in range(n):
        if n > 1:
            out.write(f"{'' if k == 0 else chr(10)}--- sample {k + 1}/{n} ---\n")
        # sample k uses seed + k, exactly as row k of a batch does: --stream never changes the text
        if args.stream:
            cfg = config if config.seed is None else dataclasses.replace(config, seed=config.seed + k)
            out.write(prefix)
            out.flush()
            for piece in engine.stream_ids(ids, cfg):
                out.write(piece)
                out.flush()
            out.write("\n")
        else:
            if k == 0:
                results = engine.generate_ids([ids] * n, config)
            out.write(prefix + results[k].text + "\n")
    out.flush()
    return 0
