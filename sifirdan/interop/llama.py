"""A sifirdan GPT with the beyond-the-guide block, written as a transformers ``LlamaForCausalLM``.

The block RoPE + RMSNorm + SwiGLU without biases is LLaMA's, so ``sifirdan export hf`` writes such a model in
Llama's names (no custom code needed to load it); the guide's block goes to GPT-2 (``gpt2.py``).

    ours                                        LlamaForCausalLM                            how
    embeddings.token_embedding.weight           model.embed_tokens.weight                   as is
    blocks.{i}.ln1.weight                       model.layers.{i}.input_layernorm.weight     as is
    blocks.{i}.attention.qkv.weight             model.layers.{i}.self_attn.{q,k,v}_proj.weight   split in 3
    blocks.{i}.attention.proj.weight            model.layers.{i}.self_attn.o_proj.weight    as is
    blocks.{i}.ln2.weight                       model.layers.{i}.post_attention_layernorm.weight
    blocks.{i}.feed_forward.{gate,up,proj}      model.layers.{i}.mlp.{gate,up,down}_proj.weight
    ln_f.weight                                 model.norm.weight
    lm_head.weight                              lm_head.weight (left out when tied)

Both compute RoPE on the same channel pairs (i, i + head_size/2: Llama's ``rotate_half``) with the same
frequencies ``theta^(-2i/d)``, and RMSNorm with the same epsilon, so the logits agree to float32 rounding.
What Llama cannot compute -- an LM-head bias (RMSNorm has no zero-mean output to fold it into, unlike GPT-2's
LayerNorm), logit soft-capping, per-head query/key norms, biases, or another MLP -- is refused in one line.
"""

from __future__ import annotations

import torch

from sifirdan.interop.gpt2 import with_token_ids

RMS_NORM_EPS = 1e-5  # model/norms.py: RMSNorm's default, which every RMSNorm of the model uses


def is_llama_block(config) -> bool:
    """True when the config's blocks are Llama's: rotary positions, RMSNorm, a SwiGLU MLP."""
    return (config.position, config.norm, config.mlp) == ("rope", "rmsnorm", "swiglu")


def export_problem(model) -> str | None:
    """Why ``model`` cannot be written as a LlamaForCausalLM without changing what it computes, or None."""
    c = model.config
    if not is_llama_block(c):
        return (f"the block (position={c.position}, norm={c.norm}, mlp={c.mlp}) is neither GPT-2's (learned, "
                "layernorm, gelu) nor Llama's (rope, rmsnorm, swiglu); train with one of them to export")
    if c.bias:
        return "bias is on: Llama's linear layers have no biases; train with --no-bias to export"
    bias = model.lm_head.bias
    if bias is not None and bool(torch.any(bias != 0)):
        return ("lm_head_bias is on: Llama's head has no bias and RMSNorm leaves no constant to fold it into; "
                "train with --no-lm-head-bias to export")
    if c.qk_norm:
        return "qk_norm is on: LlamaForCausalLM has no query/key norms; train with --no-qk-norm to export"
    if c.logit_softcap:
        return "logit_softcap is on: LlamaForCausalLM does not cap its logits; train with --logit-softcap 0 to export"
    if c.tie_weights and model.lm_head.weight is not model.embeddings.token_embedding.weight:
        return "tie_weights is on but the LM head is not the token embedding; save the model again and export that"
    return None


def llama_config(config, *, bos_id, eos_id, pad_id, dtype: str, intermediate_size: int) -> dict:
    """The ``config.json`` of the LlamaForCausalLM that computes what ``GPT(config)`` computes."""
    out = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_head,
        "head_dim": config.head_size,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_theta": float(config.rope_theta),
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "tie_word_embeddings": bool(config.tie_weights),
        "use_cache": True,
        "torch_dtype": dtype,
    }
    return with_token_ids(out, bos_id, eos_id, pad_id)


def llama_tensors(model) -> dict[str, torch.Tensor]:
    """``model``'s weights under Llama's names (call ``export_problem`` first); a tied head is left out."""
    c = model.config
    s = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    out = {"model.embed_tokens.weight": s["embeddings.token_embedding.weight"], "model.norm.weight": s["ln_f.weight"]}
    for i in range(c.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        q, k, v = s[ours + "attention.qkv.weight"].split(c.n_embd, dim=0)
        out.update({
            theirs + "input_layernorm.weight": s[ours + "ln1.weight"],
            theirs + "self_attn.q_proj.weight": q,
            theirs + "self_attn.k_proj.weight": k,
            theirs + "self_attn.v_proj.weight": v,
            theirs + "self_attn.o_proj.weight": s[ours + "attention.proj.weight"],
            theirs + "post_attention_layernorm.weight": s[ours + "ln2.weight"],
            theirs + "mlp.gate_proj.weight": s[ours + "feed_forward.gate.weight"],
            theirs + "mlp.up_proj.weight": s[ours + "feed_forward.up.weight"],
            theirs + "mlp.down_proj.weight": s[ours + "feed_forward.proj.weight"],
        })
    if not c.tie_weights:
        out["lm_head.weight"] = s["lm_head.weight"]
    return {k: t.contiguous().clone() for k, t in out.items()}
