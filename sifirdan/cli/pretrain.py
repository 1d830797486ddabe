"""``sifirdan pretrain``: raw text -> tokenizer -> token bins -> a trained GPT in a run directory.

    sifirdan pretrain --data nutuk.txt --out runs/nutuk                   # default recipe
    sifirdan pretrain --data nutuk.txt --out runs/guide --preset guide    # the guide's §8 recipe, exactly
    sifirdan pretrain --resume runs/nutuk --max-iters 4000                # continue (bit-exact)
    torchrun --nproc_per_node=2 -m sifirdan pretrain --data nutuk.txt --out runs/ddp

Configuration layers: defaults < --preset < --config FILE.toml < command-line flags. Every field of GPTConfig,
TrainConfig and DataConfig is a flag (``n_embd`` -> ``--n-embd``), described in ``sifirdan/cli/config_flags.py``.
This module turns the flags into ``PretrainSettings`` and calls ``sifirdan.train.pretrain``: the work, its
checks and the config layering live there.
"""

from __future__ import annotations


def register(subparsers) -> None:
    from sifirdan.cli import options
    from sifirdan.cli.config_flags import add_dataclass_flags
    from sifirdan.data import DataConfig
    from sifirdan.model import GPTConfig
    from sifirdan.train.config import TrainConfig

    p = subparsers.add_parser(
        "pretrain",
        help="train a GPT on raw text (guide §7-8, §10)",
        description="Pre-train a GPT from raw text. Without --data the default corpus is used; without --tokenizer "
        "a BPE tokenizer with --vocab-size ids is trained on the train split and saved in the run directory. "
        "Layers: defaults < --preset < --config < flags.",
    )
    p.add_argument("--data", nargs="+", metavar="PATH", help="text file(s), folder(s) or corpus names (nutuk, ataturk: "
                   "`sifirdan data list`); default: nutuk, bundled with sifirdan")
    p.add_argument("--out", metavar="RUN_DIR", help="a new or empty folder for the run (checkpoints last/ best/, "
                   "metrics.jsonl, loss.png); a folder sifirdan did not create is never written")
    options.add(p, "--overwrite")
    options.add(p, "--preset", note="none: the defaults below")
    p.add_argument("--config", metavar="FILE.toml", help="TOML file with [model] / [train] / [data] keys, or flat "
                   "keys named as the flags below (n_embd = 128); flags override it (default: none)")
    options.add(p, "--tokenizer", note="train one with --vocab-size ids on the train split, saved in the run")
    options.add(p, "--resume")
    p.add_argument("--cache-dir", metavar="DIR", help="where tokenized text is cached, keyed by its content and "
                   "the tokenizer (default: $SIFIRDAN_CACHE, else ~/.cache/sifirdan)")
    layered = "the defaults shown are the dataclass's; --preset and --config change them, flags win"
    add_dataclass_flags(p, GPTConfig, "model", "model (GPTConfig)", description=layered, default_of=_model_default)
    add_dataclass_flags(p, TrainConfig, "train", "training (TrainConfig)", description=layered)
    add_dataclass_flags(p, DataConfig, "data", "data (DataConfig)")
    p.set_defaults(func=run)


def _model_default(name: str) -> str:
    from sifirdan.cli.options import shown
    from sifirdan.model import GPTConfig

    default = shown(GPTConfig.__dataclass_fields__[name].default)
    return f"{default}; with --tokenizer: its size" if name == "vocab_size" else default


def run(args) -> int:
    from sifirdan.cli import runs
    from sifirdan.train import PretrainSettings, pretrain

    flags = runs.explicit_flags(args)
    settings = PretrainSettings(source=args.data, tokenizer=args.tokenizer, preset=args.preset,
                                config_file=args.config, cache_dir=args.cache_dir, **flags)
    result = pretrain(settings, runs.run_settings(args), log=runs.say)
    out = result.run_dir
    return runs.finish_run(result, "best val loss {best}; " + f"model in {out} "
                           f"(try: sifirdan generate --model {out} / sifirdan eval --model {out} --data FILE)")
