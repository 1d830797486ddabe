"""One flag per field of the config dataclasses (``n_embd`` -> ``--n-embd``), for pretrain and finetune.

A field whose flag several subcommands share (``--device``, ``--seed``, ``--block-size``, ...) takes its
definition from ``options.specs()``; every other field's description is in ``FIELD_HELP`` below -- a
metavar that names its unit (STEPS, EVALS, TOKENS, CHARS) and what it means. Fields with a fixed set of values
get argparse ``choices`` from the config module's ``FIELD_CHOICES``, the same tuple its ``validate()``
checks. tests/test_cli_help.py fails when a field has no description.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib

from sifirdan.cli import options

_TYPES = {"int": int, "float": float, "str": str}

# section -> field -> (metavar, help); help without the default (added from the dataclass, or default_of)
FIELD_HELP: dict[str, dict[str, tuple[str | None, str]]] = {
    "model": {
        "lm_head_bias": (None, "a bias in the LM head (the guide has one; `sifirdan export hf` folds it into "
                         "GPT-2's bias-free head, untied; without it a tied head exports as it is)"),
        "attention": (None, "how attention is computed, the same math either way: sdpa = PyTorch's fused kernel; "
                      "explicit = the guide's masked_fill + softmax"),
        "init": (None, "initial weights: guide = N(0, 0.02), zero biases; scaled = guide, with the residual output "
                 "projections' std divided by sqrt(2 * n_layer) (GPT-2); zero_out = guide, with the residual output "
                 "projections at zero (each block starts as the identity); pytorch = PyTorch's default init"),
        "position": (None, "how the model knows where a token is: learned = the guide's position table (block_size "
                     "rows); rope = rotary embeddings inside attention (no table; model/rope.py)"),
        "rope_theta": ("BASE", "RoPE's frequency base (--position rope only)"),
        "norm": (None, "the blocks' normalisation: layernorm = the guide's; rmsnorm = RMSNorm, no mean, no bias "
                 "(model/norms.py)"),
        "mlp": (None, "the feed-forward network: gelu = the guide's; relu2 = squared ReLU; swiglu = gated SiLU "
                "with ~8/3 x n_embd hidden units, as many parameters (model/mlp_variants.py)"),
        "qk_norm": (None, "RMS-normalise each head's queries and keys before attention"),
        "logit_softcap": ("CAP", "squash the logits smoothly into (-CAP, CAP) with CAP x tanh(logit / CAP); 0 = off"),
    },
    "train": {
        "grad_accum": ("N", "micro-batches whose gradients are summed into one optimizer step (at most 4096)"),
        "max_iters": ("STEPS", "how long to train, in optimizer steps"),
        "learning_rate": ("LR", "peak learning rate of AdamW (reached after the warmup)"),
        "optimizer": (None, "adamw = AdamW for every parameter; muon = Muon for the blocks' weight matrices, AdamW "
                      "for the embeddings, head and gains (train/muon.py)"),
        "muon_lr_scale": ("SCALE", "--optimizer muon: Muon's learning rate is --learning-rate x SCALE (its update "
                          "RMS is matched to AdamW's)"),
        "min_lr_ratio": ("RATIO", "cosine schedule: the rate decays to learning_rate x RATIO at the last step, 0..1"),
        "lr_schedule": (None, "cosine = a linear warmup, then a cosine decay; constant = one rate for every step "
                        "(the guide)"),
        "warmup_iters": ("STEPS", "linear warmup from 0 to the peak rate, in optimizer steps (cosine only)"),
        "weight_decay": ("WD", "AdamW's decoupled weight decay, on the weight matrices only (not biases or "
                         "LayerNorms, unless --decay-all)"),
        "decay_all": (None, "weight decay on every parameter, as AdamW(model.parameters()) in the guide"),
        "decay_embeddings": (None, "weight decay on the token and position embeddings too (with --tie-weights "
                             "also the LM head, the same matrix)"),
        "beta1": ("B1", "AdamW's beta1 (momentum), 0 <= B1 < 1"),
        "beta2": ("B2", "AdamW's beta2 (decay of the squared gradients' average), 0 <= B2 < 1"),
        "grad_clip": ("NORM", "clip the global gradient norm to NORM; 0 = no clipping"),
        "neftune_alpha": ("ALPHA", "NEFTune: uniform noise of size ALPHA / sqrt(tokens x n_embd) on the token "
                          "embeddings while training (train/neftune.py); 0 = off, 0..1000"),
        "eval_interval": ("STEPS", "estimate the train and val loss every STEPS optimizer steps (and at step 0 and "
                          "at the end)"),
        "eval_iters": ("BATCHES", "batches per split in each loss estimate, the same fixed batches every time (at "
                       "most 10000)"),
        "log_interval": ("STEPS", "a progress line and a metrics.jsonl record every STEPS optimizer steps"),
        "sample_interval": ("EVALS", "print a text sample every EVALS evaluations -- evaluations, not steps: "
                            "every EVALS x --eval-interval steps; 0 = never"),
        "sample_prompt": ("TEXT", "the text each sample continues"),
        "sample_tokens": ("TOKENS", "tokens generated for each sample (at most 32768)"),
        "checkpoint_interval": ("STEPS", "save last/ every STEPS optimizer steps (and at the end); 0 = only at the end"),
        "save_best": (None, "keep best/, the checkpoint of the lowest val loss seen, which a run directory given as "
                      "--model loads; --no-save-best: the run's model is its last/"),
        "final_eval": (None, "at the end, score every token of the validation split once (non-overlapping windows)"),
        "compile": (None, "torch.compile the model (a slower start, needs a C compiler; turns the C kernels off)"),
        "cpu_kernels": (None, "sifirdan's C kernels for fp32 CPU training where this CPU runs them fast (AVX2, "
                        "AVX-512; `sifirdan --version` says which); --no-cpu-kernels: PyTorch's ops only"),
        "flush_denormal": (None, "treat tiny floats (denormals) as 0 on the CPU: avoids very slow arithmetic on them"),
    },
    "data": {
        "dedup": (None, "drop exact repeats of long lines before the split (see --dedup-min-chars)"),
        "dedup_min_chars": ("CHARS", "lines at least CHARS characters long (after stripping spaces) are deduplicated"),
    },
}

_CONFIG_MODULES = {"model": "sifirdan.model.config", "train": "sifirdan.train.config", "data": "sifirdan.data.config"}


def _type_name(f: dataclasses.Field) -> str:
    return f.type if isinstance(f.type, str) else f.type.__name__


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, section: str, title: str, skip=(), default_of=None,
                        description: str | None = None) -> None:
    """One flag per dataclass field, default None so that a command can tell what the user set (the dest is
    ``section.field``). ``default_of(name)`` is the default to show, when it is not the field's own (finetune:
    its recipes')."""
    group = parser.add_argument_group(title, description)
    choices = getattr(importlib.import_module(_CONFIG_MODULES[section]), "FIELD_CHOICES", {})
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if flag in options.specs():
            spec = dict(options.specs()[flag])
        else:
            # a field added without a description still gets its flag (tests/test_cli_help.py asks for the words)
            metavar, text = FIELD_HELP[section].get(f.name, (None, f"{cls.__name__}.{f.name}"))
            spec = {"help": text} if metavar is None else {"help": text, "metavar": metavar}
        typ = _type_name(f)
        if typ == "bool":
            spec = {"help": spec["help"], "action": argparse.BooleanOptionalAction}
        else:
            spec.setdefault("type", _TYPES.get(typ, str))
            if f.name in choices:
                spec["choices"] = choices[f.name]
                spec.pop("metavar", None)  # argparse shows {a,b,c}
        note = default_of(f.name) if default_of else options.shown(f.default)
        options.argument(group, (flag,), spec, note=note, dest=f"{section}.{f.name}")
