"""``finetune()``: a pre-trained model + instruction pairs -> a model that answers (guide §9), in-process.

    from sifirdan.train import FinetuneSettings, RunSettings, finetune

    result = finetune(FinetuneSettings(model="runs/nutuk", data="nutuk_qa.jsonl", train={"max_iters": 100}),
                      RunSettings(out="runs/qa"), log=print)

What happens: the base checkpoint's tokenizer gets any special tokens the chat template needs (the embedding
and LM head grow, old rows bit-identical); a ``block_size`` above the base's grows the position table; the
records become conversations, lose exact duplicates, split by example into train/val (``val_fraction``), are
rendered with the template and fitted to the block (``length_mode`` "drop" over-long ones, or "truncate" their
answers); then the same ``Trainer`` as pre-training runs, scoring only the answers (``train_on_prompt``: every
token). The run directory holds checkpoints whose ``config.json`` records the chat template.

``lora_rank`` freezes the base model and trains low-rank adapters on the blocks' Linears instead
(``sifirdan/model/lora.py``). Checkpoints still hold plain weights -- the adapters merged in -- so everything
else loads them as any GPT; the unmerged weights ride in the trainer state, so a resume is bit-exact.

Settings layer as ``RECIPES[recipe]`` < ``train``; a resumed run keeps its own settings, and a setting given
again must repeat them (a ``TrainConfig`` field in ``RESUMABLE_FIELDS`` may change).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sifirdan.errors import UserError
from sifirdan.train.layering import section_values
from sifirdan.train.stage import Log, RunGuard, RunSettings, StageResult, open_run_dir, reporter

# Fine-tuning recipes: TrainConfig values (and the block size) each sets. "guide" is the guide's §9 exactly:
# AdamW(lr 1e-4, PyTorch defaults), constant LR, batch 8, 500 iterations, block 256, loss on every token of
# random windows over the concatenated examples. "default" is ours, chosen by bench/finetune.py on Nutuk QA
# (same base model, same run; bench/RESULTS.md): lr 1e-3 x 300 steps (~19 epochs) overfit (val loss 4.50, 83 %
# of answers ended), 150 steps 4.31 / 80 %, dropout 0.1 4.31 / 70 %; lr 5e-4 x 200 steps 4.34 / 90 % ended.
# On the default base of issue 21 (RoPE, block 256), two folds of 60 held-out Nutuk QA questions: lr 1e-3 x 150
# steps gave F1 0.085, 18 % of greedy answers looping, 99 % ended; lr 5e-4 x 200: 0.082 / 33 % / 98 %; lr 2e-4 x
# 300 (fold 0): 0.082 / 47 % / 100 % (bench/RESULTS.md, "held-out protocol"). On all five folds (300 questions,
# greedy with chat's n-gram ban) NEFTune (train/neftune.py) raised F1 from 0.091 to 0.105 at alpha 5 and 0.109 at
# alpha 6, 100 % and 99.7 % of the answers ending; alpha 7 scored 0.119 but 4 % of its answers no longer ended. General
# instructions first (instructions_tr.jsonl, 300 steps) did not help (bench/RESULTS.md, "fine-tuning levers").
# The val loss is lowest near step 100, but the last model of a longer run answers better: 300 steps, evaluated at
# the end, scored F1 0.122 (99.3 % ended) against 0.109 for the lowest-val-loss model, and 450 steps less again
# (fold 0: 0.120, 93 % ended). So "default" trains 300 steps and keeps no best/ (save_best off): the model is last/.
RECIPES: dict[str, dict] = {
    "default": dict(
        learning_rate=1e-3, lr_schedule="cosine", warmup_iters=20, min_lr_ratio=0.1, batch_size=16, max_iters=300,
        weight_decay=0.1, decay_embeddings=True, grad_clip=1.0, eval_interval=50, eval_iters=10, checkpoint_interval=100, sample_interval=1,
        neftune_alpha=6.0, save_best=False,
    ),
    "guide": dict(
        learning_rate=1e-4, lr_schedule="constant", warmup_iters=0, batch_size=8, max_iters=500, weight_decay=0.01,
        decay_all=True, beta1=0.9, beta2=0.999, grad_clip=0.0, eval_interval=100, eval_iters=10,
        checkpoint_interval=100, sample_interval=1,
    ),
}
GUIDE_BLOCK_SIZE = 256
# The share of each batch's rows given to the base model's pre-training text (train/finetune_data.MixedBatches):
# a quarter in our recipe (4 of 16 rows; --mix-rows sets a count). Measured on the five Nutuk folds in
# bench/RESULTS.md, "pre-training text in the fine-tuning batches"; the guide's recipe trains on its examples alone.
MIX_SHARE = {"default": 0.25, "guide": 0.0}
N_SAMPLE_ANSWERS = 3  # greedy answers to fixed val instructions, logged at each evaluation
# the data settings a run records (its config.json "finetune" section) and a resume must repeat if given again
RUN_FIXED = ("data", "block_size", "max_samples", "field_map", "length_mode", "train_on_prompt", "val_fraction")


@dataclass
class FinetuneSettings:
    """What to fine-tune on and how; ``None`` means the recipe's / the base model's / the resumed run's."""

    model: str | Path | None = None  # the base checkpoint (a `sifirdan pretrain --out` run or its last/ / best/)
    data: str | None = None  # .jsonl / .json / .csv, a corpus name or hf:NAME[:SPLIT]; None: nutuk-qa
    recipe: str = "default"
    train: Any = None  # a TrainConfig (every field) or a mapping of its fields (those set), over the recipe
    block_size: int | None = None
    dropout: float | None = None
    val_fraction: float | None = None
    max_samples: int | None = None
    field_map: str | None = None  # e.g. "instruction=soru,output=cevap"
    skip_bad: bool = False
    length_mode: str | None = None  # "drop" (default) or "truncate"
    train_on_prompt: bool = False
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_targets: str | None = None  # e.g. "qkv,proj,ffn"
    # plain text mixed into every batch (MixedBatches): a corpus name, file(s) or folder; None = the text the base
    # model was pre-trained on (its checkpoint records it); mix_rows None = the recipe's share (MIX_SHARE), 0 = off
    mix_text: str | list[str] | None = None
    mix_rows: int | None = None


@dataclass
class _Plan:
    """One fine-tuning run's settings once resolved (a resumed run: its own)."""

    out: Path
    mode: str
    saved: dict | None
    recipe: str
    train_cfg: Any
    data_source: str
    val_fraction: float
    max_samples: int | None
    field_map_spec: str | None
    field_map: dict
    length_mode: str
    train_on_prompt: bool
    skip_bad: bool
    lora: dict | None
    device: Any
    mix_rows: int = 0  # rows of pre-training text per batch (0: none)
    mix_text: Any = None  # as given (None: the base model's pre-training text); a resumed run: its recorded mix
    mix_saved: dict | None = None


def finetune(settings: FinetuneSettings, run: RunSettings, log: Log | None = None) -> StageResult:
    """Fine-tune a pre-trained model; returns the run directory and how training ended. Bad input raises
    ``UserError`` (one line: the problem and the fix) before anything is written."""
    from sifirdan.chat.template import TEMPLATE_KEY
    from sifirdan.train.config import read_run_config
    from sifirdan.train.distributed import env_dist_info

    dist = env_dist_info()
    say = reporter(log, dist.is_main)
    # ---- the run directory (read-only checks first)
    if not run.resume and run.out and not settings.model:
        raise UserError("--model DIR is required: the pre-trained checkpoint to fine-tune (from `sifirdan pretrain --out`)")
    out, mode, run_dir = open_run_dir(run, "finetune", dist.is_main, say, example="runs/qa")
    saved = None
    if mode == "resume":
        saved = read_run_config(out / "last")
        if TEMPLATE_KEY not in saved or "finetune" not in saved:
            raise UserError(f"{out} is not a fine-tuning run (its checkpoint has no chat template); resume it with `sifirdan pretrain --resume`")
    with RunGuard(mode, run_dir, dist) as guard:
        plan = _plan(settings, out, mode, saved, dist, say)
        result = _run(settings, plan, dist, guard, say, log)
        guard.finished = True
    return StageResult.of(out, result)


def _plan(settings: FinetuneSettings, out, mode, saved, dist, say) -> _Plan:
    """Settings: recipe < ``train`` (a resumed run: its own settings < fields that may change)."""
    from sifirdan.data.instructions import parse_field_map
    from sifirdan.train.config import TrainConfig, resume_differences
    from sifirdan.train.finetune_data import check_mix_rows
    from sifirdan.train.runtime import resolve_device, resolve_dtype

    flags = section_values(settings.train)
    if saved is not None:
        ft = saved["finetune"]
        recipe = ft["recipe"]
        train_sections = {**saved.get("train", {}), **flags}
        diffs = resume_differences({"train": saved.get("train", {})}, {"train": train_sections})
        if diffs:
            raise UserError(f"cannot resume {out} with a changed configuration: {'; '.join(diffs)}; drop those flags")
        for name in RUN_FIXED:
            given = getattr(settings, name, None)
            if given not in (None, False) and given != ft.get(name):
                raise UserError(f"--{name.replace('_', '-')} differs from the run's ({ft.get(name)!r}); drop it when resuming")
        data_source, val_fraction = ft["data"], ft["val_fraction"]
        max_samples, field_map_spec = ft.get("max_samples"), ft.get("field_map")
        length_mode, train_on_prompt, skip_bad = ft["length_mode"], ft["train_on_prompt"], ft.get("skip_bad", False)
        lora = _resumed_lora(settings, ft.get("lora"), out)
        mix_saved = ft.get("mix") or {"rows": 0}
        for name, key in (("mix_rows", "rows"), ("mix_text", "text")):
            given = getattr(settings, name)
            if given is not None and given != mix_saved.get(key):
                raise UserError(f"--{name.replace('_', '-')} differs from the run's ({mix_saved.get(key)!r}); drop it when resuming")
        mix_rows, mix_text = mix_saved["rows"], mix_saved.get("text")
    else:
        recipe = settings.recipe
        if recipe not in RECIPES:
            raise UserError(f"unknown recipe {recipe!r}; choose one of {', '.join(sorted(RECIPES))}")
        train_sections = {**RECIPES[recipe], **flags}
        data_source, max_samples = settings.data, settings.max_samples
        if not data_source:
            from sifirdan.data import catalog

            data_source = catalog.DEFAULT_INSTRUCTIONS
            say(f"no --data given: fine-tuning on the default set, {catalog.describe(data_source)}")
        val_fraction = 0.1 if settings.val_fraction is None else settings.val_fraction
        field_map_spec, length_mode = settings.field_map, settings.length_mode or "drop"
        train_on_prompt, skip_bad = settings.train_on_prompt, settings.skip_bad
        lora = _lora_settings(settings)
        mix_saved = None
        mix_rows = settings.mix_rows
        mix_text = settings.mix_text
        if mix_text is not None:
            from sifirdan.data.corpus import resolve_inputs

            mix_text = [mix_text] if isinstance(mix_text, (str, Path)) else list(mix_text)
            mix_text = [str(t) for t in mix_text]
            resolve_inputs(mix_text)  # a missing file is reported now, before any slow work
        if mix_rows is not None and (isinstance(mix_rows, bool) or not isinstance(mix_rows, int) or mix_rows < 0):
            raise UserError(f"--mix-rows must be an integer >= 0 (0 = no pre-training text in the batches), got {mix_rows!r}")
        if mix_rows and recipe == "guide":
            raise UserError("--mix-rows works with the default recipe (one example per row); the guide's recipe "
                            "cuts windows from its examples: drop --mix-rows or --recipe guide")
    train_cfg = TrainConfig.from_dict(train_sections)
    if max_samples is not None and max_samples <= 0:
        raise UserError(f"--max-samples must be a positive integer, got {max_samples}")
    field_map = parse_field_map(field_map_spec)
    device = resolve_device(train_cfg.device, dist.local_rank)
    resolve_dtype(train_cfg.dtype, device)
    if mix_rows is None:  # the recipe's share of the batch, rounded down (a batch of 1..3 mixes nothing in)
        mix_rows = int(train_cfg.batch_size * MIX_SHARE[recipe])
    check_mix_rows(mix_rows, train_cfg.batch_size)  # before any slow work
    return _Plan(out, mode, saved, recipe, train_cfg, data_source, val_fraction, max_samples, field_map_spec,
                 field_map, length_mode, train_on_prompt, skip_bad, lora, device, mix_rows, mix_text, mix_saved)


def _run(settings: FinetuneSettings, plan: _Plan, dist, guard: RunGuard, say, log):
    import torch

    from sifirdan import notes, rundir
    from sifirdan.chat.template import TEMPLATE_KEY
    from sifirdan.train.distributed import init_distributed
    from sifirdan.train.finetune_data import finetune_data, guide_data
    from sifirdan.train.trainer import Trainer

    model, tokenizer, template, source_dir, grown_vocab = _base_model(settings, plan, say)
    records, convs, stats, d_hash, split = _conversations(plan, say)
    block_size = _block_size(settings, plan, model, tokenizer, template, split, say)
    examples = _examples(plan, model, tokenizer, template, split, block_size, grown_vocab, records, convs, stats, say)
    train_ex, val_ex, train_counts, val_counts = examples

    init_distributed(dist, plan.device)
    text_ids, mix = _mixed_text(settings, plan, tokenizer, block_size, dist, say)
    ft_settings = {
        "recipe": plan.recipe, "data": str(plan.data_source), "data_hash": d_hash, "val_fraction": plan.val_fraction,
        "max_samples": plan.max_samples, "field_map": plan.field_map_spec, "length_mode": plan.length_mode,
        "train_on_prompt": plan.train_on_prompt, "skip_bad": plan.skip_bad, "block_size": block_size,
        "base_model": plan.saved["finetune"]["base_model"] if plan.saved is not None else str(source_dir),
        "examples": {"train": train_counts.kept, "val": val_counts.kept, "duplicates": stats.duplicates,
                     "truncated": train_counts.truncated + val_counts.truncated,
                     "dropped": train_counts.dropped + val_counts.dropped},
    }
    ft_settings["mix"] = mix
    if plan.lora is not None:
        ft_settings["lora"] = plan.lora
    if dist.is_main and guard.run_dir is None:
        guard.run_dir = rundir.RunDir.open(plan.out, plan.mode, "finetune",
                                           {"train": plan.train_cfg.to_dict(), "finetune": ft_settings})

    cfg, pad_id = plan.train_cfg, tokenizer.special_tokens["<PAD>"]
    if plan.recipe == "guide":
        data = guide_data(train_ex, val_ex, cfg, block_size, pad_id, tokenizer, dist)
    else:
        data = finetune_data(train_ex, val_ex, cfg, pad_id, tokenizer, dist, text=text_ids, text_rows=mix["rows"],
                             block_size=block_size)
    data.samples = _answer_sampler(split.val or split.train, tokenizer, template, block_size)
    run_config = {TEMPLATE_KEY: template.to_dict(), "finetune": ft_settings}
    export_model = _apply_lora(plan, model, block_size, say)
    notes.c_extensions(main=dist.is_main, log=say)
    torch.manual_seed(cfg.seed)
    trainer = Trainer(model, cfg, data, tokenizer=tokenizer, out_dir=plan.out, run_config=run_config,
                      dist_info=dist, resume=plan.saved is not None, export_model=export_model, log=log)
    if trainer.device.type == "cpu":
        say(trainer.kernels_note)
    if plan.saved is not None:
        say(f"resumed {plan.out} at step {trainer.step}")
    return trainer.fit()


def _mixed_text(settings: FinetuneSettings, plan: _Plan, tokenizer, block_size: int, dist, say):
    """The token ids of the text mixed into every batch (its train split, tokenized once into the token-bin
    cache) and what the run records of the mix: ``{"rows", "text", "data"}``; ``(None, {"rows": 0})`` for none.

    By default the text is the base model's own pre-training text, as its checkpoint records it (corpus and data
    settings, so the split is the same and no val text is trained on); a base that records none (imported from
    Hugging Face, or fine-tuned already) is fine-tuned on its examples alone, with a note."""
    if not plan.mix_rows:
        return None, {"rows": 0}
    import torch

    from sifirdan import checkpoint as ckpt
    from sifirdan.data import prepare_bins
    from sifirdan.data.config import DataConfig

    if plan.mix_saved is not None:  # resumed: the run's own text and split
        text, data = plan.mix_saved.get("text"), plan.mix_saved.get("data") or {}
    elif plan.mix_text is not None:
        text, data = plan.mix_text, {}
    else:
        meta = ckpt.read_config(ckpt.resolve_checkpoint_dir(settings.model))
        if "corpus_hash" not in meta:
            say(f"note: {settings.model} records no pre-training text to mix into the batches; fine-tuning on the "
                "examples alone (--mix-text FILE mixes one in, --mix-rows 0 says this is meant)")
            return None, {"rows": 0}
        text, data = meta.get("data_source"), meta.get("data") or {}
    paths = None if text is None else list(text)  # None = the default corpus
    data_cfg = DataConfig(**data)
    if dist.is_main:
        bins = prepare_bins(paths, tokenizer, data_cfg, progress=True)
    if dist.enabled:  # rank 0 tokenizes; the others then read the cache
        torch.distributed.barrier()
    if not dist.is_main:
        bins = prepare_bins(paths, tokenizer, data_cfg, progress=False)
    ids = bins.split("train")
    from sifirdan.data.corpus import DEFAULT_CORPUS_NAME

    label = DEFAULT_CORPUS_NAME if text is None else ", ".join(paths)
    if len(ids) < block_size + 1:
        raise UserError(f"the text to mix into the batches ({label}) has {len(ids):,} tokens in its train split, fewer "
                        f"than one window of {block_size + 1}; pass --mix-rows 0, or a longer --mix-text")
    say(f"mixing pre-training text into every batch: {plan.mix_rows} of {plan.train_cfg.batch_size} rows from "
        f"{label} ({len(ids):,} tokens, its train split)")
    return ids, {"rows": plan.mix_rows, "text": text, "data": dict(data)}


def _base_model(settings: FinetuneSettings, plan: _Plan, say):
    """The base model and its tokenizer (a resumed run: its own last/, already grown), with the template's
    special tokens and <PAD> added, the vocabulary grown to match, and the dropout override applied."""
    from sifirdan import checkpoint as ckpt
    from sifirdan.chat.template import DEFAULT_TEMPLATE, TEMPLATE_KEY, ChatTemplate
    from sifirdan.model.resize import grow_vocab

    saved = plan.saved
    source_dir = ckpt.resolve_checkpoint_dir(plan.out / "last" if saved is not None else settings.model)
    model, tokenizer = ckpt.load_model(source_dir)
    base_meta = ckpt.read_config(source_dir)
    if plan.lora is not None:  # the rank against this model's width, before any slow work
        from sifirdan.model.lora import check_settings

        check_settings(plan.lora["rank"], plan.lora["alpha"], plan.lora["targets"], model.config.n_embd)
    if saved is None and TEMPLATE_KEY in base_meta:
        say(f"note: {source_dir} is fine-tuned already; fine-tuning it again on {plan.data_source}")
    template = ChatTemplate.from_dict(saved[TEMPLATE_KEY]) if saved is not None else (
        ChatTemplate.from_dict(base_meta[TEMPLATE_KEY]) if TEMPLATE_KEY in base_meta else DEFAULT_TEMPLATE)
    missing = template.missing_tokens(tokenizer)
    if missing:
        if saved is not None:
            raise UserError(f"{source_dir}: its tokenizer lacks {', '.join(missing)}; restore the checkpoint")
        tokenizer.add_special_tokens(missing)
        say(f"added special token(s) {' '.join(missing)} to the tokenizer (ids {model.config.vocab_size}..)")
    if "<PAD>" not in tokenizer.special_tokens:
        tokenizer.add_special_tokens(["<PAD>"])
    grown_vocab = grow_vocab(model, max(tokenizer.vocab_size, model.config.vocab_size))
    if settings.dropout is not None and saved is None:
        if not 0 <= settings.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1), got {settings.dropout}")
        model.config.dropout = settings.dropout
        for block in model.blocks:
            block.feed_forward.dropout.p = settings.dropout
    return model, tokenizer, template, source_dir, grown_vocab


def _data_hash(convs) -> str:
    h = hashlib.sha256()
    for c in convs:
        h.update(json.dumps(c, ensure_ascii=False, sort_keys=True).encode("utf-8"))
    return h.hexdigest()[:16]


def _conversations(plan: _Plan, say):
    """records -> conversations (exact duplicates removed) -> the seeded train/val split."""
    from sifirdan.data.instructions import ReadStats, read_records, split_conversations, to_conversations

    stats = ReadStats()
    records = read_records(plan.data_source, skip_bad=plan.skip_bad, stats=stats)
    convs = to_conversations(records, plan.field_map, skip_bad=plan.skip_bad, stats=stats)
    if plan.max_samples is not None:
        convs = convs[: plan.max_samples]
    if not convs:
        raise UserError(f"{plan.data_source}: no usable examples after filtering ({stats.records} records, "
                        f"{stats.skipped_bad} bad, {stats.duplicates} duplicates); check the file and --field-map")
    d_hash = _data_hash(convs)
    if plan.saved is not None and d_hash != plan.saved["finetune"].get("data_hash"):
        raise UserError(f"the data differs from the data {plan.out} was fine-tuned on; resume with the same --data")
    return records, convs, stats, d_hash, split_conversations(convs, plan.val_fraction, plan.train_cfg.seed)


def _block_size(settings: FinetuneSettings, plan: _Plan, model, tokenizer, template, split, say) -> int:
    """The context: ``block_size``, else the guide's 256 (guide recipe), else room for 95 % of the training
    examples (a multiple of 64, from the base's block up to 4x it)."""
    block_size = settings.block_size if plan.saved is None else plan.saved["finetune"]["block_size"]
    base_block = model.config.block_size
    if block_size is None:
        if plan.recipe == "guide":
            block_size = max(GUIDE_BLOCK_SIZE, base_block)
        else:
            lengths = sorted(len(template.render(c, tokenizer)[0]) - 1 for c in split.train)
            p95 = lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))] if lengths else base_block
            block_size = min(max(base_block, -(-p95 // 64) * 64), 4 * base_block)
            if block_size > base_block:
                say(f"block size {block_size} (the base model's is {base_block}): 95 % of the training "
                    f"examples fit in {p95 + 1} tokens; --block-size sets it")
    if block_size <= 0:
        raise UserError(f"--block-size must be a positive integer, got {block_size}")
    if block_size < base_block:
        raise UserError(f"--block-size {block_size} is below the base model's {base_block}; "
                        "fine-tune at the base's size or larger")
    return block_size


def _examples(plan: _Plan, model, tokenizer, template, split, block_size, grown_vocab, records, convs, stats, say):
    """Grow the context, check the memory, and render + fit every example to the block."""
    from sifirdan.limits import check_fits, training_bytes
    from sifirdan.model.resize import grow_context
    from sifirdan.train.finetune_data import tokenize_conversations

    grown_ctx = grow_context(model, block_size)
    if grown_vocab or grown_ctx:
        say(f"grew the model: +{grown_vocab} token rows (mean of the old ones), +{grown_ctx} position rows "
            "(copies of the last one); every old weight kept")
    fix = "lower --batch-size or --block-size"
    check_fits(training_bytes(model.config, plan.train_cfg.batch_size, plan.train_cfg.eval_iters),
               "this fine-tuning run", fix, plan.device)
    mode = plan.length_mode
    train_ex, train_counts = tokenize_conversations(split.train, tokenizer, template, block_size, mode, plan.train_on_prompt)
    val_ex, val_counts = tokenize_conversations(split.val, tokenizer, template, block_size, mode, False)
    if not train_ex:
        raise UserError(f"every training example is longer than the block of {block_size} tokens (the longest has "
                        f"{train_counts.longest}); pass --truncate, or --block-size {min(train_counts.longest, 4 * block_size)}")
    if train_counts.trained_tokens == 0:
        raise UserError("no token to train on after filtering (every answer is empty or cut away); check the data")
    say(f"data: {len(records)} records -> {len(convs)} examples ({stats.duplicates} duplicates removed"
        + (f", {stats.skipped_bad} bad skipped" if stats.skipped_bad else "") + f"); "
        f"train {train_counts.kept} (+{train_counts.truncated} truncated, {train_counts.dropped} dropped), "
        f"val {val_counts.kept} ({val_counts.truncated} truncated, {val_counts.dropped} dropped); "
        f"{train_counts.trained_tokens:,} trained tokens, block {block_size}")
    if mode == "drop" and train_counts.dropped:
        say(f"note: {train_counts.dropped} training example(s) longer than {block_size + 1} tokens were dropped "
            "(--truncate keeps their prompts and cuts the answers)")
    return train_ex, val_ex, train_counts, val_counts


def _apply_lora(plan: _Plan, model, block_size: int, say):
    """LoRA adapters when asked (their own seeded generator: their init moves no other randomness); says what
    is trained. Returns the trainer's ``export_model`` (the merged copy) or None."""
    import torch

    cfg, lora = plan.train_cfg, plan.lora
    n_params = model.num_parameters()
    export_model, trained_note = None, ""
    if lora is not None:
        from sifirdan.model.lora import apply_lora, merged_copy

        n_train = apply_lora(model, lora["rank"], lora["alpha"], lora["targets"],
                             generator=torch.Generator().manual_seed(cfg.seed))
        export_model = merged_copy
        trained_note = (f": LoRA rank {lora['rank']}, alpha {lora['alpha']:g} on {','.join(lora['targets'])}, "
                        f"{n_train / n_params:.2%} of the model")
    else:
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(f"model: {n_params:,} parameters ({n_train:,} trained{trained_note}), vocab {model.config.vocab_size}, "
        f"block {block_size}; recipe {plan.recipe}: lr {cfg.learning_rate:g} ({cfg.lr_schedule}), "
        f"batch {cfg.batch_size}, {cfg.max_iters} steps on {plan.device}")
    return export_model


def _lora_settings(settings: FinetuneSettings) -> dict | None:
    """``{"rank", "alpha", "targets"}`` from lora_rank / lora_alpha / lora_targets, or None without LoRA."""
    from sifirdan.model.lora import DEFAULT_TARGETS, check_settings

    if settings.lora_rank is None:
        for flag in ("alpha", "targets"):
            if getattr(settings, f"lora_{flag}") is not None:
                raise UserError(f"--lora-{flag} needs --lora-rank (LoRA is off without it); add e.g. --lora-rank 8")
        return None
    targets = settings.lora_targets if settings.lora_targets is not None else DEFAULT_TARGETS
    rank, alpha, targets = check_settings(settings.lora_rank, settings.lora_alpha, targets)
    return {"rank": rank, "alpha": alpha, "targets": targets}


def _resumed_lora(settings: FinetuneSettings, saved_lora: dict | None, out: Path) -> dict | None:
    """The run's LoRA settings; a lora_* setting given on resume must repeat them."""
    given = {k: getattr(settings, f"lora_{k}") for k in ("rank", "alpha", "targets")}
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
    stop, suppressed = template.stop_ids(tokenizer), template.suppressed_ids(tokenizer)

    def sample(model) -> list[dict]:
        if not prompts:
            return []
        engine = Engine(model, tokenizer)
        room = max(1, min(64, block_size - max(len(ids) for _, ids in prompts)))
        cfg = GenerationConfig(max_new_tokens=room, temperature=0, stop_token_ids=stop, suppress_token_ids=suppressed)
        results = engine.generate_ids([ids for _, ids in prompts], cfg)
        return [{"prompt": q, "text": r.text} for (q, _), r in zip(prompts, results)]

    return sample
