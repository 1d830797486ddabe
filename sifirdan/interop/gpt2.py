"""sifirdan's GPT and Hugging Face's GPT-2 (``GPT2LMHeadModel``): the same function under other names.

Both are pre-LN decoder-only transformers with learned positions, one fused q|k|v projection (heads contiguous,
scaled by 1/sqrt(head_size)), a 4x feed-forward network and LayerNorm eps 1e-5. Tensor by tensor:

    sifirdan                                  GPT-2 (transformers)                      orientation
    embeddings.token_embedding.weight         transformer.wte.weight                    as is
    embeddings.position_embedding.weight      transformer.wpe.weight                    as is
    blocks.{i}.ln1.weight / .bias             transformer.h.{i}.ln_1.weight / .bias     as is
    blocks.{i}.attention.qkv.weight / .bias   transformer.h.{i}.attn.c_attn.weight / .bias   weight transposed
    blocks.{i}.attention.proj.weight / .bias  transformer.h.{i}.attn.c_proj.weight / .bias   weight transposed
    blocks.{i}.ln2.weight / .bias             transformer.h.{i}.ln_2.weight / .bias     as is
    blocks.{i}.feed_forward.fc.weight / .bias transformer.h.{i}.mlp.c_fc.weight / .bias      weight transposed
    blocks.{i}.feed_forward.proj.weight/.bias transformer.h.{i}.mlp.c_proj.weight / .bias    weight transposed
    ln_f.weight / .bias                       transformer.ln_f.weight / .bias           as is
    lm_head.weight                            lm_head.weight                            as is (absent when tied)

"Transposed": GPT-2's ``Conv1D`` computes ``x @ W + b`` with W of shape (in, out); ``nn.Linear`` computes
``x @ W.T + b`` with W of shape (out, in). A transpose is exact, so the mapping is lossless both ways.

What GPT-2 cannot express, and what happens to it (``export_problem`` / ``import_problem`` name the option):

* ``lm_head_bias`` (the guide presets' LM head): GPT-2's head has no bias, but it does not need one. A
  LayerNorm's normalised output sums to zero over its channels, so ln_f's output ``h = w * xhat + b`` has a
  direction along which it is the same for every input: ``sum_k h_k / w_k = sum_k b_k / w_k``. A head bias is a
  constant per token, so it folds exactly into an untied head: ``fold_head_bias`` (the algebra is there) shifts
  ln_f's bias and adds one multiple of ``1 / w`` to each row of the head. The export is then
  ``tie_word_embeddings=false`` (the token embedding must stay what the input side reads); its logits are ours
  up to float32 rounding, which ``fold_error`` measures and the export checks. A bias of exact zeros is dropped.
* ``bias=False`` (no biases in the blocks, LayerNorms and ln_f): exported as biases of exact zeros, which
  compute the same function (``x @ W + 0 == x @ W``, a LayerNorm with a zero bias is one without).
* ``dropout`` is training-time only. Ours sits after the feed-forward network alone, which GPT-2's three
  dropouts (embeddings, attention weights, both residual branches) cannot say, so an export sets them to 0:
  the function is the same; fine-tuning with transformers then runs without dropout unless told otherwise.
* GPT-2 options sifirdan has no counterpart for are refused on import: another activation (``gelu_new``, the
  tanh approximation GPT-2 itself uses), ``scale_attn_by_inverse_layer_idx``, ``reorder_and_upcast_attn``,
  ``scale_attn_weights=false``, another LayerNorm eps, ``n_inner`` other than 4 x n_embd, cross-attention.
"""

from __future__ import annotations

import math

import torch

from sifirdan.configs import is_int
from sifirdan.errors import UserError
from sifirdan.model import GPTConfig
from sifirdan.model.config import GUIDE_BLOCK

LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which every LayerNorm in sifirdan's model uses

# (ours inside blocks.{i}., GPT-2's inside transformer.h.{i}., weight transposed?)
_BLOCK = [
    ("ln1.weight", "ln_1.weight", False),
    ("ln1.bias", "ln_1.bias", False),
    ("attention.qkv.weight", "attn.c_attn.weight", True),
    ("attention.qkv.bias", "attn.c_attn.bias", False),
    ("attention.proj.weight", "attn.c_proj.weight", True),
    ("attention.proj.bias", "attn.c_proj.bias", False),
    ("ln2.weight", "ln_2.weight", False),
    ("ln2.bias", "ln_2.bias", False),
    ("feed_forward.fc.weight", "mlp.c_fc.weight", True),
    ("feed_forward.fc.bias", "mlp.c_fc.bias", False),
    ("feed_forward.proj.weight", "mlp.c_proj.weight", True),
    ("feed_forward.proj.bias", "mlp.c_proj.bias", False),
]
_TOP = [
    ("embeddings.token_embedding.weight", "transformer.wte.weight", False),
    ("embeddings.position_embedding.weight", "transformer.wpe.weight", False),
    ("ln_f.weight", "transformer.ln_f.weight", False),
    ("ln_f.bias", "transformer.ln_f.bias", False),
]
HEAD = ("lm_head.weight", "lm_head.weight", False)


def name_map(n_layer: int, tied: bool) -> list[tuple[str, str, bool]]:
    """(our name, GPT-2's name, transposed) for every tensor of a GPT2LMHeadModel file with ``n_layer`` blocks;
    the LM head only when it is not tied (a tied head is the token embedding, stored once)."""
    out = list(_TOP)
    for i in range(n_layer):
        out += [(f"blocks.{i}.{a}", f"transformer.h.{i}.{b}", t) for a, b, t in _BLOCK]
    if not tied:
        out.append(HEAD)
    return out


# ------------------------------------------------------------------------------------------------ export
# How far a folded head may move a logit beyond what float32 rounding moves it already (see fold_error).
FOLD_SLACK = 1e-5


def has_head_bias(model) -> bool:
    """True when the LM head has a bias with a non-zero entry (one of exact zeros is dropped, changing nothing)."""
    bias = model.lm_head.bias
    return bias is not None and bool(torch.any(bias != 0))


def fold_head_bias(ln_weight: torch.Tensor, ln_bias: torch.Tensor | None, head_weight: torch.Tensor,
                   head_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ln_f bias, head weight)`` of a bias-free head computing ``ln_f(x) @ head_weight.T + head_bias``.

    With ``g = ln_weight``, ``b = ln_bias`` and ``xhat`` LayerNorm's normalised input (its channels sum to 0),
    ln_f's output is ``h = g * xhat + b``, so ``h . (1 / g) = sum(b / g) =: C`` for every input. Shift ln_f's
    bias to ``b' = b + t * g``: then ``h' . (1 / g) = C + t * n`` (n channels). Add ``c_j / g`` to head row
    ``w_j``, with ``c_j = (bias_j - t * (g . w_j)) / (C + t * n)``:

        h' . w'_j = h . w_j + t * (g . w_j) + c_j * (C + t * n) = h . w_j + bias_j       for every input.

    ``t = +-1`` (the sign of C) keeps ``C + t * n`` at least n away from zero, so the added rows stay small and
    the rounding of float32 arithmetic on them no larger than on the rest. Computed in float64."""
    g = ln_weight.detach().double()
    b = torch.zeros_like(g) if ln_bias is None else ln_bias.detach().double()
    w, bias = head_weight.detach().double(), head_bias.detach().double()
    n = g.numel()
    constant = float((b / g).sum())
    t = 1.0 if constant >= 0 else -1.0
    c = (bias - t * (w @ g)) / (constant + t * n)  # (vocab,)
    new_ln_bias = b + t * g
    new_head = w + c[:, None] / g[None, :]
    dtype = head_weight.dtype
    return new_ln_bias.to(dtype), new_head.to(dtype)


def fold_error(model, probes: int = 256, seed: int = 0) -> tuple[float, float]:
    """``(folded, plain)``: the largest distance, over ``probes`` random ln_f inputs, of the float32 logits of the
    folded bias-free head (``fold_head_bias``) and of the model's own head from the float64 logits. The fold is
    exact algebra; these say how much float32 rounding each way of computing them carries."""
    import torch.nn.functional as F

    ln, head = model.ln_f, model.lm_head
    n = ln.weight.numel()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(probes, n, generator=gen, dtype=torch.float64) * 3 + torch.randn(n, generator=gen, dtype=torch.float64)
    g, b = ln.weight.detach(), (ln.bias.detach() if ln.bias is not None else None)
    exact = F.layer_norm(x, (n,), g.double(), None if b is None else b.double(), ln.eps) @ head.weight.detach().double().t()
    exact = exact + head.bias.detach().double()
    x32 = x.float()
    plain = F.linear(F.layer_norm(x32, (n,), g.float(), None if b is None else b.float(), ln.eps),
                     head.weight.detach().float(), head.bias.detach().float())
    new_b, new_w = fold_head_bias(g, b, head.weight, head.bias)
    folded = F.layer_norm(x32, (n,), g.float(), new_b.float(), ln.eps) @ new_w.float().t()
    return (folded.double() - exact).abs().max().item(), (plain.double() - exact).abs().max().item()


def export_problem(model, fold: tuple[float, float] | None = None) -> str | None:
    """Why ``model`` cannot be written as a GPT-2 without changing what it computes (one line), or None.
    ``fold``: ``fold_error(model)`` when the caller has it already."""
    config = model.config
    if has_head_bias(model):
        g = model.ln_f.weight.detach()
        if not bool(torch.all(torch.isfinite(g))) or bool(torch.any(g == 0)):
            return ("lm_head_bias is on and ln_f.weight has a zero (or non-finite) entry, so the head's bias cannot "
                    "be folded into GPT-2's bias-free head; export a model trained with `--no-lm-head-bias`")
        folded, plain = fold if fold is not None else fold_error(model)
        if not folded <= 2 * plain + FOLD_SLACK:
            return (f"lm_head_bias is on and folding it into GPT-2's bias-free head would move logits by {folded:.1e} "
                    f"(float32 rounding alone: {plain:.1e}; ln_f.weight has entries near 0); export a model trained "
                    "with `--no-lm-head-bias`")
    expected = {ours for ours, _, _ in name_map(config.n_layer, tied=False)} | {"lm_head.bias"}
    extra = sorted(set(model.state_dict()) - expected)
    if extra:
        return f"the model holds tensors GPT-2 has no place for ({', '.join(extra[:3])}); export a plain sifirdan GPT"
    if config.tie_weights and model.lm_head.weight is not model.embeddings.token_embedding.weight:
        return "tie_weights is on but the LM head is not the token embedding; save the model again and export that"
    return None


def gpt2_config(config: GPTConfig, *, bos_id: int | None, eos_id: int | None, pad_id: int | None, dtype: str,
                tied: bool | None = None) -> dict:
    """The ``config.json`` of the GPT2LMHeadModel that computes what ``GPT(config)`` computes. ``tied``: whether
    the written head is the token embedding (default ``config.tie_weights``; False for a folded head bias)."""
    out = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": 4 * config.n_embd,
        "activation_function": "gelu",  # exact erf GELU, nn.GELU(); GPT-2's own "gelu_new" is the tanh one
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        # ours is one dropout after the feed-forward network; GPT-2 has no such one (see the module docstring)
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": config.tie_weights if tied is None else tied,
        "use_cache": True,
        "torch_dtype": dtype,
    }
    return with_token_ids(out, bos_id, eos_id, pad_id)


def with_token_ids(config: dict, bos_id: int | None, eos_id: int | None, pad_id: int | None) -> dict:
    """A transformers ``config.json`` with the bos / eos / pad ids that are set (GPT-2's and Llama's alike)."""
    for key, value in (("bos_token_id", bos_id), ("eos_token_id", eos_id), ("pad_token_id", pad_id)):
        if value is not None:
            config[key] = value
    return config


def gpt2_tensors(model) -> dict[str, torch.Tensor]:
    """``model``'s weights under GPT-2's names and orientation (call ``export_problem`` first). Missing biases
    (``bias=False``) become exact zeros; a tied LM head is left out, as transformers writes it. A head bias is
    folded (``fold_head_bias``): ln_f's bias and an untied ``lm_head.weight`` carry it."""
    config = model.config
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    fold = has_head_bias(model)
    if fold:
        state["ln_f.bias"], state["lm_head.weight"] = fold_head_bias(
            state["ln_f.weight"], state.get("ln_f.bias"), state["lm_head.weight"], state["lm_head.bias"])
    out = {}
    for ours, theirs, transposed in name_map(config.n_layer, config.tie_weights and not fold):
        t = state.get(ours)
        if t is None:  # a bias of a bias=False model: zeros, the shape of its weight's output
            weight = state[ours[: -len("bias")] + "weight"]
            t = torch.zeros(weight.shape[0], dtype=weight.dtype)
        out[theirs] = (t.t() if transposed else t).contiguous().clone()
    return out


# ------------------------------------------------------------------------------------------------ import
def import_problem(hf: dict) -> str | None:
    """Why a GPT-2 ``config.json`` describes a model sifirdan cannot compute exactly (one line), or None."""
    mtype = hf.get("model_type")
    if mtype != "gpt2":
        return (f"model_type is {mtype!r}; sifirdan imports GPT-2 models only (model_type 'gpt2': learned positions, "
                "pre-LN blocks, one fused c_attn)")
    for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
        value = hf.get(key)
        if not is_int(value) or value <= 0:
            return f"{key} is {value!r}, not a positive integer"
    if hf["n_embd"] % hf["n_head"]:
        return f"n_embd {hf['n_embd']} is not divisible by n_head {hf['n_head']}"
    act = hf.get("activation_function", "gelu_new")
    if act != "gelu":
        what = " (the tanh approximation)" if act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast") else ""
        return (f"activation_function is {act!r}{what}; sifirdan's feed-forward uses the exact GELU ('gelu'), "
                "and importing would change every output")
    n_inner = hf.get("n_inner")
    if n_inner is not None and n_inner != 4 * hf["n_embd"]:
        return f"n_inner is {n_inner!r}; sifirdan's feed-forward is 4 x n_embd = {4 * hf['n_embd']} wide"
    eps = hf.get("layer_norm_epsilon", LAYER_NORM_EPS)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isclose(eps, LAYER_NORM_EPS, rel_tol=1e-9, abs_tol=0):
        return f"layer_norm_epsilon is {eps!r}; sifirdan's LayerNorms use {LAYER_NORM_EPS}"
    for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                      ("reorder_and_upcast_attn", False), ("add_cross_attention", False)):
        value = hf.get(key, want)
        if value is not want:
            return f"{key} is {value!r}; sifirdan's attention has no such option (it needs {key}={str(want).lower()})"
    tie = hf.get("tie_word_embeddings", True)
    if not isinstance(tie, bool):
        return f"tie_word_embeddings is {tie!r}, not true or false"
    return None


SHAPE_FIELDS = ("vocab_size", "block_size", "n_embd", "n_head", "n_layer", "tie_weights")
RECORD_FIELDS = ("bias", "dropout", "attention", "init")  # sifirdan fields a GPT-2 config.json has no place for


def shape_fields(hf: dict) -> dict:
    """The GPTConfig fields (``SHAPE_FIELDS``) a GPT-2 ``config.json`` (checked by ``import_problem``) sets."""
    return dict(vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_embd=hf["n_embd"],
                n_head=hf["n_head"], n_layer=hf["n_layer"], tie_weights=hf.get("tie_word_embeddings", True))


def sifirdan_config(hf: dict, record: dict | None = None) -> tuple[GPTConfig, bool]:
    """``(GPTConfig, record used)`` for a GPT-2 ``config.json`` (checked by ``import_problem``). ``record``: the
    sifirdan model config an export wrote beside it; its ``RECORD_FIELDS`` are taken when it describes this very
    shape and is a valid config (the caller still checks that ``bias=False`` finds only zero biases)."""
    fields = shape_fields(hf)
    # GPT-2's block, whatever GPTConfig's defaults are: learned positions, LayerNorm, GELU, biases
    plain = GPTConfig.from_dict({**fields, **GUIDE_BLOCK, "bias": True, "lm_head_bias": False, "dropout": 0.0, "init": "guide"})
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in fields.items()):
        return plain, False
    try:
        return GPTConfig.from_dict({**plain.to_dict(), **{k: record[k] for k in RECORD_FIELDS if k in record}}), True
    except UserError:
        return plain, False


def strip_prefix(names) -> dict[str, str]:
    """GPT-2 file name -> the name with ``transformer.`` in front (files saved from a ``GPT2Model``, such as the
    original gpt2 repository's, leave it out). The causal-mask buffers old files carry (``h.{i}.attn.bias`` of
    shape (1, 1, n, n), ``attn.masked_bias``) are not weights and map to None."""
    out = {}
    for n in names:
        full = n if n.startswith("transformer.") or n.startswith("lm_head.") else f"transformer.{n}"
        parts = full.split(".")
        if len(parts) == 5 and parts[1] == "h" and parts[3] == "attn" and parts[4] in ("bias", "masked_bias"):
            full = None
        out[n] = full
    return out


def sifirdan_state(config: GPTConfig, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """GPT-2 tensors (full names, shapes checked) -> ``GPT(config)``'s state dict. With ``config.bias`` off the
    biases are left out (the caller checked that they are all zeros)."""
    state = {}
    for ours, theirs, transposed in name_map(config.n_layer, config.tie_weights):
        if not config.bias and ours.endswith(".bias"):
            continue
        t = tensors[theirs]
        state[ours] = (t.t() if transposed else t).contiguous().to(torch.float32)
    if config.tie_weights:
        state[HEAD[0]] = state["embeddings.token_embedding.weight"]
    return state


def expected_gpt2_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """GPT-2 name -> shape for every tensor a GPT2LMHeadModel file of this config holds."""
    C, V, T = config.n_embd, config.vocab_size, config.block_size
    block = {
        "ln_1.weight": (C,), "ln_1.bias": (C,), "attn.c_attn.weight": (C, 3 * C), "attn.c_attn.bias": (3 * C,),
        "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,), "ln_2.weight": (C,), "ln_2.bias": (C,),
        "mlp.c_fc.weight": (C, 4 * C), "mlp.c_fc.bias": (4 * C,), "mlp.c_proj.weight": (4 * C, C), "mlp.c_proj.bias": (C,),
    }
    out = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (T, C),
           "transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)}
    for i in range(config.n_layer):
        out.update({f"transformer.h.{i}.{k}": s for k, s in block.items()})
    if not config.tie_weights:
        out["lm_head.weight"] = (V, C)
    return out


def check_import_config(hf: dict, source: str) -> None:
    problem = import_problem(hf)
    if problem:
        raise UserError(f"{source}: {problem}; sifirdan cannot represent this model")
