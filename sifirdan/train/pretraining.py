"""``pretrain()``: raw text -> tokenizer -> token bins -> a trained GPT in a run directory, in-process.

    from sifirdan.train import PretrainSettings, RunSettings, pretrain

    result = pretrain(PretrainSettings(source=["nutuk.txt"], model={"n_layer": 2}, train={"max_iters": 100}),
                      RunSettings(out="runs/nutuk"), log=print)
    result.run_dir, result.best_val_loss, result.final

Configuration layers: defaults (a resumed run: its own config) < ``preset`` < ``config_file`` (TOML) <
``model`` / ``train`` / ``data``. A section given as a dataclass (``GPTConfig(...)``) sets every field; one
given as a mapping sets only its keys, as command-line flags do. The layering walks the dataclasses' fields
(``layering.py``), so a field added to ``GPTConfig`` or ``TrainConfig`` needs no change here.

Cheap checks first, slow work after, the run directory last: a mistake found at any point before training
starts leaves ``out`` as it was (see sifirdan/rundir.py for the run-directory rules). Under ``torchrun`` every
process calls ``pretrain`` with the same settings; rank 0 owns the run directory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sifirdan.errors import UserError
from sifirdan.train.layering import SECTIONS, build_configs, layer_config, load_toml, section_values
from sifirdan.train.stage import Log, RunGuard, RunSettings, StageResult, open_run_dir, reporter


@dataclass
class PretrainSettings:
    """What to pre-train on and how. ``model`` / ``train`` / ``data``: a ``GPTConfig`` / ``TrainConfig`` /
    ``DataConfig`` (every field set) or a mapping of field names (only those set); ``None``: the layers below."""

    source: list[str | Path] | None = None  # text files, folders or corpus names; None: the default corpus
    tokenizer: str | Path | None = None  # a tokenizer.json; None: train one on the train split, saved in the run
    preset: str | None = None
    config_file: str | Path | None = None
    model: Any = None
    train: Any = None
    data: Any = None
    cache_dir: str | Path | None = None  # None: $SIFIRDAN_CACHE, else ~/.cache/sifirdan

    def overrides(self) -> dict[str, dict]:
        """{section: {field: value}}: what these settings set, above the preset and the config file."""
        return {s: section_values(getattr(self, s)) for s in SECTIONS}


@dataclass
class _Plan:
    """The settings of one run once layered and checked: what the later steps read."""

    out: Path
    mode: str
    saved: dict | None
    sections: dict
    user_set: set
    preset: str | None
    model_cfg: Any
    train_cfg: Any
    data_cfg: Any
    device: Any
    cache_root: Path
    paths: list | None
    corpus_hash: str


def pretrain(settings: PretrainSettings, run: RunSettings, log: Log | None = None) -> StageResult:
    """Pre-train a GPT; returns the run directory and how training ended. Bad input raises ``UserError``
    (one line: the problem and the fix) before anything is written."""
    from sifirdan.train.config import read_run_config
    from sifirdan.train.distributed import env_dist_info

    file_cfg = load_toml(settings.config_file) if settings.config_file else None
    preset = settings.preset or (file_cfg or {}).pop("preset", None)
    dist = env_dist_info()
    say = reporter(log, dist.is_main)

    # ---- the run directory: read-only checks now (rank 0 owns it; the others only read what it writes)
    out, mode, run_dir = open_run_dir(run, "pretrain", dist.is_main, say)
    saved = read_run_config(out / "last") if mode == "resume" else None
    with RunGuard(mode, run_dir, dist) as guard:
        plan = _plan(settings, file_cfg, preset, out, mode, saved, dist, say)
        result = _train(settings, plan, dist, guard, say, log)
        guard.finished = True
    return StageResult.of(out, result)


def _plan(settings, file_cfg, preset, out, mode, saved, dist, say) -> _Plan:
    """Layer and check every setting, cheapest first; hash the data (reads, never tokenizes)."""
    from sifirdan.data import corpus_hash, default_cache_dir
    from sifirdan.data.corpus import DEFAULT_CORPUS_NAME, resolve_inputs
    from sifirdan.fileio import check_writable_dir
    from sifirdan.limits import check_fits, training_bytes
    from sifirdan.train.config import resume_differences
    from sifirdan.train.runtime import resolve_device, resolve_dtype

    base = {s: saved.get(s, {}) for s in SECTIONS} if saved else {}
    sections, user_set = layer_config(base, preset, file_cfg, settings.overrides())
    if saved is not None:
        diffs = resume_differences({s: saved.get(s, {}) for s in SECTIONS}, sections)
        if diffs:
            raise UserError(f"cannot resume {out} with a changed configuration: {'; '.join(diffs)}; "
                            "drop those flags or start a new run with --out")
    model_cfg, train_cfg, data_cfg = build_configs(sections)
    device = resolve_device(train_cfg.device, dist.local_rank)
    resolve_dtype(train_cfg.dtype, device)  # e.g. fp16 on a CPU: refused before any slow work
    fix = "lower --batch-size, --block-size, --n-embd, --n-layer or --vocab-size"
    check_fits(training_bytes(model_cfg, train_cfg.batch_size, train_cfg.eval_iters), "this run", fix, device)
    cache_root = Path(settings.cache_dir).expanduser() if settings.cache_dir else default_cache_dir()
    if dist.is_main:
        check_writable_dir(cache_root, "the token-bin cache", "pass --cache-dir DIR (or set SIFIRDAN_CACHE) to a folder you can write")

    # ---- data source; on resume it must be the data the run was trained on
    paths = list(settings.source) if settings.source else (saved.get("data_source") if saved else None)
    if paths is None:
        say(f"no --data given: training on the default corpus, {DEFAULT_CORPUS_NAME}")
    else:
        resolve_inputs(paths)  # a missing file is reported now
    c_hash = corpus_hash(paths)
    if saved is not None and saved.get("corpus_hash") and c_hash != saved["corpus_hash"]:
        raise UserError(f"the data differs from the data {out} was trained on; resume with the same --data or start a new run")
    return _Plan(out, mode, saved, sections, user_set, preset, model_cfg, train_cfg, data_cfg, device, cache_root,
                 paths, c_hash)


def _train(settings, plan: _Plan, dist, guard: RunGuard, say, log):
    """Tokenizer, token bins, model, the loop; the run directory is opened once every input check has passed."""
    import torch

    from sifirdan import checkpoint as ckpt
    from sifirdan import notes, rundir
    from sifirdan.data import prepare_bins
    from sifirdan.model import GPT
    from sifirdan.tokenizer import BPETokenizer
    from sifirdan.train.distributed import init_distributed
    from sifirdan.train.pretrain_data import check_split_lengths, pretrain_data
    from sifirdan.train.trainer import Trainer

    init_distributed(dist, plan.device)
    notes.c_extensions(main=dist.is_main, log=say)  # before the slow work they would speed up: say why it is slow
    tokenizer, trained_here = _tokenizer(settings, plan, dist, say)

    # ---- token bins (rank 0 tokenizes, the others then hit the cache), checked against block_size
    out, bins = plan.out, None
    if dist.is_main:
        bins = prepare_bins(plan.paths, tokenizer, plan.data_cfg, cache_dir=plan.cache_root,
                            known_corpus_hash=plan.corpus_hash)
        say(bins.describe())
        check_split_lengths(bins, plan.model_cfg.block_size)
        if guard.run_dir is None:
            guard.run_dir = rundir.RunDir.open(out, plan.mode, "pretrain", plan.sections)
        if trained_here:
            tokenizer.save(out / ckpt.TOKENIZER_FILE)
            say(f"saved {out / ckpt.TOKENIZER_FILE} ({tokenizer.vocab_size} ids)")
    if dist.enabled:
        torch.distributed.barrier()
    if not dist.is_main:
        if tokenizer is None:
            tokenizer = BPETokenizer.load(out / ckpt.TOKENIZER_FILE)
            _fit_vocab(tokenizer, settings, plan)
        bins = prepare_bins(plan.paths, tokenizer, plan.data_cfg, cache_dir=plan.cache_root, progress=False,
                            known_corpus_hash=plan.corpus_hash)

    # ---- model + trainer
    model_cfg, train_cfg = plan.model_cfg, plan.train_cfg
    torch.manual_seed(train_cfg.seed)  # the same initial weights on every rank (DDP also broadcasts them)
    model = GPT(model_cfg)
    run_config = {
        "preset": plan.preset if plan.saved is None else plan.saved.get("preset"),
        "data": dataclasses.asdict(plan.data_cfg),
        "data_source": None if plan.paths is None else [str(p) for p in plan.paths],
        "corpus_hash": bins.meta["corpus_hash"],
        "data_splits": bins.meta["splits"],
    }
    tokens_per_step = train_cfg.batch_size * model_cfg.block_size * train_cfg.grad_accum * dist.world_size
    say(f"model: {model.num_parameters():,} parameters ({model_cfg.n_layer} layers, n_embd {model_cfg.n_embd}, "
        f"{model_cfg.n_head} heads, block {model_cfg.block_size}, vocab {model_cfg.vocab_size}); "
        f"{tokens_per_step:,} tokens/step x {train_cfg.max_iters} steps on {plan.device}"
        + (f" x {dist.world_size} processes" if dist.enabled else ""))
    trainer = Trainer(model, train_cfg, pretrain_data(bins, train_cfg, model_cfg.block_size, dist),
                      tokenizer=tokenizer, out_dir=out, run_config=run_config, dist_info=dist,
                      resume=plan.saved is not None, log=log)
    if trainer.device.type == "cpu":
        say(trainer.kernels_note)
    if plan.saved is not None:
        say(f"resumed {out} at step {trainer.step}")
    return trainer.fit()


def _tokenizer(settings, plan: _Plan, dist, say):
    """(tokenizer, trained here?): the resumed run's, the caller's, or one trained on the train split (in
    memory: the run directory is written only once every input check has passed). Other ranks: None, loaded
    from the run directory once rank 0 has written it."""
    from sifirdan import checkpoint as ckpt
    from sifirdan import notes
    from sifirdan.data import iter_train_texts
    from sifirdan.tokenizer import BPETokenizer

    trained_here = False
    if plan.saved is not None:
        tokenizer = ckpt.load_tokenizer(plan.out / "last")
        if settings.tokenizer and BPETokenizer.load(settings.tokenizer).fingerprint() != tokenizer.fingerprint():
            raise UserError(f"--tokenizer {settings.tokenizer} is not the tokenizer of {plan.out}; drop --tokenizer when resuming")
    elif settings.tokenizer:
        tokenizer = BPETokenizer.load(settings.tokenizer)
    elif dist.is_main:
        vocab = plan.sections["model"].get("vocab_size", plan.model_cfg.vocab_size)
        say(f"training a BPE tokenizer with {vocab} ids on the train split ...")
        with notes.warnings_as_notes(log=say):  # e.g. "stopped at vocab size N": one line, not Python's two
            tokenizer = BPETokenizer.train(iter_train_texts(plan.paths, plan.data_cfg), vocab_size=vocab)
        trained_here = True
    else:
        return None, False
    _fit_vocab(tokenizer, settings, plan)
    return tokenizer, trained_here


def _fit_vocab(tokenizer, settings, plan: _Plan) -> None:
    """The model's vocabulary must cover every id the tokenizer can produce; without a set vocab_size it is
    the tokenizer's size (``plan``'s configs are rebuilt then)."""
    if "model.vocab_size" in plan.user_set and plan.saved is None and settings.tokenizer:
        if tokenizer.vocab_size > plan.model_cfg.vocab_size:
            raise UserError(
                f"the tokenizer has {tokenizer.vocab_size} ids but --vocab-size is {plan.model_cfg.vocab_size}; "
                f"pass --vocab-size {tokenizer.vocab_size} (or omit it to take the tokenizer's size)"
            )
    elif plan.saved is None:
        plan.sections["model"]["vocab_size"] = tokenizer.vocab_size
        plan.model_cfg, plan.train_cfg, plan.data_cfg = build_configs(plan.sections)
    if tokenizer.vocab_size > plan.model_cfg.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} ids, more than the model's vocab_size {plan.model_cfg.vocab_size}")
