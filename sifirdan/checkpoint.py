"""Checkpoints: one directory per saved model, readable without pickle.

    run_dir/
      last/   best/                  <- a checkpoint directory each
        config.json                  model config + training/data config + tokenizer fingerprint + checksums
        model.safetensors            the weights (a tied weight is stored once)
        tokenizer.json               the tokenizer (Hugging Face format)
        trainer_state.safetensors    optimizer moments, RNG states, ... (only tensors)   } only when saved
        trainer_state.json           step, schedule, sampler state, best val loss, ...    } by the trainer

Why no ``torch.save``: it pickles, and unpickling a file someone sent you can run arbitrary code. Here every
tensor goes to safetensors and everything else to JSON; nested Python state (an optimizer ``state_dict``, RNG
states) is split by ``pack_state`` into a JSON tree whose tensor leaves point into a flat safetensors dict.

A checkpoint is written with ``atomic_directory``: a crash or a full disk while saving leaves the previous
checkpoint whole. ``config.json`` records the sha256 of each safetensors file, so a truncated or corrupted
file is reported by name instead of loading garbage.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from sifirdan.errors import UserError
from sifirdan.fileio import atomic_directory

FORMAT = "sifirdan-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
STATE_TENSORS_FILE = "trainer_state.safetensors"
STATE_JSON_FILE = "trainer_state.json"


# ------------------------------------------------------------------------------------------------ helpers
def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain ``GPT`` inside DDP (``.module``) and/or ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dedupe_tied(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop tensors that share storage with an earlier one (safetensors refuses shared tensors).

    Returns the unique tensors and ``aliases``: dropped name -> name it shares memory with. With
    ``tie_weights`` this drops ``lm_head.weight`` (the same tensor as the token embedding).
    """
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in state.items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        unique[name] = t.detach().to("cpu").contiguous()
    return unique, aliases


def _tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})


def _load_tensor_file(path: Path, expected_sha: str | None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    fix = "it is truncated or corrupted; copy the checkpoint again or resume from another one"
    if not path.is_file():
        raise UserError(f"checkpoint file {path} is missing; save the checkpoint again or point to a complete one")
    data = path.read_bytes()
    if expected_sha is not None and _sha256(data) != expected_sha:
        raise UserError(f"{path} does not match the checksum in {CONFIG_FILE}: {fix}")
    try:
        return load(data)
    except Exception as e:  # safetensors raises its own SafetensorError (and others) for bad bytes
        raise UserError(f"{path} cannot be read ({str(e).splitlines()[0][:120]}): {fix}") from None


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise UserError(f"{what} {path} is missing; point to a complete checkpoint directory (or run dir)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); it is truncated or corrupted, copy the checkpoint again") from None


# ------------------------------------------------------------------------- nested state <-> JSON + tensors
def pack_state(obj: Any, prefix: str = "s") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split nested state into (JSON-able tree, flat tensor dict) -- the pickle-free ``state_dict`` format.

    Tensors become ``{"__tensor__": key}``; dicts with non-string keys (an optimizer's ``{param_index: ...}``)
    become ``{"__items__": [[k, v], ...]}``; tuples ``{"__tuple__": [...]}``; numpy arrays are stored as tensors.
    """
    import numpy as np

    tensors: dict[str, torch.Tensor] = {}

    def walk(x, path):
        if isinstance(x, torch.Tensor):
            tensors[path] = x
            return {"__tensor__": path}
        if isinstance(x, np.ndarray):
            tensors[path] = torch.from_numpy(np.ascontiguousarray(x))
            return {"__ndarray__": path}
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in x):
                return {k: walk(v, f"{path}.{k}") for k, v in x.items()}
            return {"__items__": [[k, walk(v, f"{path}.{i}")] for i, (k, v) in enumerate(x.items())]}
        if isinstance(x, tuple):
            return {"__tuple__": [walk(v, f"{path}.{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(x)]
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"cannot store {type(x).__name__} at {path} in a checkpoint without pickle")

    return walk(obj, prefix), tensors


def unpack_state(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of ``pack_state``."""

    def walk(x):
        if isinstance(x, dict):
            if "__tensor__" in x:
                return tensors[x["__tensor__"]]
            if "__ndarray__" in x:
                return tensors[x["__ndarray__"]].numpy()
            if "__items__" in x:
                return {k if not isinstance(k, list) else tuple(k): walk(v) for k, v in x["__items__"]}
            if "__tuple__" in x:
                return tuple(walk(v) for v in x["__tuple__"])
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    try:
        return walk(tree)
    except KeyError as e:
        raise UserError(f"{STATE_JSON_FILE} refers to tensor {e} that {STATE_TENSORS_FILE} lacks; the checkpoint is corrupted") from None


# ------------------------------------------------------------------------------------------------ saving
def save_checkpoint(
    directory: str | os.PathLike,
    model: torch.nn.Module,
    tokenizer,
    config: dict | None = None,
    trainer_state: dict | None = None,
) -> Path:
    """Write a complete checkpoint directory atomically; returns its path.

    ``config`` is stored in ``config.json`` next to the model config (e.g. ``{"train": ..., "data": ...}``);
    ``trainer_state`` is any nested dict of tensors / numbers / strings (see ``pack_state``).
    Everything is serialised in memory first, so a failure while writing never touches the old directory.
    """
    directory = Path(directory)
    model = unwrap_model(model)
    weights, aliases = _dedupe_tied(model.state_dict())
    files: dict[str, bytes] = {MODEL_FILE: _tensor_bytes(weights)}
    if tokenizer is not None:
        files[TOKENIZER_FILE] = tokenizer.to_json_str().encode("utf-8")
    if trainer_state is not None:
        tree, tensors = pack_state(trainer_state)
        files[STATE_TENSORS_FILE] = _tensor_bytes(tensors)
        files[STATE_JSON_FILE] = (json.dumps(tree, indent=1) + "\n").encode("utf-8")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **(config or {}),
        "model": model.config.to_dict(),  # the truth is the model object, whatever ``config`` said
        "tokenizer_fingerprint": tokenizer.fingerprint() if tokenizer is not None else None,
        "tied_weights": aliases,
        "sha256": {name: _sha256(data) for name, data in files.items() if name.endswith(".safetensors")},
    }
    files[CONFIG_FILE] = (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    with atomic_directory(directory) as tmp:
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
    return directory


def save_model(directory: str | os.PathLike, model: torch.nn.Module, tokenizer, config: dict | None = None) -> Path:
    """Save weights + tokenizer + config (no trainer state): what ``load_model`` needs."""
    return save_checkpoint(directory, model, tokenizer, config)


# ------------------------------------------------------------------------------------------------ loading
def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """A checkpoint directory, or a run directory (then its ``best/``, else its ``last/``)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; pass a run directory from `sifirdan pretrain --out` or a checkpoint inside it")
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a checkpoint directory; pass the directory that holds {CONFIG_FILE}")
    if (path / CONFIG_FILE).is_file():
        return path
    for sub in ("best", "last"):
        if (path / sub / CONFIG_FILE).is_file():
            return path / sub
    raise UserError(
        f"{path} holds no checkpoint ({CONFIG_FILE} not found there nor in best/ or last/); "
        f"pass a run directory from `sifirdan pretrain --out` or train one first"
    )


def read_config(directory: str | os.PathLike) -> dict:
    """``config.json`` of a checkpoint (or run) directory."""
    directory = resolve_checkpoint_dir(directory)
    meta = _read_json(directory / CONFIG_FILE, "checkpoint config")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("model"), dict):
        raise UserError(f"{directory / CONFIG_FILE} is not a sifirdan checkpoint config; pass a directory written by sifirdan")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{directory} was written by a newer sifirdan (format {meta['format_version']}); upgrade sifirdan")
    return meta


def load_weights(model: torch.nn.Module, directory: str | os.PathLike, meta: dict | None = None) -> None:
    """Load ``model.safetensors`` into an existing model (strict: every parameter must be there)."""
    directory = resolve_checkpoint_dir(directory)
    meta = meta or read_config(directory)
    path = directory / MODEL_FILE
    state = _load_tensor_file(path, meta.get("sha256", {}).get(MODEL_FILE))
    for alias, target in meta.get("tied_weights", {}).items():
        if target in state:
            state[alias] = state[target]
    model = unwrap_model(model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or bad_shape:
        detail = "; ".join(
            s for s in (
                f"missing {', '.join(missing[:5])}" if missing else "",
                f"unexpected {', '.join(unexpected[:5])}" if unexpected else "",
                f"wrong shape {', '.join(bad_shape[:5])}" if bad_shape else "",
            ) if s
        )
        raise UserError(f"{path} does not fit the model in {CONFIG_FILE} ({detail}); the checkpoint is inconsistent, save it again")
    with torch.no_grad():
        model.load_state_dict(state, strict=True)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load ``(model, tokenizer)`` from a checkpoint or run directory; the model is in eval mode."""
    from sifirdan.model import GPT, GPTConfig
    from sifirdan.tokenizer import BPETokenizer

    directory = resolve_checkpoint_dir(path)
    meta = read_config(directory)
    config = GPTConfig.from_dict(meta["model"])
    model = GPT(config)
    load_weights(model, directory, meta)
    tok_path = directory / TOKENIZER_FILE
    if not tok_path.is_file():
        raise UserError(f"{tok_path} is missing; copy the checkpoint again (it must hold {TOKENIZER_FILE})")
    tokenizer = BPETokenizer.load(tok_path)
    fp = meta.get("tokenizer_fingerprint")
    if fp and tokenizer.fingerprint() != fp:
        raise UserError(f"{tok_path} is not the tokenizer this model was trained with (fingerprint differs); restore the original {TOKENIZER_FILE}")
    return model.to(device).eval(), tokenizer


def has_trainer_state(directory: str | os.PathLike) -> bool:
    directory = Path(directory)
    return (directory / STATE_JSON_FILE).is_file() or (directory / STATE_TENSORS_FILE).is_file()


def load_trainer_state(directory: str | os.PathLike, meta: dict | None = None) -> dict:
    """The ``trainer_state`` given to ``save_checkpoint`` (tensors on CPU)."""
    directory = resolve_checkpoint_dir(directory)
    meta = meta or read_config(directory)
    tree = _read_json(directory / STATE_JSON_FILE, "trainer state")
    tensors = _load_tensor_file(directory / STATE_TENSORS_FILE, meta.get("sha256", {}).get(STATE_TENSORS_FILE))
    return unpack_state(tree, tensors)


__all__ = [
    "CONFIG_FILE",
    "MODEL_FILE",
    "TOKENIZER_FILE",
    "load_model",
    "load_trainer_state",
    "load_weights",
    "pack_state",
    "read_config",
    "resolve_checkpoint_dir",
    "save_checkpoint",
    "save_model",
    "unpack_state",
    "unwrap_model",
]
