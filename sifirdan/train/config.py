"""TrainConfig: every training hyperparameter in one typed dataclass, plus the training presets.

A run is configured by three dataclasses -- ``GPTConfig`` (the model), ``TrainConfig`` (this file) and the
data config -- layered as   defaults < preset < config file (TOML) < command-line flags.

The *default recipe* is the field defaults below (plus ``CPU_DEFAULT_DTYPE``); it is tuned by measurement, so
change it here and nowhere else. The ``guide`` preset is the guide's recipe (§8, §10) reproduced exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sifirdan.configs import MAX_SEED, check_choice, check_device, check_types, dataclass_from_dict
from sifirdan.errors import UserError
from sifirdan.model.config import LEGACY_KEYS as LEGACY_MODEL_KEYS

SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("adamw", "muon")  # muon: train/muon.py
DTYPES = ("auto", "fp32", "bf16", "fp16")
# fields that take one of a fixed set of values: validate() checks them, the CLI offers them as choices
FIELD_CHOICES = {"lr_schedule": SCHEDULES, "dtype": DTYPES, "optimizer": OPTIMIZERS}

# What ``--dtype auto`` means on a CPU. bf16 autocast halves memory traffic but is only faster on CPUs with
# native bf16 (AVX512-BF16 / AMX); measurements decide. One place to change it.
CPU_DEFAULT_DTYPE = "fp32"

MAX_NEFTUNE_ALPHA = 1000.0  # noise far above the embeddings' own size is a typo, not a recipe

# Upper bounds on counts that make one object each (a sampler per micro-step, a batch per eval iteration, a
# thread): a typo such as --grad-accum 1000000000 must be a message, not a hang while they are created.
LIMITS = {"grad_accum": 4096, "eval_iters": 10_000, "threads": 1024, "sample_tokens": 32768}


@dataclass
class TrainConfig:
    # --- batches: one optimizer step sees batch_size * grad_accum * world_size sequences of block_size tokens
    batch_size: int = 8  # sequences per micro-batch (per process); the guide: 32. 8 x block 256 = 2048 tokens a step
    grad_accum: int = 1  # micro-batches whose gradients are summed before one optimizer step
    max_iters: int = 1000  # optimizer steps
    # --- optimizer: AdamW, or Muon for the blocks' matrices + AdamW for the rest (train/muon.py)
    optimizer: str = "adamw"
    muon_lr_scale: float = 1.0  # Muon's learning rate = learning_rate * this (its update RMS is matched to AdamW's)
    learning_rate: float = 3e-3  # peak learning rate (the guide: 3e-4, constant)
    min_lr_ratio: float = 0.0  # cosine decays to learning_rate * min_lr_ratio
    lr_schedule: str = "cosine"  # "cosine": linear warmup then cosine decay; "constant": the guide's
    warmup_iters: int = 50  # linear warmup steps (cosine only)
    # decoupled weight decay on >= 2-D weights only (not biases/LayerNorm). 1.0, not the usual 0.1: on Nutuk the
    # default recipe sees the text ~11 times in the guide's wall time, and with tied embeddings 0.3 / 0.6 / 1.0 /
    # 1.5 gave 1.844 / 1.824 / 1.819 / 1.834 val bits/char, 1.0 with the cosine going to 0 1.814 and 1.812
    # (bench/RESULTS.md). One pass over a big corpus: try 0.1.
    weight_decay: float = 1.0
    decay_all: bool = False  # True: decay every parameter, as ``AdamW(model.parameters())`` in the guide
    # False: the token/position embeddings (with tied weights also the LM head) are not decayed. With the default's
    # LM-head bias carrying the tokens' unigram prior, decaying them is best; without a head bias the tied
    # embedding must carry it, and then not decaying helps. 1750 steps on Nutuk (bench/RESULTS.md, issue 12):
    # head bias + decay 1.829 val bits/char; no head bias: decay 1.864, no decay 1.848. Both undecayed and with
    # the bias, a `sifirdan pretrain` run scored val 4.873 nats/token against 4.878 without it: the two overlap.
    decay_embeddings: bool = True
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    # NEFTune (train/neftune.py): uniform noise of size alpha / sqrt(T * n_embd) on the token embeddings while
    # training; 0 = off. Off for pre-training; the default fine-tuning recipe sets 6 (train/finetuning.py).
    neftune_alpha: float = 0.0
    # --- evaluation, logging, samples, checkpoints (all in optimizer steps)
    eval_interval: int = 100  # estimate train/val loss every this many steps (and at step 0 and the end)
    eval_iters: int = 20  # batches per split in each estimate (the same fixed batches every time)
    log_interval: int = 10  # progress line / metrics record every this many steps
    sample_interval: int = 5  # print a text sample every this many evaluations; 0 = never
    sample_prompt: str = "Türk milleti"
    sample_tokens: int = 50
    checkpoint_interval: int = 500  # save last/ every this many steps (and at the end); 0 = only at the end
    # keep best/, the weights of the lowest val loss seen; a run directory given as a model loads best/, else
    # last/. Off in the default fine-tuning recipe: there the last model's answers score higher on held-out
    # questions than those of the lowest-val-loss one (train/finetuning.py).
    save_best: bool = True
    final_eval: bool = True  # a full, non-overlapping pass over the validation split at the end
    # --- runtime
    seed: int = 1337
    device: str = "auto"  # auto: cuda > mps > cpu
    dtype: str = "auto"  # fp32 | bf16 | fp16 (GPU only) | auto (bf16 on GPUs that have it, else fp16; CPU: CPU_DEFAULT_DTYPE)
    compile: bool = False  # torch.compile the model
    # sifirdan's C kernels (sifirdan/kernels) for fp32 CPU training and evaluation where this CPU runs them fast
    # (AVX-512): the same functions as PyTorch's ops, computed faster. False = PyTorch's ops only.
    cpu_kernels: bool = True
    # torch CPU threads; 0 = the cores other programs leave free, re-checked every log step (runtime.CpuShare),
    # split between local processes. A fixed count (e.g. 2) keeps float sums in one order: bit-exact resumes.
    threads: int = 0
    flush_denormal: bool = True  # treat tiny floats as 0 on CPU: avoids very slow denormal arithmetic

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        check_types(self)
        positive = ("batch_size", "grad_accum", "max_iters", "eval_interval", "eval_iters", "log_interval")
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise UserError(f"{name} must be a positive integer, got {v!r}; pass e.g. --{name.replace('_', '-')} 1")
        for name in ("warmup_iters", "sample_interval", "sample_tokens", "checkpoint_interval", "threads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise UserError(f"{name} must be an integer >= 0, got {v!r}")
        for name, top in LIMITS.items():
            if getattr(self, name) > top:
                raise UserError(f"{name} must be at most {top:,}, got {getattr(self, name):,}")
        if not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"seed must be an integer from 0 to 2**63 - 1, got {self.seed}; pass e.g. --seed 1337")
        if not self.learning_rate > 0:
            raise UserError(f"learning_rate must be > 0, got {self.learning_rate}; the guide uses 3e-4")
        if not (self.muon_lr_scale > 0 and self.muon_lr_scale < float("inf")):
            raise UserError(f"muon_lr_scale must be a finite number > 0, got {self.muon_lr_scale}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise UserError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name, choices in FIELD_CHOICES.items():
            check_choice(name, getattr(self, name), choices)
        check_device(self.device)  # a config file's typo is found with the other fields, before any work
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise UserError("weight_decay and grad_clip must be >= 0 (grad_clip 0 disables clipping)")
        if not 0 <= self.neftune_alpha <= MAX_NEFTUNE_ALPHA:
            raise UserError(f"neftune_alpha must be a number from 0 (off) to {MAX_NEFTUNE_ALPHA:g}, got {self.neftune_alpha}; "
                            "the NEFTune paper uses 5 to 15")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise UserError(f"beta1/beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return dataclass_from_dict(cls, d, "training")

    @staticmethod
    def upgrade_saved(d: dict) -> dict:
        """A training config as a checkpoint saved it, with the fields added since then set to what that run did:
        ``decay_embeddings`` was always on before it was a field (so a resumed old run keeps its optimizer
        groups). For configs read back from a checkpoint only; a new config's missing field takes the default."""
        if isinstance(d, dict) and "decay_embeddings" not in d:
            d = {**d, "decay_embeddings": True}
        if isinstance(d, dict) and "optimizer" not in d:  # AdamW was the only optimizer before the field
            d = {**d, "optimizer": "adamw", "muon_lr_scale": 1.0}
        if isinstance(d, dict) and "neftune_alpha" not in d:  # no run had embedding noise before the field
            d = {**d, "neftune_alpha": 0.0}
        if isinstance(d, dict) and "save_best" not in d:  # every run kept best/ before the field
            d = {**d, "save_best": True}
        return d


# Fields that may differ when a run is resumed: they change how long / how verbosely / where it runs, not what
# is learned step by step. (Changing max_iters with the cosine schedule does change the remaining LR curve.)
# Everything else -- model shape, learning rate, schedule, batch, seed, data, tokenizer -- must match.
RESUMABLE_FIELDS = frozenset(
    {
        "max_iters", "eval_interval", "eval_iters", "log_interval", "sample_interval", "sample_prompt",
        "sample_tokens", "checkpoint_interval", "final_eval", "device", "dtype", "compile", "threads",
        "flush_denormal", "cpu_kernels",
    }
)

# Training presets; a preset name also selects the model preset of the same name (sifirdan.model.MODEL_PRESETS).
TRAIN_PRESETS: dict[str, dict] = {
    # The guide's recipe (§8 hyperparameter table, §10 "our model"): torch.optim.AdamW(model.parameters(),
    # lr=3e-4) with PyTorch's defaults (betas 0.9/0.999, weight_decay 0.01 on every parameter), constant LR,
    # no clipping, batch 32 x block 128, 1000 steps, evaluation every 100 (model preset: vocab 500, dropout 0.1).
    "guide": dict(
        batch_size=32, max_iters=1000, learning_rate=3e-4, lr_schedule="constant", warmup_iters=0,
        weight_decay=0.01, decay_all=True, beta1=0.9, beta2=0.999, grad_clip=0.0, eval_interval=100,
    ),
    "nano": dict(batch_size=32, max_iters=1000, learning_rate=2e-3, eval_interval=100),
    "small": dict(batch_size=32, max_iters=3000, learning_rate=6e-4, warmup_iters=200, eval_interval=250),
    "medium": dict(batch_size=16, grad_accum=4, max_iters=5000, learning_rate=3e-4, warmup_iters=500, eval_interval=500),
}


def read_run_config(directory) -> dict:
    """A checkpoint's ``config.json`` (``checkpoint.read_config``: the format's checks, the model section
    upgraded) with its training section upgraded too (``TrainConfig.upgrade_saved``): what a resumed run
    continues from. The checkpoint layer knows files, not training settings; the upgrade lives here."""
    from sifirdan import checkpoint as ckpt

    meta = ckpt.read_config(directory)
    if isinstance(meta.get("train"), dict):
        meta["train"] = TrainConfig.upgrade_saved(meta["train"])  # an old run resumes as it was trained
    return meta


def resume_differences(saved: dict[str, dict], new: dict[str, dict]) -> list[str]:
    """Human-readable differences between a checkpoint's config and a resumed run's, except RESUMABLE_FIELDS.

    Both are ``{"model": {...}, "train": {...}, "data": {...}}``; a key missing on one side counts as a change.
    """
    diffs = []
    for section in sorted(set(saved) | set(new)):
        old, cur = saved.get(section, {}) or {}, new.get(section, {}) or {}
        for key in sorted(set(old) | set(cur)):
            if section == "train" and key in RESUMABLE_FIELDS:
                continue
            if section == "model" and key in LEGACY_MODEL_KEYS:  # e.g. cpu_kernels, once a model field
                continue
            a, b = old.get(key, "<unset>"), cur.get(key, "<unset>")
            if a != b:
                diffs.append(f"--{key.replace('_', '-')} {a!r} -> {b!r}")
    return diffs
