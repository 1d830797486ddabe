"""Flags several subcommands share, defined once: the same name means the same thing, takes the same values
and is described in the same words in every ``--help`` (tests/test_cli_help.py holds every subcommand to it).

``add(parser, "--device", default="auto")`` adds one. Its help is ``SPECS[flag]["help"]`` plus
``(default: ...)`` -- the default is the one part that may differ between subcommands (``note=`` when it needs
words: "the base model's"). The flags made from the config dataclasses (``config_flags.py``) use the same
definition for a field of the same name (``TrainConfig.device`` is ``--device`` here too). Values from a
fixed set are argparse ``choices`` taken from the config module that validates them, so a typo is argparse's
one-line error and the list of valid values exists once.
"""

from __future__ import annotations

import argparse
import functools


# ------------------------------------------------------------------------------------------------ value types
def device(value: str) -> str:
    """``--device``: a name from ``sifirdan.configs.DEVICES`` (whether the device is there is checked later)."""
    from sifirdan.configs import check_device
    from sifirdan.errors import UserError

    try:
        return check_device(value)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def threads(value: str) -> int:
    """``--threads``: 0 (or ``auto``, as eval-instruct used to spell it) = automatic, else a count."""
    from sifirdan.train.config import LIMITS

    text = str(value).strip().lower()
    try:
        n = 0 if text == "auto" else int(text, 10)
    except ValueError:
        n = -1
    if not 0 <= n <= LIMITS["threads"]:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 (automatic) to {LIMITS['threads']}, got {value!r}")
    return n


def parse_number(value, name: str, kind):
    """A number flag the command parses itself (not argparse), so a bad value is one clear line naming the flag;
    None stays None. ``kind`` is int or float."""
    from sifirdan.errors import UserError

    if value is None:
        return None
    try:
        if kind is int:
            return int(str(value).strip(), 10)
        return float(value)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise UserError(f"--{name} must be {what}, got {value!r}") from None


# ------------------------------------------------------------------------------------------------ the flags
@functools.cache
def specs() -> dict[str, dict]:
    """Flag -> its ``add_argument`` keywords (``help`` without the default). Built on first use: the choices
    come from the config modules."""
    from sifirdan.data.config import ENCODING_ERRORS
    from sifirdan.model.config import MODEL_PRESETS
    from sifirdan.train.config import DTYPES

    return {**_model_flags(MODEL_PRESETS, DTYPES), **_data_flags(ENCODING_ERRORS)}


def _model_flags(model_presets, dtypes) -> dict[str, dict]:
    """Where and how a model runs, the model, runs."""
    return {
        # where and how a model runs
        "--device": dict(type=device, metavar="DEVICE", help="where the model runs: auto (a CUDA GPU, else Apple's "
                         "MPS, else the CPU), cpu, cuda, cuda:N (the GPU with index N) or mps"),
        "--dtype": dict(choices=dtypes, help="precision of the matrix products (the weights stay fp32): auto = bf16 on "
                        "a GPU that has it, else fp16, and fp32 on a CPU; fp16 needs a CUDA GPU"),
        "--threads": dict(type=threads, metavar="N", help="CPU threads for PyTorch; 0 = automatic: the cores other "
                          "programs leave free, re-decided while it runs; a fixed N keeps the float sums in one "
                          "order, so results repeat bit for bit"),
        "--seed": dict(metavar="SEED", help="integer seed of the random numbers (>= 0): the same seed, settings and "
                       "input give the same result"),
        "--batch-size": dict(metavar="N", help="sequences in one forward pass, per process (more is faster and takes "
                             "more memory)"),
        # the model
        "--model": dict(metavar="DIR", help="the model: a run directory (its best/ checkpoint, else last/) or a "
                        "checkpoint directory"),
        "--preset": dict(choices=tuple(model_presets), help="one of the guide's model sizes (§10); pretrain also "
                         "takes its training recipe"),
        "--vocab-size": dict(metavar="IDS", help="vocabulary size in token ids: 256 bytes + merges + special tokens"),
        "--block-size": dict(metavar="TOKENS", help="context length in tokens: the longest sequence the model reads "
                             "(the rows of its position table)"),
        "--n-embd": dict(metavar="WIDTH", help="width of the residual stream (numbers per token); a multiple of --n-head"),
        "--n-head": dict(metavar="HEADS", help="attention heads per block, each n_embd / n_head wide"),
        "--n-layer": dict(metavar="BLOCKS", help="transformer blocks"),
        "--dropout": dict(metavar="P", help="dropout probability after each feed-forward network while training, "
                          "0 <= P < 1"),
        "--bias": dict(action=argparse.BooleanOptionalAction, help="biases in the blocks' Linear and LayerNorm "
                       "layers and in the final LayerNorm"),
        "--tie-weights": dict(action=argparse.BooleanOptionalAction, help="share the token-embedding matrix with "
                              "the LM head (GPT-2 does; the guide does not)"),
        "--tokenizer": dict(metavar="PATH", help="a tokenizer.json (from `sifirdan tokenizer train`, or the one in a "
                            "run directory)"),
        # runs
        "--resume": dict(metavar="RUN_DIR", help="continue the run in RUN_DIR from its last/ checkpoint, bit-exactly "
                         "(best/ holds the best weights only, for generate/eval: it cannot be resumed)"),
        "--overwrite": dict(action="store_true", help="--out names an existing run: delete its checkpoints, metrics "
                            "and plots and start anew (other files in the folder are kept)"),
    }


def _data_flags(encoding_errors) -> dict[str, dict]:
    """Reading data, outputs, generation."""
    sample = "sample from the"
    return {
        # reading data
        "--errors": dict(choices=encoding_errors, help="bytes that are not valid UTF-8: strict = stop with an error "
                         "naming the file; replace = read each as U+FFFD; ignore = drop them"),
        "--text-field": dict(metavar="NAME", help="the field that holds the text in .jsonl / .json / .csv records"),
        "--val-fraction": dict(metavar="F", help="share held out for validation, 0 < F < 1: pre-training holds out "
                               "the last F of the characters, fine-tuning a random F of the examples"),
        "--field-map": dict(metavar="OLD=NEW,...", help="rename record fields before reading them, e.g. "
                            "soru=question,cevap=answer"),
        "--max-samples": dict(metavar="N", help="use only the first N examples of the data"),
        "--skip-bad": dict(action="store_true", help="skip malformed lines and records (counted) instead of stopping"),
        "--train-on-prompt": dict(action="store_true", help="the loss is on every token, the prompt's too, not only on "
                                  "the answers (template show marks what that trains)"),
        "--text": dict(metavar="TEXT", help="the input text, given on the command line"),
        "--json": dict(action="store_true", help="print the result as JSON instead of a readable report"),
        # generation
        "--max-new-tokens": dict(metavar="N", help="the most tokens generated for one answer or completion"),
        "--temperature": dict(metavar="T", help="randomness: the logits are divided by T before the softmax; 0 (or below "
                              "1e-4, which float32 cannot divide by safely) = always the most likely token (greedy)"),
        "--top-k": dict(metavar="K", help=f"{sample} K most likely tokens only; 0 = off"),
        "--top-p": dict(metavar="P", help=f"{sample} most likely tokens that together reach probability P, "
                        "0 < P <= 1; 1 = off"),
        "--repetition-penalty": dict(metavar="R", help="> 1 makes tokens already in the text less likely; 1 = off; "
                                     "0.001 to 1000"),
        "--no-repeat-ngram": dict(metavar="N", dest="no_repeat_ngram", help="never generate the same N tokens twice in "
                                  "one answer (the prompt does not count); 0 = off"),
        "--length-decay": dict(metavar="START,FACTOR", dest="length_decay", help="from the START-th new token on, "
                               "push the end token (a chat's </RESP>, else <|endoftext|>) so a long answer ends: its "
                               "logit gains |logit| x (FACTOR^k - 1), k tokens past START, FACTOR 1 to 10 "
                               "(transformers' exponential_decay_length_penalty); off = never"),
        "--prompt-boost": dict(metavar="BOOST,FOLLOW", dest="prompt_boost", help="help a small model restate its "
                               "prompt: +BOOST on the logit of each word token of the prompt the answer has not used "
                               "yet, +FOLLOW on the token that follows the answer's last token in the prompt; each 0 to "
                               "100; off = none"),
    }


def shown(value) -> str:
    """A default as ``--help`` shows it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)


def argument(parser, option_strings, spec: dict, *, default=None, note: str | None = None, required: bool = False,
             **overrides):
    """``add_argument`` from a spec (``help`` plus keywords); the help gets ``(default: ...)`` unless the flag
    is required, a switch that is off unless given, or has no default worth words (None and no ``note``)."""
    kw = {**spec, **overrides}
    text = kw.pop("help")
    if not required and kw.get("action") != "store_true" and (default is not None or note is not None):
        text += f" (default: {note if note is not None else shown(default)})"
    if kw.get("action") == "store_true":
        default = False
    return parser.add_argument(*option_strings, default=default, required=required, help=text.replace("%", "%%"), **kw)


def add(parser, flag: str, *, names: tuple[str, ...] | None = None, **kw):
    """Add the shared ``flag`` (a key of ``specs()``) to ``parser`` or an argument group; ``names`` gives more
    spellings (chat's --max-tokens beside --max-new-tokens); other keywords as in ``argument``."""
    return argument(parser, names or (flag,), specs()[flag], **kw)
