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
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from sifirdan.errors import UserError

# Fine-tuning recipes: TrainConfig values (and the block size) each sets. "guide" is the guide's §9 exactly:
# AdamW(lr 1e-4, PyTorch defaults), constant LR, batch 8, 500 iterations, block 256, loss on every token of
# random windows over the concatenated examples. "default" is ours, chosen by bench/finetune.py on Nutuk QA
# (same base model, same run; bench/RESULTS.md): lr 1e-3 x 300 steps (~19 epochs) overfit (val loss 4.50, 83 %
# of answers ended), 150 steps 4.31 / 80 %, dropout 0.1 4.31 / 70 %; lr 5e-4 x 200 steps 4.34 / 90 % ended.
RECIPES: dict[str, dict] = {
    "default": dict(
        learning_rate=5e-4, lr_schedule="cosine", warmup_iters=20, min_lr_ratio=0.1, batch_size=16, max_iters=200,
        weight_decay=0.1, decay_embeddings=True, grad_clip=1.0, eval_interval=50, eval_iters=10, checkpoint_interval=100, sample_interval=1,
    ),
    "guide": dict(
        learning_rate=1e-4, lr_schedule="constant", warmup_iters=0, batch_size=8, max_iters=500, weight_decay=0.01,
        decay_all=True, beta1=0.9, beta2=0.999, grad_clip=0.0, eval_interval=100, eval_iters=10,
        checkpoint_interval=100, sample_interval=1,
    ),
}
GUIDE_BLOCK_SIZE = 256
N_SAMPLE_ANSWERS = 3  # greedy answers to fixed val instructions, printed and logged at each evaluation


def register(subparsers) -> None:
    from sifirdan.cli import options
    from sifirdan.cli.config_flags import add_dataclass_flags
    from sifirdan.train.config import TrainConfig

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

    own = TrainConfig.__dataclass_fields__[name].default
    ours, guide = (shown(RECIPES[r].get(name, own)) for r in ("default", "guide"))
    return ours if ours == guide else f"{ours}; --recipe guide: {guide}"


def _say(msg: str, main: bool = True) -> None:
    if main:
        print(msg, file=sys.stderr, flush=True)


def _data_hash(convs) -> str:
    h = hashlib.sha256()
    for c in convs:
        h.update(json.dumps(c, ensure_ascii=False, sort_keys=True).encode("utf-8"))
    return h.hexdigest()[:16]


def run(args) -> int:
    import torch

    from sifirdan import checkpoint as ckpt
    from sifirdan import rundir
    from sifirdan.chat.template import DEFAULT_TEMPLATE, TEMPLATE_KEY, ChatTemplate
    from sifirdan.cli import notes
    from sifirdan.cli.pretrain import explicit_flags, finish_run, open_run_dir
    from sifirdan.data.instructions import ReadStats, parse_field_map, read_records, split_conversations, to_conversations
    from sifirdan.limits import check_fits, training_bytes
    from sifirdan.model import GPT
    from sifirdan.model.resize import grow_context, grow_vocab
    from sifirdan.train.config import TrainConfig, resume_differences
    from sifirdan.train.distributed import env_dist_info, init_distributed, shutdown_distributed
    from sifirdan.train.finetune import finetune_data, guide_data, tokenize_conversations
    from sifirdan.train.runtime import resolve_device, resolve_dtype
    from sifirdan.train.trainer import Trainer

    dist = env_dist_info()
    main = dist.is_main
    flags = explicit_flags(args)["train"]

    # ---- the run directory (read-only checks first)
    if not args.resume and args.out and not args.model:
        raise UserError("--model DIR is required: the pre-trained checkpoint to fine-tune (from `sifirdan pretrain --out`)")
    out, mode, run_dir = open_run_dir(args, "finetune", main, example="runs/qa")
    saved = None
    if mode == "resume":
        saved = ckpt.read_config(out / "last")
        if TEMPLATE_KEY not in saved or "finetune" not in saved:
            raise UserError(f"{out} is not a fine-tuning run (its checkpoint has no chat template); resume it with `sifirdan pretrain --resume`")
    finished = False
    try:
        # ---- settings: recipe < flags (a resumed run: its own settings < flags that may change)
        if saved is not None:
            ft = saved["finetune"]
            recipe = ft["recipe"]
            train_sections = {**saved.get("train", {}), **flags}
            diffs = resume_differences({"train": saved.get("train", {})}, {"train": train_sections})
            if diffs:
                raise UserError(f"cannot resume {out} with a changed configuration: {'; '.join(diffs)}; drop those flags")
            for name in ("data", "block_size", "max_samples", "field_map", "length_mode", "train_on_prompt", "val_fraction"):
                given = getattr(args, name, None)
                if given not in (None, False) and given != ft.get(name):
                    raise UserError(f"--{name.replace('_', '-')} differs from the run's ({ft.get(name)!r}); drop it when resuming")
            data_source, val_fraction = ft["data"], ft["val_fraction"]
            max_samples, field_map_spec = ft.get("max_samples"), ft.get("field_map")
            length_mode, train_on_prompt, skip_bad = ft["length_mode"], ft["train_on_prompt"], ft.get("skip_bad", False)
            lora = _resumed_lora(args, ft.get("lora"), out)
        else:
            recipe = args.recipe
            train_sections = {**RECIPES[recipe], **flags}
            data_source, max_samples = args.data, args.max_samples
            if not data_source:
                from sifirdan.data import corpora

                data_source = corpora.DEFAULT_INSTRUCTIONS
                _say(f"no --data given: fine-tuning on the default set, {corpora.describe(data_source)}")
            val_fraction = 0.1 if args.val_fraction is None else args.val_fraction
            field_map_spec, length_mode = args.field_map, args.length_mode or "drop"
            train_on_prompt, skip_bad = args.train_on_prompt, args.skip_bad
            lora = _lora_flags(args)
        train_cfg = TrainConfig.from_dict(train_sections)
        if max_samples is not None and max_samples <= 0:
            raise UserError(f"--max-samples must be a positive integer, got {max_samples}")
        field_map = parse_field_map(field_map_spec)
        device = resolve_device(train_cfg.device, dist.local_rank)
        resolve_dtype(train_cfg.dtype, device)

        # ---- the base model and its tokenizer (a resumed run: its own last/, already grown)
        source_dir = ckpt.resolve_checkpoint_dir(out / "last" if saved is not None else args.model)
        model, tokenizer = ckpt.load_model(source_dir)
        base_meta = ckpt.read_config(source_dir)
        if lora is not None:  # the rank against this model's width, before any slow work
            from sifirdan.model.lora import check_settings

            check_settings(lora["rank"], lora["alpha"], lora["targets"], model.config.n_embd)
        if saved is None and TEMPLATE_KEY in base_meta:
            _say(f"note: {source_dir} is fine-tuned already; fine-tuning it again on {data_source}")
        template = ChatTemplate.from_dict(saved[TEMPLATE_KEY]) if saved is not None else (
            ChatTemplate.from_dict(base_meta[TEMPLATE_KEY]) if TEMPLATE_KEY in base_meta else DEFAULT_TEMPLATE)
        missing = template.missing_tokens(tokenizer)
        if missing:
            if saved is not None:
                raise UserError(f"{source_dir}: its tokenizer lacks {', '.join(missing)}; restore the checkpoint")
            tokenizer.add_special_tokens(missing)
            _say(f"added special token(s) {' '.join(missing)} to the tokenizer (ids {model.config.vocab_size}..)")
        if "<PAD>" not in tokenizer.special_tokens:
            tokenizer.add_special_tokens(["<PAD>"])
        pad_id = tokenizer.special_tokens["<PAD>"]
        grown_vocab = grow_vocab(model, max(tokenizer.vocab_size, model.config.vocab_size))
        if args.dropout is not None and saved is None:
            if not 0 <= args.dropout < 1:
                raise UserError(f"--dropout must be in [0, 1), got {args.dropout}")
            model.config.dropout = args.dropout
            for block in model.blocks:
                block.feed_forward.dropout.p = args.dropout

        # ---- data: records -> conversations -> split -> rendered, fitted examples
        stats = ReadStats()
        records = read_records(data_source, skip_bad=skip_bad, stats=stats)
        convs = to_conversations(records, field_map, skip_bad=skip_bad, stats=stats)
        if max_samples is not None:
            convs = convs[:max_samples]
        if not convs:
            raise UserError(f"{data_source}: no usable examples after filtering ({stats.records} records, "
                            f"{stats.skipped_bad} bad, {stats.duplicates} duplicates); check the file and --field-map")
        d_hash = _data_hash(convs)
        if saved is not None and d_hash != ft.get("data_hash"):
            raise UserError(f"the data differs from the data {out} was fine-tuned on; resume with the same --data")
        split = split_conversations(convs, val_fraction, train_cfg.seed)

        # ---- the context: --block-size, else the guide's 256 (guide recipe), else room for 95 % of the
        # training examples (a multiple of 64, from the base's block up to 4x it)
        block_size = args.block_size if saved is None else ft["block_size"]
        base_block = model.config.block_size
        if block_size is None:
            if recipe == "guide":
                block_size = max(GUIDE_BLOCK_SIZE, base_block)
            else:
                lengths = sorted(len(template.render(c, tokenizer)[0]) - 1 for c in split.train)
                p95 = lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))] if lengths else base_block
                block_size = min(max(base_block, -(-p95 // 64) * 64), 4 * base_block)
                if block_size > base_block:
                    _say(f"block size {block_size} (the base model's is {base_block}): 95 % of the training "
                         f"examples fit in {p95 + 1} tokens; --block-size sets it", main)
        if block_size <= 0:
            raise UserError(f"--block-size must be a positive integer, got {block_size}")
        if block_size < base_block:
            raise UserError(f"--block-size {block_size} is below the base model's {base_block}; "
                            "fine-tune at the base's size or larger")
        grown_ctx = grow_context(model, block_size)
        if grown_vocab or grown_ctx:
            _say(f"grew the model: +{grown_vocab} token rows (mean of the old ones), +{grown_ctx} position rows "
                 "(copies of the last one); every old weight kept", main)
        fix = "lower --batch-size or --block-size"
        check_fits(training_bytes(model.config, train_cfg.batch_size, train_cfg.eval_iters), "this fine-tuning run", fix, device)

        train_ex, train_counts = tokenize_conversations(split.train, tokenizer, template, block_size, length_mode, train_on_prompt)
        val_ex, val_counts = tokenize_conversations(split.val, tokenizer, template, block_size, length_mode, False)
        if not train_ex:
            raise UserError(f"every training example is longer than the block of {block_size} tokens (the longest has "
                            f"{train_counts.longest}); pass --truncate, or --block-size {min(train_counts.longest, 4 * block_size)}")
        if train_counts.trained_tokens == 0:
            raise UserError("no token to train on after filtering (every answer is empty or cut away); check the data")
        _say(f"data: {len(records)} records -> {len(convs)} examples ({stats.duplicates} duplicates removed"
             + (f", {stats.skipped_bad} bad skipped" if stats.skipped_bad else "") + f"); "
             f"train {train_counts.kept} (+{train_counts.truncated} truncated, {train_counts.dropped} dropped), "
             f"val {val_counts.kept} ({val_counts.truncated} truncated, {val_counts.dropped} dropped); "
             f"{train_counts.trained_tokens:,} trained tokens, block {block_size}", main)
        if length_mode == "drop" and train_counts.dropped:
            _say(f"note: {train_counts.dropped} training example(s) longer than {block_size + 1} tokens were dropped "
                 "(--truncate keeps their prompts and cuts the answers)", main)

        init_distributed(dist, device)
        settings = {
            "recipe": recipe, "data": str(data_source), "data_hash": d_hash, "val_fraction": val_fraction,
            "max_samples": max_samples, "field_map": field_map_spec, "length_mode": length_mode,
            "train_on_prompt": train_on_prompt, "skip_bad": skip_bad, "block_size": block_size,
            "base_model": saved["finetune"]["base_model"] if saved is not None else str(source_dir),
            "examples": {"train": train_counts.kept, "val": val_counts.kept, "duplicates": stats.duplicates,
                         "truncated": train_counts.truncated + val_counts.truncated,
                         "dropped": train_counts.dropped + val_counts.dropped},
        }
        if lora is not None:
            settings["lora"] = lora
        if main and run_dir is None:
            run_dir = rundir.RunDir.open(out, mode, "finetune", {"train": train_cfg.to_dict(), "finetune": settings})

        if recipe == "guide":
            data = guide_data(train_ex, val_ex, train_cfg, block_size, pad_id, tokenizer, dist)
        else:
            data = finetune_data(train_ex, val_ex, train_cfg, pad_id, tokenizer, dist)
        data.samples = _answer_sampler(split.val or split.train, tokenizer, template, block_size)
        run_config = {TEMPLATE_KEY: template.to_dict(), "finetune": settings}
        n_params = model.num_parameters()
        export_model, trained_note = None, ""
        if lora is not None:
            from sifirdan.model.lora import apply_lora, merged_copy

            # the adapters' own seeded generator: their init moves no other randomness
            n_train = apply_lora(model, lora["rank"], lora["alpha"], lora["targets"],
                                 generator=torch.Generator().manual_seed(train_cfg.seed))
            export_model = merged_copy
            trained_note = (f": LoRA rank {lora['rank']}, alpha {lora['alpha']:g} on {','.join(lora['targets'])}, "
                            f"{n_train / n_params:.2%} of the model")
        else:
            n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        _say(f"model: {n_params:,} parameters ({n_train:,} trained{trained_note}), vocab {model.config.vocab_size}, "
             f"block {block_size}; recipe {recipe}: lr {train_cfg.learning_rate:g} ({train_cfg.lr_schedule}), "
             f"batch {train_cfg.batch_size}, {train_cfg.max_iters} steps on {device}", main)
        notes.c_extensions(main=main)
        torch.manual_seed(train_cfg.seed)
        trainer = Trainer(model, train_cfg, data, tokenizer=tokenizer, out_dir=out, run_config=run_config,
                          dist_info=dist, resume=saved is not None, export_model=export_model)
        if trainer.device.type == "cpu":
            _say(trainer.kernels_note, main)
        if saved is not None:
            _say(f"resumed {out} at step {trainer.step}", main)
        result = trainer.fit()
        finished = True
    except BaseException:  # as in pretrain: a new run stopped before its first checkpoint leaves --out as it was
        if run_dir is not None and mode != "resume":
            run_dir.abandon()
        raise
    finally:
        shutdown_distributed(wait_for_others=finished)
        if run_dir is not None:
            run_dir.close()

    return finish_run(result, main, "best val loss {best} (answers only); " + f"model in {out} "
                      f"(try: sifirdan chat --model {out} / sifirdan eval-instruct --model {out} --data FILE)")


def _lora_flags(args) -> dict | None:
    """``{"rank", "alpha", "targets"}`` from --lora-rank/--lora-alpha/--lora-targets, or None without LoRA."""
    from sifirdan.model.lora import DEFAULT_TARGETS, check_settings

    if args.lora_rank is None:
        for flag in ("alpha", "targets"):
            if getattr(args, f"lora_{flag}") is not None:
                raise UserError(f"--lora-{flag} needs --lora-rank (LoRA is off without it); add e.g. --lora-rank 8")
        return None
    targets = args.lora_targets if args.lora_targets is not None else DEFAULT_TARGETS
    rank, alpha, targets = check_settings(args.lora_rank, args.lora_alpha, targets)
    return {"rank": rank, "alpha": alpha, "targets": targets}


def _resumed_lora(args, saved_lora: dict | None, out: Path) -> dict | None:
    """The run's LoRA settings; a --lora-* flag given on resume must repeat them."""
    given = {k: getattr(args, f"lora_{k}") for k in ("rank", "alpha", "targets")}
    if saved_lora is None:
        if any(v is not None for v in given.values()):
            raise UserError(f"{out} was fine-tuned without LoRA (every weight trained); drop the --lora-* flags "
                            "to resume it, or start a new run with --out")
        return None
    from sifirdan.model.lora import parse_targets

    for key, value in given.items():
        if value is None:
            continue
        value = parse_targets(value) if key == "targets" else float(value) if key == "alpha" else value
        if value != saved_lora[key]:
            shown = ",".join(saved_lora[key]) if key == "targets" else f"{saved_lora[key]:g}"
            raise UserError(f"--lora-{key} differs from the run's ({shown}); drop it when resuming")
    return dict(saved_lora)


def _answer_sampler(convs, tokenizer, template, block_size: int):
    """Greedy answers to the first few held-out instructions, for the log at every evaluation."""
    from sifirdan.generate import Engine, GenerationConfig

    prompts = []
    for conv in convs[:N_SAMPLE_ANSWERS]:
        ids = template.render_prompt(conv[:-1], tokenizer)
        if len(ids) < block_size:
            prompts.append((conv[-2]["content"], ids))
    stop = template.stop_ids(tokenizer)

    def sample(model) -> list[dict]:
        if not prompts:
            return []
        engine = Engine(model, tokenizer)
        room = max(1, min(64, block_size - max(len(ids) for _, ids in prompts)))
        cfg = GenerationConfig(max_new_tokens=room, temperature=0, stop_token_ids=stop)
        results = engine.generate_ids([ids for _, ids in prompts], cfg)
        return [{"prompt": q, "text": r.text} for (q, _), r in zip(prompts, results)]

    return sample
