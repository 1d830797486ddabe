"""``sifirdan export hf`` and ``sifirdan import hf``: a sifirdan checkpoint <-> a transformers GPT-2 directory.

    export_hf("runs/nutuk", "hf/nutuk")        # then, offline and with no custom code:
    AutoModelForCausalLM.from_pretrained("hf/nutuk"); AutoTokenizer.from_pretrained("hf/nutuk")
    import_hf("hf/some-gpt2", "runs/imported") # a checkpoint generate, chat, eval and finetune accept

An export directory holds what transformers reads:

    config.json               GPT2LMHeadModel config (model_type gpt2, activation_function "gelu", ...)
    model.safetensors         the weights in GPT-2's names and Conv1D orientation (``gpt2.py``)
    tokenizer.json            the tokenizer, byte for byte the checkpoint's
    tokenizer_config.json     special tokens; for a fine-tuned model the chat template as Jinja
    generation_config.json    bos / eos / pad ids: eos is </RESP> (then <|endoftext|>) for a fine-tuned model
    sifirdan_export.json      sifirdan's own record: the model config and chat template it came from, and the
                              checksum of every file (how a later export knows the folder is one it may replace)
    sifirdan_head_bias.safetensors   only for a model with an LM-head bias (the default's): the tensors the
                              fold into GPT-2's bias-free head replaced (``gpt2.fold_head_bias``), so that
                              ``import hf`` of the unchanged export gives back the very same weights

Nothing is approximated: a model GPT-2 cannot compute exactly is refused with one line naming the option
(``gpt2.export_problem`` / ``gpt2.import_problem``); a folded head bias is exact algebra, its float32 rounding
measured on every export and reported. Only safetensors are read -- never a pickle. Both
commands write their directory atomically and never replace a non-empty folder that is not their own output.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sifirdan.errors import UserError
from sifirdan.fileio import atomic_directory, check_writable_dir, is_empty_dir, parse_json, sha256_hex
from sifirdan.interop import gpt2, llama
from sifirdan.interop.jinja_template import jinja_chat_template

EXPORT_MARKER = "sifirdan_export.json"
EXPORT_FORMAT = "sifirdan-hf-export"
EXPORT_FORMAT_VERSION = 1
IMPORT_KEY = "imported_from"  # the config.json key of a checkpoint made by import_hf
HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
HF_WEIGHTS_INDEX = "model.safetensors.index.json"
HF_TOKENIZER = "tokenizer.json"
HF_TOKENIZER_CONFIG = "tokenizer_config.json"
HF_GENERATION_CONFIG = "generation_config.json"
HEAD_BIAS_FILE = "sifirdan_head_bias.safetensors"  # the originals of what the head-bias fold replaced
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack", "model.ckpt.index")
FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}  # widen to fp32 exactly
PAD = "<PAD>"


@dataclass
class Report:
    """What a command wrote, and the notes worth a line (nothing in them changes what the model computes)."""

    path: Path
    notes: list[str] = field(default_factory=list)
    config: object = None


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


# ================================================================================================ export
def is_export(path: str | os.PathLike) -> bool:
    """True when ``path`` is an export exactly as ``export_hf`` wrote it: its marker lists every file there
    with its checksum (a folder a user has since changed, or added to, is not)."""
    path = Path(path)
    try:
        marker = json.loads((path / EXPORT_MARKER).read_text(encoding="utf-8"))
        sha = marker["sha256"]
        if marker.get("format") != EXPORT_FORMAT or not isinstance(sha, dict):
            return False
        present = {p.name for p in path.iterdir()} - {EXPORT_MARKER}
        return present == set(sha) and all(sha256_hex((path / n).read_bytes()) == d for n, d in sha.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return False


def _check_out(out: Path, flag: str, ours, what: str) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} is a file, not a folder; pick a new or empty folder")
    if out.is_dir() and not is_empty_dir(out) and not ours(out):
        raise UserError(f"{flag} {out} is a folder that is not empty and is not {what}; sifirdan never writes into "
                        "such a folder: pick a new or empty one")
    probe = out
    while not probe.exists() and probe != probe.parent:  # nothing is created before the command succeeds
        probe = probe.parent
    check_writable_dir(probe, flag if probe == out else f"{flag}'s parent folder", f"pick a folder you can write for {flag}")


def export_hf(model_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Report:
    """Write ``model_dir``'s checkpoint as a transformers GPT-2 directory ``out_dir`` (see the module docstring)."""
    from safetensors.torch import save

    from sifirdan import checkpoint as ckpt
    from sifirdan.chat.template import template_of

    out = Path(out_dir)
    directory = ckpt.resolve_checkpoint_dir(model_dir)
    _check_out(out, "--out", is_export, "an earlier `sifirdan export hf`")
    meta = ckpt.read_config(directory)
    template = template_of(meta)
    model, tokenizer = ckpt.load_model(directory)
    config = model.config
    as_llama = not config.gpt2_block  # the beyond-the-guide block: Llama's names (interop/llama.py)
    folded = not as_llama and gpt2.has_head_bias(model)
    notes = []
    if as_llama:
        problem = llama.export_problem(model)
        if problem:
            raise UserError(f"cannot export {directory} as Llama: {problem}")
    else:
        fold = gpt2.fold_error(model) if folded else None
        problem = gpt2.export_problem(model, fold)
        if problem:
            raise UserError(f"cannot export {directory} as GPT-2: {problem}")
        if folded:
            moved, rounding = fold
            notes.append(f"lm_head_bias: GPT-2's head has no bias, so it is folded into an untied lm_head and ln_f's "
                         f"bias (tie_word_embeddings=false; exact algebra, float32 rounding moves logits by up to "
                         f"{moved:.1e}, as computing them ourselves does by {rounding:.1e})")
        elif config.lm_head_bias:
            notes.append("lm_head_bias: the LM head's bias is exactly zero, so it is left out (GPT-2's head has none)")
        if not config.bias:
            notes.append("bias=false: written as biases of exact zeros (GPT-2 always has biases; the function is the same)")
    if config.dropout:
        notes.append(f"dropout {config.dropout:g} (training only) is exported as dropout 0: the model computes the same")

    eot = tokenizer.eot_id
    pad = tokenizer.special_tokens.get(PAD)
    if template is not None:
        missing = template.missing_tokens(tokenizer)
        if missing:
            raise UserError(f"{directory}: its chat template needs {', '.join(missing)}, which its tokenizer lacks; "
                            "restore the checkpoint's tokenizer.json")
        eos_ids = list(template.stop_ids(tokenizer))  # </RESP>, then <|endoftext|>: where sifirdan chat stops
    else:
        eos_ids = [eot] if eot is not None else []
    inverse = {i: s for s, i in tokenizer.special_tokens.items()}
    eos_id = eos_ids[0] if eos_ids else None

    if as_llama:
        tensors = llama.llama_tensors(model)
        hf_config = llama.llama_config(config, bos_id=eot, eos_id=eos_id, pad_id=pad, dtype="float32",
                                       intermediate_size=model.blocks[0].feed_forward.gate.out_features)
    else:
        tensors = gpt2.gpt2_tensors(model)
        hf_config = gpt2.gpt2_config(config, bos_id=eot, eos_id=eos_id, pad_id=pad, dtype="float32",
                                     tied=config.tie_weights and not folded)
    files: dict[str, bytes] = {
        HF_CONFIG: _json_bytes(hf_config),
        HF_WEIGHTS: save(tensors, metadata={"format": "pt"}),
        HF_TOKENIZER: tokenizer.to_json_str().encode("utf-8"),
    }
    if folded:  # what import hf needs to give back the very weights (the fold itself is not invertible bit for bit)
        originals = {"lm_head.bias": model.lm_head.bias}
        if model.ln_f.bias is not None:
            originals["ln_f.bias"] = model.ln_f.bias
        if not config.tie_weights:
            originals["lm_head.weight"] = model.lm_head.weight
        files[HEAD_BIAS_FILE] = save({k: v.detach().to("cpu").contiguous().clone() for k, v in originals.items()},
                                     metadata={"format": "pt"})
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": config.block_size,
        "clean_up_tokenization_spaces": False,  # decode gives back exactly the text (no " ." -> "." clean-up)
        # GPT-2 adds wte(token_type_ids) to its input when it is given them: a tokenizer that returns them (as
        # PreTrainedTokenizerFast does unless told) would shift every position by token 0's embedding
        "model_input_names": ["input_ids", "attention_mask"],
        "added_tokens_decoder": {
            str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
            for i, s in sorted(inverse.items())
        },
    }
    if eot is not None:
        tok_cfg["bos_token"] = inverse[eot]
    if eos_id is not None:
        tok_cfg["eos_token"] = inverse[eos_id]
    if pad is not None:
        tok_cfg["pad_token"] = PAD
    if template is not None:
        tok_cfg["chat_template"] = jinja_chat_template(template)
    files[HF_TOKENIZER_CONFIG] = _json_bytes(tok_cfg)
    gen = {"_from_model_config": False}
    if eot is not None:
        gen["bos_token_id"] = eot
    if eos_ids:
        gen["eos_token_id"] = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    if pad is not None:
        gen["pad_token_id"] = pad
    files[HF_GENERATION_CONFIG] = _json_bytes(gen)
    files[EXPORT_MARKER] = _json_bytes({
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "source": str(directory),
        "model": config.to_dict(),
        "chat_template": template.to_dict() if template is not None else None,
        "head_bias_folded": folded,
        "sha256": {name: sha256_hex(data) for name, data in files.items()},
    })
    with atomic_directory(out) as tmp:
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
    return Report(out, notes, config)


# ================================================================================================ import
def _read_json_file(path: Path, what: str):
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; pass a transformers model directory") from None
    return parse_json(text, str(path), f"it is not a valid {what}")


def _weight_files(src: Path) -> dict[str, tuple[Path, dict]]:
    """Tensor name -> the safetensors file holding it (one file, or the shards an index names)."""
    from sifirdan.checkpoint import read_safetensors_header

    if (src / HF_WEIGHTS).is_file():
        files = [src / HF_WEIGHTS]
    elif (src / HF_WEIGHTS_INDEX).is_file():
        index = _read_json_file(src / HF_WEIGHTS_INDEX, "safetensors index")
        wmap = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
            raise UserError(f"{src / HF_WEIGHTS_INDEX} has no weight_map of tensor -> file names; save the model again")
        names = sorted(set(wmap.values()))
        bad = [n for n in names if Path(n).name != n or n.startswith(".") or not n.endswith(".safetensors")]
        if bad:
            raise UserError(f"{src / HF_WEIGHTS_INDEX} names {bad[0]!r}, not a .safetensors file in {src}; save the model again")
        files = [src / n for n in names]
    else:
        pickled = [n for n in PICKLED_WEIGHTS if (src / n).exists()]
        if pickled:
            raise UserError(
                f"{src} holds its weights only as {pickled[0]}, a pickle, and sifirdan never unpickles (loading one can "
                "run code); if you trust it, convert it first: python -c \"from transformers import GPT2LMHeadModel as M; "
                f"M.from_pretrained('{src}').save_pretrained('{src}-safetensors')\" and import that")
        raise UserError(f"{src} has no {HF_WEIGHTS}; pass a transformers model directory saved with safetensors")
    where: dict[str, tuple[Path, dict]] = {}
    for path in files:
        header, _ = read_safetensors_header(path)
        for name, info in header.items():
            if name in where:
                raise UserError(f"{path} and {where[name][0]} both hold tensor {name!r}; save the model again")
            if info["dtype"] not in FLOAT_DTYPES:
                raise UserError(f"{path}: tensor {name!r} is {info['dtype']}; sifirdan imports F32, F16 and BF16 weights "
                                "(widened to float32 exactly)")
            where[name] = (path, info)
    return where


def _check_tokenizer_json(path: Path) -> None:
    """What ``BPETokenizer.from_json`` does not check but transformers would do differently: a post-processor
    that adds tokens (sifirdan adds none) and a pre-tokenizer that adds a prefix space."""
    obj = _read_json_file(path, "tokenizer.json")
    post = obj.get("post_processor") if isinstance(obj, dict) else None
    if post is not None and (not isinstance(post, dict) or post.get("type") != "ByteLevel"):
        kind = post.get("type") if isinstance(post, dict) else type(post).__name__
        raise UserError(f"{path} has a {kind} post_processor, which adds tokens sifirdan's tokenizer does not add; "
                        "pass a byte-level BPE tokenizer.json without one")


def import_hf(src_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Report:
    """Turn a local transformers GPT-2 directory into a sifirdan checkpoint directory (see the module docstring)."""
    from safetensors import safe_open

    from sifirdan import checkpoint as ckpt
    from sifirdan.chat.template import TEMPLATE_KEY, ChatTemplate
    from sifirdan.limits import check_fits
    from sifirdan.model import GPT
    from sifirdan.tokenizer import BPETokenizer

    src, out = Path(src_dir), Path(out_dir)
    if not src.is_dir():
        raise UserError(f"--from {src} is not a folder; pass a local transformers model directory (nothing is downloaded)")
    if not (src / HF_CONFIG).is_file():
        raise UserError(f"{src} has no {HF_CONFIG}, so it is not a transformers model directory")
    hf = _read_json_file(src / HF_CONFIG, "config.json")
    if not isinstance(hf, dict):
        raise UserError(f"{src / HF_CONFIG} is not a JSON object; pass a transformers model directory")
    gpt2.check_import_config(hf, str(src / HF_CONFIG))
    _check_out(out, "--out", _is_import, "an earlier `sifirdan import hf`")

    tok_path = src / HF_TOKENIZER
    if not tok_path.is_file():
        raise UserError(f"{src} has no {HF_TOKENIZER} (a byte-level BPE, which sifirdan needs); write one with "
                        f"AutoTokenizer.from_pretrained('{src}').save_pretrained('{src}') and import again")
    _check_tokenizer_json(tok_path)
    tokenizer = BPETokenizer.load(tok_path)
    if tokenizer.vocab_size > hf["vocab_size"]:
        raise UserError(f"{tok_path} has {tokenizer.vocab_size} ids but the model only {hf['vocab_size']} "
                        "(vocab_size in config.json); pass the tokenizer the model was trained with")

    marker = None
    if (src / EXPORT_MARKER).is_file():
        try:
            marker = json.loads((src / EXPORT_MARKER).read_text(encoding="utf-8"))
        except (ValueError, RecursionError, OSError):
            marker = None
        marker = marker if isinstance(marker, dict) and marker.get("format") == EXPORT_FORMAT else None
    config, used_record = gpt2.sifirdan_config(hf, (marker or {}).get("model"))
    notes = []
    restored = _head_bias_originals(src, marker, hf, notes)  # an unchanged export of a head-bias model
    if restored is not None:
        config, originals = restored
        used_record = True

    # ---- every tensor's name, dtype and shape against the config, before anything is allocated
    where = _weight_files(src)
    full = gpt2.strip_prefix(where)
    present: dict[str, tuple[Path, str, dict]] = {}
    for name, target in full.items():
        if target is None:
            continue
        if target in present:
            raise UserError(f"{src} holds {target!r} twice (with and without the 'transformer.' prefix); save the model again")
        path, info = where[name]
        present[target] = (path, name, info)
    if config.tie_weights and "lm_head.weight" in present:
        del present["lm_head.weight"]  # transformers ties it to wte and ignores the stored copy; so do we
    layers = {k.split(".")[2] for k in present if k.startswith("transformer.h.")}
    if len(layers) != config.n_layer:
        raise UserError(f"{src / HF_CONFIG} says n_layer {config.n_layer} but the weights hold {len(layers)} blocks; "
                        "the directory is inconsistent, save the model again")
    expected = gpt2.expected_gpt2_shapes(config)
    missing = sorted(set(expected) - set(present))
    unexpected = sorted(set(present) - set(expected))
    bad_shape = [k for k in expected if k in present and tuple(present[k][2]["shape"]) != expected[k]]
    if missing or unexpected or bad_shape:
        detail = "; ".join(s for s in (
            f"missing {', '.join(missing[:3])}" if missing else "",
            f"unexpected {', '.join(unexpected[:3])}" if unexpected else "",
            ", ".join(f"{k} is {tuple(present[k][2]['shape'])} but {expected[k]} for this config" for k in bad_shape[:2]),
        ) if s)
        hint = " (tie_word_embeddings is false but there is no lm_head.weight)" if "lm_head.weight" in missing else ""
        raise UserError(f"{src}: the weights do not fit {HF_CONFIG} ({detail}){hint}; sifirdan cannot import them")
    fp32_bytes = sum(4 * _numel(present[k][2]["shape"]) for k in expected)
    check_fits({"weights": 2 * fp32_bytes}, f"importing {src}", "free memory or import a smaller model")

    tensors: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for target, (path, name, _) in present.items():
        by_file.setdefault(path, []).append((target, name))
    for path, pairs in by_file.items():
        with safe_open(str(path), framework="pt") as f:
            for target, name in pairs:
                tensors[target] = f.get_tensor(name).to(torch.float32)

    if restored is not None:  # the tensors the fold replaced, as they were (ln_f's bias: zeros if it had none)
        tensors["transformer.ln_f.bias"] = originals.get("ln_f.bias", torch.zeros(config.n_embd))
        if not config.tie_weights:
            tensors["lm_head.weight"] = originals["lm_head.weight"]
    if not config.bias:
        nonzero = [k for k in expected if k.endswith(".bias") and bool(torch.any(tensors[k] != 0))]
        if nonzero:  # the record says bias=False, but these weights were changed since: keep the biases
            import dataclasses

            config = dataclasses.replace(config, bias=True)
            notes.append(f"{EXPORT_MARKER} says bias=false but {nonzero[0]} is not zero: imported with biases")
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        p = hf.get(key, 0.1)
        if not used_record and isinstance(p, (int, float)) and p:
            notes.append("dropout: GPT-2's dropouts (resid/embd/attn_pdrop) have no exact counterpart in sifirdan; "
                         "imported with dropout 0 (training only: `sifirdan finetune --dropout P` sets one)")
            break

    model = GPT(config)
    state = gpt2.sifirdan_state(config, tensors)
    if restored is not None:
        state["lm_head.bias"] = originals["lm_head.bias"]
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    model.eval()

    extra: dict = {IMPORT_KEY: {"format": "transformers GPT2LMHeadModel", "source": str(src.resolve())}}
    tok_cfg = {}
    if (src / HF_TOKENIZER_CONFIG).is_file():
        tok_cfg = _read_json_file(src / HF_TOKENIZER_CONFIG, "tokenizer_config.json")
        tok_cfg = tok_cfg if isinstance(tok_cfg, dict) else {}
    jinja = tok_cfg.get("chat_template")
    saved_template = (marker or {}).get("chat_template")
    if saved_template is not None:
        try:
            template = ChatTemplate.from_dict(saved_template)
        except (UserError, TypeError):
            template = None
        # the template sifirdan exported, as long as the Jinja transformers applies is still exactly it
        if template is not None and jinja == jinja_chat_template(template) and not template.missing_tokens(tokenizer):
            extra[TEMPLATE_KEY] = template.to_dict()
    if jinja is not None and TEMPLATE_KEY not in extra:
        notes.append(f"the Jinja chat_template of {HF_TOKENIZER_CONFIG} is not sifirdan's and is not imported; "
                     "`sifirdan finetune` gives the model sifirdan's chat template")
    ckpt.save_model(out, model, tokenizer, extra)
    return Report(out, notes, config)


def _head_bias_originals(src: Path, marker: dict | None, hf: dict, notes: list[str]):
    """``(config, tensors)`` that give back the exported model itself when ``src`` is an unchanged export of a
    model whose LM-head bias was folded (``gpt2.fold_head_bias``); else None, and the folded, untied bias-free
    head is imported as it is (the same logits up to float32 rounding)."""
    from sifirdan.checkpoint import read_safetensors_header
    from sifirdan.model import GPTConfig

    if not marker or marker.get("head_bias_folded") is not True:
        return None
    if not is_export(src):
        notes.append(f"{src} was changed since `sifirdan export hf` wrote it: its LM-head bias is imported as the "
                     "untied bias-free head it was folded into (the same logits up to float32 rounding)")
        return None
    try:
        config = GPTConfig.from_dict(marker.get("model"))
    except (UserError, TypeError):
        return None
    shape = gpt2.shape_fields(hf)  # all but tie_weights: a folded head is untied in the export
    if any(getattr(config, k) != v for k, v in shape.items() if k != "tie_weights") or not config.lm_head_bias:
        return None
    path = src / HEAD_BIAS_FILE
    V, C = config.vocab_size, config.n_embd
    want = {"lm_head.bias": [V]}
    if config.bias:
        want["ln_f.bias"] = [C]
    if not config.tie_weights:
        want["lm_head.weight"] = [V, C]
    header, _ = read_safetensors_header(path)  # every size checked before anything is read
    got = {k: v["shape"] for k, v in header.items()}
    if got != want or any(v["dtype"] not in FLOAT_DTYPES for v in header.values()):
        raise UserError(f"{path} does not hold the tensors {', '.join(want)} of this model; export the model again")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k).to(torch.float32) for k in want}
    return config, tensors


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _is_import(path: Path) -> bool:
    """A checkpoint directory ``import_hf`` wrote (its config.json records where it came from)."""
    from sifirdan import checkpoint as ckpt

    try:
        meta = json.loads((path / ckpt.CONFIG_FILE).read_text(encoding="utf-8"))
        return meta.get("format") == ckpt.FORMAT and isinstance(meta.get(IMPORT_KEY), dict) and ckpt.verify_checkpoint_dir(path)
    except (OSError, ValueError, AttributeError, RecursionError):
        return False
