"""``sifirdan export gguf``: one GGUF file that llama.cpp, Ollama and LM Studio run, plus an Ollama Modelfile.

    export_gguf("runs/nutuk", "nutuk.gguf")        # f32; dtype="f16" / "q8_0" (CLI: --outtype) for smaller files
    # then: llama-cli -m nutuk.gguf   |   ollama create nutuk -f Modelfile   (the Modelfile is written beside it)

The file holds, in llama.cpp's names (the ``gguf`` package's ``TENSOR_NAMES``, ggml-org's own writer):

* the weights, for llama.cpp's ``gpt2`` architecture: learned positions, pre-LN blocks with LayerNorm, one
  fused q|k|v projection, a GELU feed-forward network, biases everywhere. It is GPT-2, so the tensors come from
  the Hugging Face export's mapping (``gpt2.gpt2_tensors``): a head bias is folded into an untied head and
  ln_f's bias exactly as there, and a ``bias=False`` model gets biases of exact zeros. GGUF keeps ``nn.Linear``'s
  (out, in) orientation, so the weights GPT-2's Conv1D transposed are transposed back.
* the tokenizer: every token (byte-level strings, as tokenizer.json), the merges in rank order, token types
  (special tokens are CONTROL), the pre-tokenizer name ``tokenizer.ggml.pre``, bos/eos/eot ids, no automatic
  BOS (the chat template writes ``<|endoftext|>`` itself), and the chat template as Jinja.

Two things llama.cpp does its own way, both measured on every export and reported (``Report.notes``):

* **The pre-tokenizer.** llama.cpp does not read a regex from the file: it picks one of its own by the
  ``tokenizer.ggml.pre`` name. For sifirdan's Turkish pattern the nearest is "ufakzeka" (a Turkish one: the
  apostrophe suffix stays one piece), which cuts digits one by one where ours groups three. A tokenizer trained
  with ``--pre-tokenizer llama.cpp`` uses llama.cpp's pattern itself and agrees everywhere; for any other the
  export measures, on Nutuk's validation split, how much text llama.cpp tokenizes into other ids
  (``pre_tokenizer_agreement``), and says so.
* **GELU.** llama.cpp's ``gpt2`` graph computes GELU as the tanh approximation, read from a float16 table at
  the float16-rounded input (ggml-cpu ``ggml_vec_gelu_f32`` with ``GGML_GELU_FP16``); sifirdan's is the exact
  erf GELU. No llama.cpp decoder architecture has the exact one, so the export measures how far that moves the
  logits on Nutuk text (``LlamaCppGELU`` computes llama.cpp's function in PyTorch; the tests check that with it
  our logits equal llama.cpp's to 1e-3).

Architectures: ``ARCHITECTURES`` maps a llama.cpp architecture name to its writer; ``architecture_of`` picks
one for a model config: ``gpt2`` for the guide's block, ``llama`` for the default block (RoPE, RMSNorm, SwiGLU,
no biases: the Hugging Face Llama export's tensors, ``interop/llama.py``, with W_Q and W_K rows permuted to the
rotary pairing llama.cpp's graph uses). The llama graph computes SiLU exactly, so the GELU caveat above is the
gpt2 architecture's alone. What neither can compute (a QK-norm, a logit cap, an LM-head bias beside RMSNorm) is
refused in one line.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sifirdan.errors import UserError
from sifirdan.interop import gpt2

GGUF_DTYPES = ("f32", "f16", "q8_0")
MARKER_KEY = "sifirdan.export"  # a GGUF this module wrote says so (how a later export knows it may replace it)
MODELFILE = "Modelfile"
MODELFILE_HEADER = "# Ollama Modelfile written by `sifirdan export gguf`"
Q8_BLOCK = 32  # a q8_0 row is stored in blocks of 32 values

# GPTConfig fields the gpt2 writer knows; a field outside this set (a new kind of block) is refused, see
# architecture_of. attention / init / dropout change how a model is computed or trained, not what it computes.
GPT2_FIELDS = frozenset({"vocab_size", "block_size", "n_embd", "n_head", "n_layer", "dropout", "bias", "lm_head_bias",
                         "attention", "tie_weights", "init"})
GPT2_BLOCK = {"position": "learned", "norm": "layernorm", "mlp": "gelu", "qk_norm": False, "logit_softcap": 0.0}


@dataclass
class Report:
    """What ``export_gguf`` wrote and the lines worth printing (measurements, not warnings to ignore)."""

    path: Path
    modelfile: Path
    architecture: str
    notes: list[str] = field(default_factory=list)
    agreement: dict | None = None  # pre_tokenizer_agreement's result (None: the pattern is llama.cpp's own)
    gelu_logit_diff: float | None = None


# ------------------------------------------------------------------------------------------------ GELU
def ggml_gelu(x: torch.Tensor) -> torch.Tensor:
    """llama.cpp's GELU on the CPU (ggml-cpu ``ggml_vec_gelu_f32`` with ``GGML_GELU_FP16``): the tanh
    approximation of the float16-rounded input, rounded to float16 (its table), with x <= -10 -> 0 and
    x >= 10 -> x. Float32 in and out."""
    x = x.float()
    h = x.half().float()
    tanh = 0.5 * h * (1.0 + torch.tanh(0.7978845608028654 * h * (1.0 + 0.044715 * h * h)))
    y = tanh.half().float()
    return torch.where(x <= -10.0, torch.zeros_like(x), torch.where(x >= 10.0, x, y))


class LlamaCppGELU(nn.Module):
    def forward(self, x):
        return ggml_gelu(x)


@contextlib.contextmanager
def llama_cpp_gelu(model):
    """Inside: ``model`` computes GELU as llama.cpp's gpt2 graph does (``ggml_gelu``); restored on exit."""
    saved = [(block.feed_forward, block.feed_forward.gelu) for block in model.blocks]
    try:
        for ff, _ in saved:
            ff.gelu = LlamaCppGELU()
        yield model
    finally:
        for ff, gelu in saved:
            ff.gelu = gelu


def gelu_logit_diff(model, ids: list[int]) -> float:
    """The largest |logit| change, over the positions of ``ids`` (one window of at most block_size), between
    ``model`` and the same model with llama.cpp's GELU."""
    x = torch.tensor([ids[: model.config.block_size]])
    with torch.no_grad():
        ours = model(x)[0]
        with llama_cpp_gelu(model):
            theirs = model(x)[0]
    return (ours - theirs).abs().max().item()


# ------------------------------------------------------------------------------------------------ tokenizer
def gguf_pre(pattern: str) -> tuple[str, bool]:
    """``(tokenizer.ggml.pre, exact)``: the llama.cpp pre-tokenizer to name for ``pattern``, and whether it is
    that very pattern (else the nearest one, whose agreement ``pre_tokenizer_agreement`` measures)."""
    from sifirdan.tokenizer.pattern import LLAMACPP_TURKISH_PATTERN

    # Only the pattern the tests check against llama.cpp's own tokenizer is called exact; any other (sifirdan's
    # Turkish one, an imported tokenizer's) gets the Turkish "ufakzeka" and the measured agreement.
    return "ufakzeka", pattern == LLAMACPP_TURKISH_PATTERN


def llama_cpp_pattern(pre: str) -> str:
    """The regex llama.cpp applies for ``tokenizer.ggml.pre = pre`` (the ones ``gguf_pre`` names)."""
    from sifirdan.tokenizer.pattern import LLAMACPP_TURKISH_PATTERN

    return {"ufakzeka": LLAMACPP_TURKISH_PATTERN}[pre]


def as_llama_cpp_splits(tokenizer, pre: str):
    """A copy of ``tokenizer`` that cuts text with llama.cpp's pattern for ``pre``: its ids are what llama.cpp's
    tokenizer gives (the tests check it against llama.cpp itself)."""
    from sifirdan.tokenizer.base import Tokenizer

    return Tokenizer(vocab=tokenizer.vocab, merges=tokenizer.merge_list, special_tokens=tokenizer.special_tokens,
                     pattern=llama_cpp_pattern(pre))


def _spans(tokenizer, ids: list[int]) -> set[tuple[int, int, int]]:
    out, pos = set(), 0
    for i in ids:
        n = len(tokenizer.vocab[i])
        out.add((pos, n, i))
        pos += n
    return out


def pre_tokenizer_agreement(tokenizer, pre: str, lines: list[str]) -> dict:
    """How often llama.cpp's tokenizer (pre-tokenizer ``pre``) gives ``tokenizer``'s ids on ``lines``:
    ``lines_same`` of ``lines`` encode to identical ids; ``tokens_same`` of sifirdan's ``tokens`` are also one of
    llama.cpp's tokens at the same byte offset; ``llama_cpp_tokens`` is how many llama.cpp makes."""
    theirs_tok = as_llama_cpp_splits(tokenizer, pre)
    same_lines = tokens = same_tokens = their_tokens = 0
    for line in lines:
        ours, theirs = tokenizer.encode_ordinary(line), theirs_tok.encode_ordinary(line)
        tokens += len(ours)
        their_tokens += len(theirs)
        if ours == theirs:
            same_lines += 1
            same_tokens += len(ours)
        else:
            same_tokens += len(_spans(tokenizer, ours) & _spans(tokenizer, theirs))
    return {"pre": pre, "lines": len(lines), "lines_same": same_lines, "tokens": tokens, "tokens_same": same_tokens,
            "llama_cpp_tokens": their_tokens}


def nutuk_val_lines() -> list[str]:
    """The non-empty lines of Nutuk's validation split (the project's standard split; text no tokenizer trained
    by sifirdan on Nutuk has seen)."""
    from sifirdan.data.split import standard_split

    _, val, _ = standard_split(None)
    return [line for line in val.split("\n") if line.strip()]


def _token_types(tokenizer) -> list[int]:
    import gguf

    special = set(tokenizer.special_tokens.values())
    return [int(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL) for i in range(tokenizer.vocab_size)]


def add_tokenizer(writer, tokenizer, template, pre: str, vocab_size: int) -> list[int]:
    """Write the tokenizer keys; returns the end-of-generation ids (eos first)."""
    from sifirdan.tokenizer.bytelevel import token_to_str

    inverse = {i: s for s, i in tokenizer.special_tokens.items()}
    tokens = [inverse[i] if i in inverse else token_to_str(tokenizer.vocab[i]) for i in range(tokenizer.vocab_size)]
    types = _token_types(tokenizer)
    if vocab_size > len(tokens):  # rows the model has beyond the tokenizer's ids: never produced by encoding
        import gguf

        tokens += [f"<unused_{i}>" for i in range(len(tokens), vocab_size)]
        types += [int(gguf.TokenType.UNUSED)] * (vocab_size - len(types))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([f"{token_to_str(tokenizer.vocab[a])} {token_to_str(tokenizer.vocab[b])}"
                             for a, b, _ in tokenizer.merge_list])
    eot = tokenizer.eot_id
    if template is not None:
        eog = list(template.stop_ids(tokenizer))  # </RESP>, then <|endoftext|>: where sifirdan chat stops
    else:
        eog = [eot] if eot is not None else []
    if eot is not None:
        writer.add_bos_token_id(eot)
        writer.add_eot_token_id(eot)
    if eog:
        writer.add_eos_token_id(eog[0])
    pad = tokenizer.special_tokens.get("<PAD>")
    if pad is not None:
        writer.add_pad_token_id(pad)
    writer.add_add_bos_token(False)  # sifirdan adds no BOS when encoding; the chat template writes its own
    writer.add_add_eos_token(False)
    if template is not None:
        from sifirdan.interop.jinja_template import jinja_chat_template

        writer.add_chat_template(jinja_chat_template(template))
    return eog


# ------------------------------------------------------------------------------------------------ architectures
def architecture_of(config) -> str:
    """The llama.cpp architecture that computes ``GPT(config)``, or a UserError naming what none can."""
    from sifirdan.interop import llama

    if llama.is_llama_block(config):
        return "llama"
    if config.gpt2_block:
        return "gpt2"
    # name the fields that differ from the nearer of the two blocks llama.cpp has
    llama_block = {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "qk_norm": False, "logit_softcap": 0.0}
    near = llama_block if config.position == "rope" else GPT2_BLOCK
    off = [k for k, v in near.items() if getattr(config, k) != v]
    name = ", ".join(f"{k}={getattr(config, k)!r}" for k in off)
    raise UserError(f"its model config has {name}: llama.cpp's gpt2 architecture computes the "
                    "guide's block (learned positions, LayerNorm, GELU) and its llama architecture the default one "
                    "(RoPE, RMSNorm, SwiGLU); train with one of them, or export with `sifirdan export hf`")


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).contiguous().numpy()


def _add_weight(writer, name: str, t: np.ndarray, dtype: str, notes: set[str]) -> None:
    """One tensor in the file's dtype: vectors (norms, biases) stay float32, as llama.cpp's converter keeps
    them; matrices become f16 or q8_0 (a row whose length is no multiple of 32 cannot be q8_0: f16)."""
    import gguf

    if t.ndim == 1 or dtype == "f32":
        writer.add_tensor(name, t.astype(np.float32))
    elif dtype == "q8_0" and t.shape[-1] % Q8_BLOCK == 0:
        writer.add_tensor(name, gguf.quants.quantize(t, gguf.GGMLQuantizationType.Q8_0),
                          raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
        if dtype == "q8_0":
            notes.add(f"rows of {t.shape[-1]} values are no multiple of {Q8_BLOCK}: those matrices are f16, not q8_0")
        writer.add_tensor(name, t.astype(np.float16))


def write_gpt2(writer, model, dtype: str, notes: set[str]) -> None:
    """llama.cpp's ``gpt2`` architecture: hyperparameters and tensors (gpt2.gpt2_tensors, turned into llama.cpp's
    names and ``nn.Linear``'s orientation)."""
    import gguf

    config = model.config
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(4 * config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(gpt2.LAYER_NORM_EPS)

    names = gguf.TENSOR_NAMES
    T = gguf.MODEL_TENSOR
    top = {"transformer.wte.weight": names[T.TOKEN_EMBD] + ".weight",
           "transformer.wpe.weight": names[T.POS_EMBD] + ".weight",
           "transformer.ln_f.weight": names[T.OUTPUT_NORM] + ".weight",
           "transformer.ln_f.bias": names[T.OUTPUT_NORM] + ".bias",
           "lm_head.weight": names[T.OUTPUT] + ".weight"}
    block = {"ln_1": T.ATTN_NORM, "attn.c_attn": T.ATTN_QKV, "attn.c_proj": T.ATTN_OUT, "ln_2": T.FFN_NORM,
             "mlp.c_fc": T.FFN_UP, "mlp.c_proj": T.FFN_DOWN}
    tensors = gpt2.gpt2_tensors(model)  # the head bias folded, zero biases filled in: the HF export's tensors
    fold = gpt2.has_head_bias(model)
    transposed = {theirs for _, theirs, t in gpt2.name_map(config.n_layer, config.tie_weights and not fold) if t}
    for theirs, t in tensors.items():
        if theirs in top:
            name = top[theirs]
        else:  # transformer.h.{i}.{module}.{weight|bias}
            _, _, i, rest = theirs.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            name = f"{names[block[module]].format(bid=int(i))}.{kind}"
        writer_tensor = t.t() if theirs in transposed else t  # Conv1D (in, out) back to (out, in)
        _add_weight(writer, name, _to_numpy(writer_tensor), dtype, notes)


def _permute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of W_Q / W_K from the half-split rotary layout (channel i pairs with i + d/2, as model/rope.py and
    Hugging Face's Llama rotate) to the interleaved one (channel 2i pairs with 2i + 1) that llama.cpp's ``llama``
    graph rotates (its rope type NORM): within each head, row i -> 2i and row i + d/2 -> 2i + 1."""
    out_features, n_in = w.shape
    d = out_features // n_head
    return w.reshape(n_head, 2, d // 2, n_in).transpose(1, 2).reshape(out_features, n_in)


def write_llama(writer, model, dtype: str, notes: set[str]) -> None:
    """llama.cpp's ``llama`` architecture (RoPE, RMSNorm, SwiGLU, no biases): hyperparameters and tensors
    (llama.llama_tensors, Hugging Face's Llama names, turned into llama.cpp's; W_Q and W_K rows permuted to
    the rotary pairing llama.cpp uses)."""
    import gguf

    from sifirdan.interop import llama

    config = model.config
    tensors = llama.llama_tensors(model)
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(tensors["model.layers.0.mlp.gate_proj.weight"].shape[0])
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    writer.add_head_count_kv(config.n_head)
    writer.add_layer_norm_rms_eps(llama.RMS_NORM_EPS)
    writer.add_rope_freq_base(float(config.rope_theta))
    writer.add_rope_dimension_count(config.head_size)
    writer.add_vocab_size(config.vocab_size)

    names = gguf.TENSOR_NAMES
    T = gguf.MODEL_TENSOR
    top = {"model.embed_tokens.weight": names[T.TOKEN_EMBD], "model.norm.weight": names[T.OUTPUT_NORM],
           "lm_head.weight": names[T.OUTPUT]}
    block = {"input_layernorm": T.ATTN_NORM, "self_attn.q_proj": T.ATTN_Q, "self_attn.k_proj": T.ATTN_K,
             "self_attn.v_proj": T.ATTN_V, "self_attn.o_proj": T.ATTN_OUT, "post_attention_layernorm": T.FFN_NORM,
             "mlp.gate_proj": T.FFN_GATE, "mlp.up_proj": T.FFN_UP, "mlp.down_proj": T.FFN_DOWN}
    for theirs, t in tensors.items():
        if theirs.endswith((".q_proj.weight", ".k_proj.weight")):
            t = _permute_rope(t, config.n_head)
        stem = theirs[: -len(".weight")]
        if stem + ".weight" in top:
            name = top[stem + ".weight"]
        else:  # model.layers.{i}.{module}
            _, _, i, module = stem.split(".", 3)
            name = names[block[module]].format(bid=int(i))
        _add_weight(writer, name + ".weight", _to_numpy(t), dtype, notes)


ARCHITECTURES = {"gpt2": write_gpt2, "llama": write_llama}
FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}


# ------------------------------------------------------------------------------------------------ Ollama
def _go_string(text: str) -> str:
    """A Go template string literal (Go's strconv.Unquote syntax)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def ollama_template(template) -> str:
    """Our chat template in Ollama's Go-template syntax, over ``.Messages`` (system first if any, then user and
    assistant in turn): the same text as the Jinja one. Every literal is a Go string inside ``{{ }}`` so that
    no whitespace of it can be trimmed."""
    q = _go_string
    return (
        '{{- $system := "" }}{{- $hasSystem := false }}'
        '{{- range .Messages }}{{- if eq .Role "system" }}{{- $system = .Content }}{{- $hasSystem = true }}{{- end }}'
        "{{- end }}"
        f"{{{{- {q(template.bos)} }}}}"
        "{{- $first := true }}"
        "{{- range .Messages }}"
        '{{- if eq .Role "user" }}'
        f"{{{{- {q(template.inst_open)} }}}}"
        f"{{{{- if and $first $hasSystem }}}}{{{{- $system }}}}{{{{- {q(template.system_separator)} }}}}{{{{- end }}}}"
        f"{{{{- .Content }}}}{{{{- {q(template.inst_close + template.resp_open)} }}}}"
        "{{- $first = false }}"
        '{{- else if eq .Role "assistant" }}'
        f"{{{{- .Content }}}}{{{{- {q(template.resp_close)} }}}}"
        "{{- end }}"
        "{{- end }}"
    )


def ollama_modelfile(gguf_name: str, template, stop: list[str], context: int) -> str:
    """The Modelfile text: FROM the file beside it, the chat template, the stop strings, the context length."""
    lines = [MODELFILE_HEADER, f"FROM ./{gguf_name}"]
    if template is not None:
        lines.append(f'TEMPLATE """{ollama_template(template)}"""')
    else:  # a pretrained model continues text: the prompt as it is
        lines.append('TEMPLATE """{{ .Prompt }}"""')
    for s in stop:
        lines.append(f'PARAMETER stop "{s}"')
    lines.append(f"PARAMETER num_ctx {context}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ the export
def is_sifirdan_gguf(path: Path) -> bool:
    """True when ``path`` is a GGUF file this module wrote (its metadata carries ``MARKER_KEY``)."""
    try:
        import gguf

        reader = gguf.GGUFReader(str(path))
        return MARKER_KEY in reader.fields
    except Exception:  # any file that is not a readable GGUF (the reader raises many kinds)
        return False


def _check_out(out: Path, modelfile: Path) -> None:
    from sifirdan.fileio import check_writable_dir

    if out.suffix.lower() != ".gguf":
        raise UserError(f"--out {out} does not end in .gguf; name the file like model.gguf")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {out / 'model.gguf'}")
    if out.exists() and not is_sifirdan_gguf(out):
        raise UserError(f"--out {out} exists and is not a GGUF that `sifirdan export gguf` wrote; sifirdan never "
                        "overwrites it: pick a new file name")
    if modelfile.exists() and (not modelfile.is_file() or not modelfile.read_bytes().startswith(MODELFILE_HEADER.encode())):
        raise UserError(f"{modelfile} exists and was not written by `sifirdan export gguf`; sifirdan never overwrites "
                        "it: export into another folder")
    probe = out.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    check_writable_dir(probe, "--out's folder", "pick a folder you can write")


def export_gguf(model_dir, out_path, dtype: str = "f32", measure_text: list[str] | None = None) -> Report:
    """Write ``model_dir``'s checkpoint as one GGUF file ``out_path`` (``dtype`` f32, f16 or q8_0 for the
    matrices) and an Ollama ``Modelfile`` beside it. ``measure_text``: lines to measure the pre-tokenizer
    agreement on (default: Nutuk's validation split)."""
    try:
        import gguf
    except ImportError:
        raise UserError("`sifirdan export gguf` needs ggml-org's gguf package; install it with "
                        "pip install 'sifirdan[gguf]' (or pip install gguf==0.19.0)") from None

    from sifirdan import checkpoint as ckpt
    from sifirdan.chat.template import template_of
    from sifirdan.fileio import _fsync_dir

    if dtype not in GGUF_DTYPES:
        raise UserError(f"--dtype {dtype!r} is not one of {', '.join(GGUF_DTYPES)}")
    out = Path(out_path)
    modelfile = out.parent / MODELFILE
    _check_out(out, modelfile)
    directory = ckpt.resolve_checkpoint_dir(model_dir)
    meta = ckpt.read_config(directory)
    template = template_of(meta)
    model, tokenizer = ckpt.load_model(directory)
    model.eval()
    config = model.config
    arch = architecture_of(config)
    folded = arch == "gpt2" and gpt2.has_head_bias(model)
    fold = gpt2.fold_error(model) if folded else None
    if arch == "gpt2":
        problem = gpt2.export_problem(model, fold)
    else:
        from sifirdan.interop import llama

        problem = llama.export_problem(model)
    if problem:
        raise UserError(f"cannot export {directory} for llama.cpp: {problem}")
    if template is not None:
        missing = template.missing_tokens(tokenizer)
        if missing:
            raise UserError(f"{directory}: its chat template needs {', '.join(missing)}, which its tokenizer lacks; "
                            "restore the checkpoint's tokenizer.json")
    if not tokenizer.merge_list:  # llama.cpp's BPE vocabulary refuses to load without tokenizer.ggml.merges
        raise UserError(f"{directory}: its tokenizer has no merges (bytes only), and llama.cpp loads no BPE "
                        "tokenizer without them; train one with `sifirdan tokenizer train`")
    if tokenizer.vocab_size > config.vocab_size:
        raise UserError(f"{directory}: the tokenizer has {tokenizer.vocab_size} ids but the model only "
                        f"{config.vocab_size}; save the model with its own tokenizer")

    notes: list[str] = []
    if folded:
        moved, rounding = fold
        notes.append(f"lm_head_bias: llama.cpp's gpt2 head has no bias, so it is folded into an untied output matrix "
                     f"and ln_f's bias (exact algebra; float32 rounding moves logits by up to {moved:.1e}, as computing "
                     f"them ourselves does by {rounding:.1e})")
    pre, exact = gguf_pre(tokenizer.pattern)
    lines = nutuk_val_lines() if measure_text is None else measure_text
    agreement = None
    if not exact:
        agreement = pre_tokenizer_agreement(tokenizer, pre, lines)
        a = agreement
        if a["lines_same"] == a["lines"]:
            notes.append(f"pre-tokenizer: llama.cpp has no regex of its own equal to this tokenizer's; its nearest, "
                         f"'{pre}', gave the same ids on all {a['lines']} lines measured")
        else:
            notes.append(
                f"pre-tokenizer: llama.cpp splits this model's text differently. It has no regex equal to this "
                f"tokenizer's and uses its nearest, '{pre}' (digits one by one): on Nutuk's validation split "
                f"{100 * a['lines_same'] / a['lines']:.1f} % of lines ({a['lines_same']}/{a['lines']}) and "
                f"{100 * a['tokens_same'] / max(a['tokens'], 1):.2f} % of tokens get the same ids ({a['llama_cpp_tokens']:,} "
                f"llama.cpp tokens for sifirdan's {a['tokens']:,}). Prompts llama.cpp tokenizes itself reach the model "
                "as token sequences it saw less often; for identical splits train the tokenizer with "
                "`sifirdan tokenizer train --pre-tokenizer llama.cpp`")
    probe = tokenizer.encode_ordinary("\n".join(lines[:40]))
    gelu = None
    if probe and arch == "gpt2":
        gelu = gelu_logit_diff(model, probe)
        notes.append(f"GELU: llama.cpp's gpt2 graph uses the tanh approximation through a float16 table, sifirdan "
                     f"the exact GELU: on {len(probe[: config.block_size])} tokens of "
                     f"{'Nutuk' if measure_text is None else 'the measured'} text that moves logits by up to "
                     f"{gelu:.1e} (the export itself is exact)")

    tensor_notes: set[str] = set()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_name(directory.name or "sifirdan")
        writer.add_string(MARKER_KEY, str(directory))
        writer.add_file_type(int(getattr(gguf.LlamaFileType, FILE_TYPES[dtype])))
        ARCHITECTURES[arch](writer, model, dtype, tensor_notes)
        eog = add_tokenizer(writer, tokenizer, template, pre, config.vocab_size)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp, 0o644)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(out.parent)
    from sifirdan.fileio import atomic_write_text

    inverse = {i: s for s, i in tokenizer.special_tokens.items()}
    stop = [inverse[i] for i in eog]
    atomic_write_text(modelfile, ollama_modelfile(out.name, template, stop, config.block_size))
    notes.extend(sorted(tensor_notes))
    return Report(out, modelfile, arch, notes, agreement, gelu)
