"""``sifirdan pretrain``: raw text -> tokenizer -> token bins -> a trained GPT in a run directory.

    sifirdan pretrain --data nutuk.txt --out runs/nutuk                   # default recipe
    sifirdan pretrain --data nutuk.txt --out runs/guide --preset guide    # the guide's §8 recipe, exactly
    sifirdan pretrain --resume runs/nutuk --max-iters 4000                # continue (bit-exact)
    torchrun --nproc_per_node=2 -m sifirdan pretrain --data nutuk.txt --out runs/ddp

Configuration layers: defaults < --preset < --config FILE.toml < command-line flags. Every field of GPTConfig,
TrainConfig and DataConfig is a flag (``n_embd`` -> ``--n-embd``), described in ``sifirdan/cli/config_flags.py``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from sifirdan.errors import UserError

SECTIONS = ("model", "train", "data")


def _section_classes():
    from sifirdan.data import DataConfig
    from sifirdan.model import GPTConfig
    from sifirdan.train.config import TrainConfig

    return {"model": GPTConfig, "train": TrainConfig, "data": DataConfig}


def _field_types(cls) -> dict[str, str]:
    return {f.name: (f.type if isinstance(f.type, str) else f.type.__name__) for f in dataclasses.fields(cls)}


def explicit_flags(args) -> dict[str, dict]:
    """{section: {field: value}} for the flags given on the command line."""
    out: dict[str, dict] = {s: {} for s in SECTIONS}
    for dest, value in vars(args).items():
        if "." in dest and value is not None:
            section, name = dest.split(".", 1)
            out[section][name] = value
    return out


def load_toml(path: str | Path) -> dict[str, dict]:
    """A config file: ``[model]`` / ``[train]`` / ``[data]`` tables, or flat keys routed by field name;
    ``preset = "guide"`` at the top is allowed."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; fix the --config path")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid TOML ({e}); fix the file") from None
    except RecursionError:  # tomllib parses nested arrays recursively: [[[[... 100,000 deep
        raise UserError(f"{path} nests arrays or tables too deeply to be a config file; fix the file") from None
    fields = {s: set(_field_types(c)) for s, c in _section_classes().items()}
    out: dict[str, dict] = {s: {} for s in SECTIONS}
    preset = raw.pop("preset", None)
    for key, value in raw.items():
        if key in SECTIONS and isinstance(value, dict):
            for k, v in value.items():
                if k not in fields[key]:
                    raise UserError(f"{path}: unknown key {k!r} in [{key}]; valid keys: {', '.join(sorted(fields[key]))}")
                out[key][k] = v
            continue
        owners = [s for s in SECTIONS if key in fields[s]]
        if not owners:
            valid = sorted(set().union(*fields.values()) | {"preset"})
            raise UserError(f"{path}: unknown key {key!r}; valid keys: {', '.join(valid)}")
        out[owners[0]][key] = value
    if preset is not None:
        out["preset"] = preset  # type: ignore[assignment]
    return out


def layer_config(base: dict[str, dict], preset: str | None, file_cfg: dict | None, flags: dict[str, dict]) -> tuple[dict, set]:
    """defaults (or a resumed run's config) < preset < config file < flags. Returns (sections, keys the user set)."""
    from sifirdan.model import MODEL_PRESETS
    from sifirdan.train.config import TRAIN_PRESETS

    sections = {s: dict(base.get(s, {})) for s in SECTIONS}
    user_set: set[str] = set()
    if preset is not None:
        if preset not in MODEL_PRESETS or preset not in TRAIN_PRESETS:
            valid = sorted(set(MODEL_PRESETS) & set(TRAIN_PRESETS))
            raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(valid)}")
        sections["model"].update(MODEL_PRESETS[preset])
        sections["train"].update(TRAIN_PRESETS[preset])
    for layer in (file_cfg or {}, flags):
        for s in SECTIONS:
            sections[s].update(layer.get(s, {}))
            user_set |= {f"{s}.{k}" for k in layer.get(s, {})}
    return sections, user_set


def build_configs(sections: dict[str, dict]):
    classes = _section_classes()
    from sifirdan.configs import dataclass_from_dict
    from sifirdan.data import DataConfig

    model_cfg = classes["model"].from_dict(sections["model"])
    train_cfg = classes["train"].from_dict(sections["train"])
    data_cfg = dataclass_from_dict(DataConfig, sections["data"], "data").validate()
    return model_cfg, train_cfg, data_cfg


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


def open_run_dir(args, command: str, main: bool = True, example: str = "runs/first"):
    """``--out`` / ``--resume`` / ``--overwrite`` -> ``(out, mode, run_dir)``: the read-only checks of
    sifirdan/rundir.py now. A resumed run is locked (and a crashed save repaired) at once -- resuming writes
    nothing new before training, and the checkpoint read next must be the one this process continues; a new
    run's directory is opened only after every input check has passed (``run_dir`` is None then)."""
    from sifirdan import rundir

    run_dir = None
    if args.resume:
        out = Path(args.resume)
        if args.out and Path(args.out).resolve() != out.resolve():
            raise UserError(f"--out {args.out} differs from --resume {args.resume}; a resumed run stays in its directory (drop --out)")
        if args.overwrite:
            raise UserError("--overwrite starts a run anew and --resume continues one; give one of them")
        mode = "resume"
    else:
        if not args.out:
            raise UserError(f"--out RUN_DIR is required (where checkpoints and metrics go); e.g. --out {example}")
        out = Path(args.out)
        mode = "overwrite" if args.overwrite else "new"
    if main:
        rundir.check_out_dir(out, mode)
        if mode == "resume":
            run_dir = rundir.RunDir.open(out, mode, command, {})
            for note in run_dir.repairs:
                _say(f"repaired {out}: {note}")
    return out, mode, run_dir


def _say(msg: str, main: bool = True) -> None:
    if main:
        print(msg, file=sys.stderr, flush=True)


def run(args) -> int:
    """Cheap checks first, slow work after, the run directory last: a mistake found at any point before
    training starts leaves --out as it was (see sifirdan/rundir.py for the run-directory rules)."""
    import torch

    from sifirdan import checkpoint as ckpt
    from sifirdan import rundir
    from sifirdan.cli import notes
    from sifirdan.data.corpus import DEFAULT_CORPUS_NAME, resolve_inputs
    from sifirdan.data import corpus_hash, default_cache_dir, iter_train_texts, prepare_bins
    from sifirdan.fileio import check_writable_dir
    from sifirdan.limits import check_fits, training_bytes
    from sifirdan.model import GPT
    from sifirdan.tokenizer import BPETokenizer
    from sifirdan.train.config import resume_differences
    from sifirdan.train.distributed import env_dist_info, init_distributed, shutdown_distributed
    from sifirdan.train.pretrain import check_split_lengths, pretrain_data
    from sifirdan.train.runtime import resolve_device, resolve_dtype
    from sifirdan.train.trainer import Trainer

    flags = explicit_flags(args)
    file_cfg = load_toml(args.config) if args.config else None
    preset = args.preset or (file_cfg or {}).pop("preset", None)
    dist = env_dist_info()
    main = dist.is_main

    # ---- the run directory: read-only checks now (rank 0 owns it; the others only read what it writes)
    out, mode, run_dir = open_run_dir(args, "pretrain", main)
    saved = ckpt.read_config(out / "last") if mode == "resume" else None
    base = {s: saved.get(s, {}) for s in SECTIONS} if saved else {}
    finished = False
    try:
        sections, user_set = layer_config(base, preset, file_cfg, flags)
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
        cache_root = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
        if main:
            check_writable_dir(cache_root, "the token-bin cache", "pass --cache-dir DIR (or set SIFIRDAN_CACHE) to a folder you can write")

        # ---- data source; on resume it must be the data the run was trained on (hashing reads, never tokenizes)
        paths = args.data if args.data else (saved.get("data_source") if saved else None)
        if paths is None:
            _say(f"no --data given: training on the default corpus, {DEFAULT_CORPUS_NAME}", main)
        else:
            resolve_inputs(paths)  # a missing file is reported now
        c_hash = corpus_hash(paths)
        if saved is not None and saved.get("corpus_hash") and c_hash != saved["corpus_hash"]:
            raise UserError(f"the data differs from the data {out} was trained on; resume with the same --data or start a new run")
        init_distributed(dist, device)

        def barrier():
            if dist.enabled:
                torch.distributed.barrier()

        notes.c_extensions(main=main)  # before the slow work they would speed up: say why it is slow
        # ---- tokenizer (in memory: the run directory is written only once every input check has passed)
        trained_here = False
        if saved is not None:
            tokenizer = ckpt.load_tokenizer(out / "last")
            if args.tokenizer and BPETokenizer.load(args.tokenizer).fingerprint() != tokenizer.fingerprint():
                raise UserError(f"--tokenizer {args.tokenizer} is not the tokenizer of {out}; drop --tokenizer when resuming")
        elif args.tokenizer:
            tokenizer = BPETokenizer.load(args.tokenizer)
        elif main:
            vocab = sections["model"].get("vocab_size", model_cfg.vocab_size)
            _say(f"training a BPE tokenizer with {vocab} ids on the train split ...")
            with notes.warnings_as_notes():  # e.g. "stopped at vocab size N": one line, not Python's two
                tokenizer = BPETokenizer.train(iter_train_texts(paths, data_cfg), vocab_size=vocab)
            trained_here = True
        else:
            tokenizer = None  # loaded from the run directory once rank 0 has written it (below)
        if tokenizer is not None:
            model_cfg, train_cfg, data_cfg = _fit_vocab(tokenizer, sections, user_set, saved, args, model_cfg, train_cfg, data_cfg)

        # ---- token bins (rank 0 tokenizes, the others then hit the cache), checked against block_size
        bins = None
        if main:
            bins = prepare_bins(paths, tokenizer, data_cfg, cache_dir=cache_root, known_corpus_hash=c_hash)
            _say(bins.describe())
            check_split_lengths(bins, model_cfg.block_size)
            if run_dir is None:
                run_dir = rundir.RunDir.open(out, mode, "pretrain", sections)
            if trained_here:
                tokenizer.save(out / ckpt.TOKENIZER_FILE)
                _say(f"saved {out / ckpt.TOKENIZER_FILE} ({tokenizer.vocab_size} ids)")
        barrier()
        if not main:
            if tokenizer is None:
                tokenizer = BPETokenizer.load(out / ckpt.TOKENIZER_FILE)
                model_cfg, train_cfg, data_cfg = _fit_vocab(tokenizer, sections, user_set, saved, args, model_cfg, train_cfg, data_cfg)
            bins = prepare_bins(paths, tokenizer, data_cfg, cache_dir=cache_root, progress=False, known_corpus_hash=c_hash)

        # ---- model + trainer
        torch.manual_seed(train_cfg.seed)  # the same initial weights on every rank (DDP also broadcasts them)
        model = GPT(model_cfg)
        run_config = {
            "preset": preset if saved is None else saved.get("preset"),
            "data": dataclasses.asdict(data_cfg),
            "data_source": None if paths is None else [str(p) for p in paths],
            "corpus_hash": bins.meta["corpus_hash"],
            "data_splits": bins.meta["splits"],
        }
        tokens_per_step = train_cfg.batch_size * model_cfg.block_size * train_cfg.grad_accum * dist.world_size
        _say(
            f"model: {model.num_parameters():,} parameters ({model_cfg.n_layer} layers, n_embd {model_cfg.n_embd}, "
            f"{model_cfg.n_head} heads, block {model_cfg.block_size}, vocab {model_cfg.vocab_size}); "
            f"{tokens_per_step:,} tokens/step x {train_cfg.max_iters} steps on {device}"
            + (f" x {dist.world_size} processes" if dist.enabled else ""),
            main,
        )
        trainer = Trainer(model, train_cfg, pretrain_data(bins, train_cfg, model_cfg.block_size, dist),
                          tokenizer=tokenizer, out_dir=out, run_config=run_config, dist_info=dist,
                          resume=saved is not None)
        if trainer.device.type == "cpu":
            _say(trainer.kernels_note, main)
        if saved is not None:
            _say(f"resumed {out} at step {trainer.step}", main)
        result = trainer.fit()
        finished = True
    except BaseException:
        # a new run that stops before its first checkpoint (a bad input found late, a crash, Ctrl-C during
        # start-up) has nothing to resume: --out is left as it was found (abandon keeps any checkpoint)
        if run_dir is not None and mode != "resume":
            run_dir.abandon()
        raise
    finally:
        shutdown_distributed(wait_for_others=finished)
        if run_dir is not None:
            run_dir.close()

    return finish_run(result, main, "best val loss {best}; " + f"model in {out} "
                      f"(try: sifirdan generate --model {out} / sifirdan eval --model {out} --data FILE)")


def finish_run(result, main: bool, done_line: str) -> int:
    """The exit code of a training run, and its last line: ``done_line`` with ``{best}`` filled in."""
    if result.status == "diverged":
        print(f"sifirdan: error: {result.message}", file=sys.stderr)
        return 1
    if result.status == "interrupted":
        return 143 if result.signal_name == "SIGTERM" else 130
    if main:
        best = f"{result.best_val_loss:.4f}" if result.best_val_loss is not None else "n/a"
        print(f"done: {result.step} steps, " + done_line.replace("{best}", best))  # not .format: paths may hold braces
    return 0


def _fit_vocab(tokenizer, sections, user_set, saved, args, model_cfg, train_cfg, data_cfg):
    """The model's vocabulary must cover every id the tokenizer can produce; without --vocab-size it is the
    tokenizer's size."""
    if "model.vocab_size" in user_set and saved is None and args.tokenizer:
        if tokenizer.vocab_size > model_cfg.vocab_size:
            raise UserError(
                f"the tokenizer has {tokenizer.vocab_size} ids but --vocab-size is {model_cfg.vocab_size}; "
                f"pass --vocab-size {tokenizer.vocab_size} (or omit it to take the tokenizer's size)"
            )
    elif saved is None:
        sections["model"]["vocab_size"] = tokenizer.vocab_size
        model_cfg, train_cfg, data_cfg = build_configs(sections)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} ids, more than the model's vocab_size {model_cfg.vocab_size}")
    return model_cfg, train_cfg, data_cfg
