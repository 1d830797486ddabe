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
checkpoint whole. ``config.json`` records the sha256 of every other file, so a truncated or corrupted file is
reported by name instead of loading garbage, and ``verify_checkpoint_dir`` can tell a complete directory from
a half-written one after a crash.

Loading trusts nothing it has not checked, in an order that allocates nothing first: ``config.json``'s field
types, then the safetensors header (its size against the file's, every tensor's dtype, shape and byte range),
then every shape the config implies against the header (a ``block_size`` or ``vocab_size`` edited to 10**9
is refused here), then the architecture the weights were saved with (kept in the safetensors metadata, so a
hand-edited ``n_head`` that leaves every shape alone is refused too), then the memory it needs -- and only
then is the model built.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from sifirdan.configs import is_int
from sifirdan.errors import UserError
from sifirdan.fileio import atomic_directory, parse_json, sha256_hex

FORMAT = "sifirdan-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
STATE_TENSORS_FILE = "trainer_state.safetensors"
STATE_JSON_FILE = "trainer_state.json"
# safetensors metadata key holding the model config the weights were saved with (the architecture record)
ARCH_KEY = "sifirdan.model"
# GPTConfig fields that choose how the same function is computed, not what it is: they may differ
# (cpu_kernels: a model field in older checkpoints, a TrainConfig field now)
RUNTIME_FIELDS = frozenset({"attention", "cpu_kernels"})
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit for the JSON header


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


def _tensor_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=metadata)


_CORRUPT = "it is truncated or corrupted; copy the checkpoint again or resume from another one"


def read_safetensors_header(path: Path) -> tuple[dict[str, dict], dict[str, str]]:
    """``(tensors, metadata)`` from a safetensors file's header, every field checked against the file.

    Reads only the header (at most ``MAX_HEADER_BYTES``): each tensor's dtype is known, its shape is a list of
    non-negative integers, its byte range lies inside the file and holds exactly shape x dtype bytes, and the
    ranges tile the data section. After this, loading the file cannot allocate more than its own size.
    """

    def bad(problem: str):
        return UserError(f"{path} {problem}: {_CORRUPT}")

    if not path.is_file():
        raise UserError(f"checkpoint file {path} is missing; save the checkpoint again or point to a complete one")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad(f"has {size} bytes, fewer than a safetensors header needs")
        n = int.from_bytes(head, "little")
        if n > size - 8 or n > MAX_HEADER_BYTES:
            raise bad(f"declares a {n:,}-byte header in a {size:,}-byte file")
        raw = f.read(n)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad("has a header that is not UTF-8") from None
    header = parse_json(text, f"{path} header", _CORRUPT)
    if not isinstance(header, dict):
        raise bad("has a header that is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise bad("has __metadata__ that is not a string -> string map")
    data_len = size - 8 - n
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise bad(f"describes tensor {name!r} with {type(info).__name__}, not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _DTYPE_BYTES:
            raise bad(f"gives tensor {name!r} the unknown dtype {dtype!r}")
        if not isinstance(shape, list) or len(shape) > 8 or not all(is_int(d) and d >= 0 for d in shape):
            raise bad(f"gives tensor {name!r} the shape {shape!r}, not a list of sizes >= 0")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_int(o) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_len):
            raise bad(f"gives tensor {name!r} the byte range {offsets!r}, outside its {data_len:,} data bytes")
        numel = 1
        for d in shape:
            numel *= d
        if offsets[1] - offsets[0] != numel * _DTYPE_BYTES[dtype]:
            raise bad(f"gives tensor {name!r} of shape {shape} ({dtype}) {offsets[1] - offsets[0]:,} bytes")
        spans.append((offsets[0], offsets[1]))
    pos = 0
    for begin, end in sorted(spans):
        if begin != pos:
            raise bad("has tensors whose byte ranges overlap or leave gaps")
        pos = end
    if pos != data_len:
        raise bad(f"holds {data_len - pos:,} bytes that belong to no tensor")
    return header, metadata


def _load_tensor_file(path: Path, expected_sha: str | None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    read_safetensors_header(path)  # every size checked before the file is read whole
    data = path.read_bytes()
    if expected_sha is not None and sha256_hex(data) != expected_sha:
        raise UserError(f"{path} does not match the checksum in {CONFIG_FILE}: {_CORRUPT}")
    try:
        return load(data)
    except Exception as e:  # safetensors raises its own SafetensorError (and others) for bad bytes
        raise UserError(f"{path} cannot be read ({str(e).splitlines()[0][:120]}): {_CORRUPT}") from None


def _read_bytes_checked(path: Path, what: str, expected_sha: str | None) -> bytes:
    if not path.is_file():
        raise UserError(f"{what} {path} is missing; point to a complete checkpoint directory (or run dir)")
    data = path.read_bytes()
    if expected_sha is not None and sha256_hex(data) != expected_sha:
        raise UserError(f"{path} does not match the checksum in {CONFIG_FILE}: {_CORRUPT}")
    return data


def _read_json(path: Path, what: str, expected_sha: str | None = None) -> Any:
    data = _read_bytes_checked(path, what, expected_sha)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; it is truncated or corrupted, copy the checkpoint again") from None
    return parse_json(text, str(path), "it is truncated or corrupted, copy the checkpoint again")


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
    except (TypeError, ValueError, AttributeError, RecursionError):
        raise UserError(f"{STATE_JSON_FILE} is malformed; the checkpoint is corrupted, resume from another one") from None


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
    arch = json.dumps(model.config.to_dict(), sort_keys=True)
    files: dict[str, bytes] = {MODEL_FILE: _tensor_bytes(weights, {"format": "pt", ARCH_KEY: arch})}
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
        "sha256": {name: sha256_hex(data) for name, data in files.items()},  # every file but this one
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
def resolve_checkpoint_dir(path: str | os.PathLike, made_by: str = "sifirdan pretrain --out") -> Path:
    """A checkpoint directory, or a run directory (then its ``best/``, else its ``last/``). ``made_by``: the
    command whose run the caller needs, named when there is none (chat needs ``sifirdan finetune --out``)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; pass a run directory from `{made_by}` or a checkpoint inside it")
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a checkpoint directory; pass the directory that holds {CONFIG_FILE}")
    if (path / CONFIG_FILE).is_file():
        return path
    # last.old: a crash between the two renames of a checkpoint swap left only the previous checkpoint there
    # (the next `pretrain --resume` moves it back); reading it is safe
    for sub in ("best", "last", "last.old"):
        if (path / sub / CONFIG_FILE).is_file():
            return path / sub
    raise UserError(
        f"{path} holds no checkpoint ({CONFIG_FILE} not found there nor in best/ or last/); "
        f"pass a run directory from `{made_by}` or train one first"
    )


def read_config(directory: str | os.PathLike) -> dict:
    """``config.json`` of a checkpoint (or run) directory, its bookkeeping fields type-checked."""
    directory = resolve_checkpoint_dir(directory)
    path = directory / CONFIG_FILE
    meta = _read_json(path, "checkpoint config")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("model"), dict):
        raise UserError(f"{path} is not a sifirdan checkpoint config; pass a directory written by sifirdan")
    version = meta.get("format_version", 0)
    if not is_int(version):
        raise UserError(f"{path}: format_version must be an integer, got {version!r}; restore the original {CONFIG_FILE}")
    if version > FORMAT_VERSION:
        raise UserError(f"{directory} was written by a newer sifirdan (format {version}); upgrade sifirdan")
    sha = meta.get("sha256", {})
    if not isinstance(sha, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in sha.items()):
        raise UserError(f"{path}: sha256 must map file names to checksums, got {sha!r}; restore the original {CONFIG_FILE}")
    tied = meta.get("tied_weights", {})
    if not isinstance(tied, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tied.items()):
        raise UserError(f"{path}: tied_weights must map names to names, got {tied!r}; restore the original {CONFIG_FILE}")
    fp = meta.get("tokenizer_fingerprint")
    if fp is not None and not isinstance(fp, str):
        raise UserError(f"{path}: tokenizer_fingerprint must be a string, got {fp!r}; restore the original {CONFIG_FILE}")
    meta["model"] = _upgrade_model_config(meta["model"])  # an older checkpoint loads as it was saved
    return meta  # its "train" section as saved: sifirdan.train.config.read_run_config upgrades it for a resume


def _upgrade_model_config(d: dict) -> dict:
    from sifirdan.model import GPTConfig

    return GPTConfig.upgrade_saved(d)


def model_config(meta: dict, directory: Path):
    """The ``GPTConfig`` of ``config.json``, every field type-checked (a bad one is named with the file)."""
    from sifirdan.model import GPTConfig

    try:
        return GPTConfig.from_dict(meta["model"])
    except UserError as e:
        raise UserError(f"{directory / CONFIG_FILE}: {e}; restore the original {CONFIG_FILE}") from None


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor ``GPT(config).state_dict()`` holds, without building the model: one block
    on the meta device (no memory) stands for all ``n_layer``."""
    import dataclasses

    from sifirdan.model import GPT

    with torch.device("meta"):
        one = GPT(dataclasses.replace(config, n_layer=1)).state_dict()
    shapes: dict[str, tuple[int, ...]] = {}
    for name, t in one.items():
        if name.startswith("blocks.0."):
            rest = name[len("blocks.0."):]
            for i in range(config.n_layer):
                shapes[f"blocks.{i}.{rest}"] = tuple(t.shape)
        else:
            shapes[name] = tuple(t.shape)
    return shapes


def check_loadable(directory: str | os.PathLike, meta: dict | None = None, device=None):
    """Everything ``load_model`` checks before it allocates (see the module docstring); returns the GPTConfig.

    Refuses, naming the field: a config the weights do not fit (shapes, number of layers, or an architecture
    other than the one the weights were saved with), and a model larger than the memory available.
    """
    from sifirdan.limits import check_fits

    directory = resolve_checkpoint_dir(directory)
    meta = meta or read_config(directory)
    config = model_config(meta, directory)
    path = directory / MODEL_FILE
    header, metadata = read_safetensors_header(path)
    where = f"{directory / CONFIG_FILE} does not fit {path}"
    fix = f"the checkpoint was edited or mixed up: restore the original {CONFIG_FILE}"
    layers_in_file = len({k.split(".")[1] for k in header if k.startswith("blocks.")})
    if config.n_layer != layers_in_file:  # before expected_shapes: it lists n_layer blocks (10**6 would hang)
        raise UserError(f"{where}: n_layer is {config.n_layer} but the weights hold {layers_in_file} blocks; {fix}")
    saved_arch = metadata.get(ARCH_KEY)
    if saved_arch is not None:
        arch = parse_json(saved_arch, f"{path} metadata", _CORRUPT)
        if isinstance(arch, dict):
            arch = _upgrade_model_config(arch)
            mine = config.to_dict()
            changed = sorted(k for k in set(arch) | set(mine) if k not in RUNTIME_FIELDS and arch.get(k, "<unset>") != mine.get(k, "<unset>"))
            if changed:
                detail = ", ".join(f"{k} {mine.get(k, '<unset>')!r} (the weights were saved with {arch.get(k, '<unset>')!r})" for k in changed[:4])
                raise UserError(f"{where}: {detail}; {fix}")
    present = dict(header)
    for alias, target in meta.get("tied_weights", {}).items():
        if target in present:
            present[alias] = present[target]
    try:
        expected = expected_shapes(config)
    except (RuntimeError, OverflowError):  # even the meta device cannot describe tensors past 2**63 bytes
        raise UserError(f"{where}: it describes a model with tensors larger than any file can hold; {fix}") from None
    missing = sorted(set(expected) - set(present))
    unexpected = sorted(set(present) - set(expected))
    bad_shape = [k for k in expected if k in present and tuple(present[k]["shape"]) != expected[k]]
    if missing or unexpected or bad_shape:
        detail = "; ".join(
            s for s in (
                f"missing {', '.join(missing[:3])}" if missing else "",
                f"unexpected {', '.join(unexpected[:3])}" if unexpected else "",
                ", ".join(f"{k} is {tuple(present[k]['shape'])} in the file but {expected[k]} for this config"
                          for k in bad_shape[:2]),
            ) if s
        )
        raise UserError(f"{where} ({detail}); {fix}")
    weight_bytes = path.stat().st_size
    check_fits({"weights": 2 * weight_bytes}, f"loading {directory}", "free memory or use a smaller model", device)
    return config


def load_weights(model: torch.nn.Module, directory: str | os.PathLike, meta: dict | None = None, checked: bool = False) -> None:
    """Load ``model.safetensors`` into an existing model (strict: every parameter must be there).

    ``checked``: the caller already ran ``check_loadable`` on this directory."""
    directory = resolve_checkpoint_dir(directory)
    meta = meta or read_config(directory)
    if not checked:
        check_loadable(directory, meta)
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
    from sifirdan.model import GPT

    directory = resolve_checkpoint_dir(path)
    meta = read_config(directory)
    config = check_loadable(directory, meta, torch.device(device) if isinstance(device, str) else device)
    tokenizer = load_tokenizer(directory, meta, config.vocab_size)  # cheaper than the weights: first
    model = GPT(config)
    load_weights(model, directory, meta, checked=True)
    return model.to(device).eval(), tokenizer


def load_tokenizer(directory: str | os.PathLike, meta: dict | None = None, vocab_size: int | None = None):
    """The checkpoint's ``tokenizer.json``, checked against the checksum and fingerprint the model recorded."""
    from sifirdan.tokenizer import BPETokenizer

    directory = resolve_checkpoint_dir(directory)
    meta = meta or read_config(directory)
    tok_path = directory / TOKENIZER_FILE
    if not tok_path.is_file():
        raise UserError(f"{tok_path} is missing; copy the checkpoint again (it must hold {TOKENIZER_FILE})")
    expected = meta.get("sha256", {}).get(TOKENIZER_FILE)
    if expected is not None:
        _read_bytes_checked(tok_path, "tokenizer", expected)
    tokenizer = BPETokenizer.load(tok_path)
    fp = meta.get("tokenizer_fingerprint")
    if fp and tokenizer.fingerprint() != fp:
        raise UserError(f"{tok_path} is not the tokenizer this model was trained with (fingerprint differs); restore the original {TOKENIZER_FILE}")
    if vocab_size is not None and tokenizer.vocab_size > vocab_size:
        raise UserError(f"{tok_path} has {tokenizer.vocab_size} ids but the model only {vocab_size}; restore the original {TOKENIZER_FILE}")
    return tokenizer


def verify_checkpoint_dir(directory: str | os.PathLike) -> bool:
    """True when ``directory`` is a complete checkpoint: its config parses and every file it lists is there
    with the recorded checksum (how ``rundir`` tells a finished temp directory from a half-written one)."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        sha = meta["sha256"]
        if meta.get("format") != FORMAT or MODEL_FILE not in sha:
            return False
        return all(sha256_hex((directory / name).read_bytes()) == digest for name, digest in sha.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return False


def has_trainer_state(directory: str | os.PathLike) -> bool:
    directory = Path(directory)
    return (directory / STATE_JSON_FILE).is_file() or (directory / STATE_TENSORS_FILE).is_file()


def load_trainer_state(directory: str | os.PathLike, meta: dict | None = None) -> dict:
    """The ``trainer_state`` given to ``save_checkpoint`` (tensors on CPU)."""
    directory = resolve_checkpoint_dir(directory)
    meta = meta or read_config(directory)
    sha = meta.get("sha256", {})
    tree = _read_json(directory / STATE_JSON_FILE, "trainer state", sha.get(STATE_JSON_FILE))
    tensors = _load_tensor_file(directory / STATE_TENSORS_FILE, sha.get(STATE_TENSORS_FILE))
    return unpack_state(tree, tensors)


__all__ = [
    "CONFIG_FILE",
    "check_loadable",
    "load_tokenizer",
    "read_safetensors_header",
    "verify_checkpoint_dir",
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
