"""``sifirdan finetune``: a pre-trained model + instruction pairs -> a model that answers (guide §9).

    sifirdan finetune --model runs/nutuk --data nutuk_qa.jsonl --out runs/qa            # our recipe
    sifirdan finetune --model runs/nutuk --data pairs.jsonl --out runs/g --recipe guide  # the guide's, exactly
    sifirdan finetune --resume runs/qa --max-iters 600                                 # continue (bit-exact)
    sifirdan finetune --model runs/nutuk --data qa.jsonl --out runs/qa-lora --lora-rank 8   # LoRA adapters only

What happens: the base checkpoint's tokenizer gets any special tokens the chat template needs (the embedding
and LM head grow, old rows bit-identical); ``--block-size`` above the base's grows the position table; the
records become conversations, lose exact duplicates, split by example into train/val (``--val-fraction``),
are rendered with the template and fitted to the block (``--drop`` over-long ones, or ``--truncate`` their
answers); then the same ``Trainer`` as pre-training runs, scoring only the answers (``--train-on-prompt``:
every token). The run directory holds checkpoints whose ``config.json`` records the chat template.

``--lora-rank R`` freezes the base model and trains low-rank adapters on the blocks' Linears instead
(``sifirdan/model/lora.py``; ``--lora-alpha``, ``--lora-targets``). Checkpoints still hold plain weights --
the adapters merged in -- so every other command loads them as any GPT; the unmerged weights ride in the
trainer state, so ``--resume`` continues bit-exactly. The run's ``config.json`` records the LoRA settings.

This module turns the flags into ``FinetuneSettings`` and calls ``sifirdan.train.finetune``: the work and
its checks live there.
"""

from __future__ import annotations


def register(subparsers) -> None:
    from sifirdan.cli import options
    from sifirdan.cli.config_flags import add_dataclass_flags
    from sifirdan.train.config import TrainConfig
    from sifirdan.train.finetuning import GUIDE_BLOCK_SIZE, RECIPES

    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a pre-trained model on instruction/answer pairs (guide §9)",
        description="Fine-tune a pre-trained sifirdan model (--model, from `sifirdan pretrain`) on instruction data "
        "(JSONL, JSON array or CSV with instruction/input/output, prompt/response, question/answer or messages "
        "fields). The loss is on the answers only; the chat template is saved with every checkpoint. "
        "Layers: --recipe < flags.",
    )
    options.add(p, "--model")
    p.add_argument("--data", metavar="PATH", help="instruction data: .jsonl / .json / .csv, a corpus name (nutuk-qa: "
                   "`sifirdan data list`) or hf:NAME[:SPLIT]; default: nutuk-qa, bundled with sifirdan")
    p.add_argument("--out", metavar="RUN_DIR", help="a new or empty folder for the fine-tuning run")
    options.add(p, "--resume")
    options.add(p, "--overwrite")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="default",
                   help="the training settings: default = ours (answers-only loss, one example per row); guide = "
                   "the guide's §9 exactly (default: default)")
    options.add(p, "--block-size", type=int, note=f"the base model's, or room for 95 % of the training examples "
                f"(up to 4x the base's); the guide recipe: {GUIDE_BLOCK_SIZE}; above the base's, the position table "
                "grows")
    options.add(p, "--dropout", type=float, note="the base model's")
    options.add(p, "--val-fraction", type=float, note="0.1; on --resume: the run's own")
    options.add(p, "--max-samples", type=int, note="all; the guide used 1000")
    options.add(p, "--field-map")
    options.add(p, "--skip-bad")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--drop", dest="length_mode", action="store_const", const="drop",
                        help="drop examples longer than the block (default)")
    length.add_argument("--truncate", dest="length_mode", action="store_const", const="truncate",
                        help="keep the prompt, cut the answer to fit (its </RESP> is left out)")
    options.add(p, "--train-on-prompt")
    p.add_argument("--mix-rows", type=int, metavar="N", help="rows of each batch given to plain pre-training text "
                   "(every token scored), so the model keeps what it knew; 0 = off (default: a quarter of --batch-size, "
                   "4 of 16, in the default recipe; 0 in the guide's)")
    p.add_argument("--mix-text", nargs="+", metavar="PATH", help="the text mixed in: file(s), folder(s) or corpus "
                   "names (its train split is used) (default: the text the base model was pre-trained on, as its "
                   "checkpoint records it)")
    lora = p.add_argument_group("LoRA", "freeze the base model and train low-rank adapters only; checkpoints hold "
                                "the merged plain weights")
    lora.add_argument("--lora-rank", type=int, metavar="R", help="rank of the adapters, 1..n_embd (e.g. 8); off by default")
    lora.add_argument("--lora-alpha", type=float, metavar="A", help="adapter scale = alpha / rank (default: alpha = rank)")
    lora.add_argument("--lora-targets", metavar="LIST", help="comma-separated Linears to adapt in every block: qkv "
                      "(attention Q/K/V), proj (attention output), ffn (both feed-forward Linears); default: qkv,proj,ffn")
    add_dataclass_flags(p, TrainConfig, "train", "training (TrainConfig; defaults come from --recipe)",
                        skip=("sample_prompt", "sample_tokens"), default_of=_recipe_default,
                        description="the samples printed at each evaluation are greedy answers to held-out "
                        "instructions")
    p.set_defaults(func=run, length_mode=None)


def _recipe_default(name: str) -> str:
    """A training field's default as --help shows it: the default recipe's value, and the guide's if it differs."""
    from sifirdan.cli.options import shown
    from sifirdan.train.config import TrainConfig
    from sifirdan.train.finetuning import RECIPES

    own = TrainConfig.__dataclass_fields__[name].default
    ours, guide = (shown(RECIPES[r].get(name, own)) for r in ("default", "guide"))
    return ours if ours == guide else f"{ours}; --recipe guide: {guide}"


def run(args) -> int:
    from sifirdan.cli import runs
    from sifirdan.train import FinetuneSettings, finetune

    names = ("model", "data", "recipe", "block_size", "dropout", "val_fraction", "max_samples", "field_map",
             "skip_bad", "length_mode", "train_on_prompt", "lora_rank", "lora_alpha", "lora_targets", "mix_rows",
             "mix_text")
    settings = FinetuneSettings(train=runs.explicit_flags(args)["train"], **{n: getattr(args, n) for n in names})
    result = finetune(settings, runs.run_settings(args), log=runs.say)
    out = result.run_dir
    return runs.finish_run(result, "best val loss {best} (answers only); " + f"model in {out} " + "({checkpoint}) "
                           f"(try: sifirdan chat --model {out} / sifirdan eval-instruct --model {out} --data FILE)")
