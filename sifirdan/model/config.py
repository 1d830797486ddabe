"""GPTConfig: every architectural choice of the model in one typed dataclass, plus the guide's presets (§10).

Names follow the guide: ``vocab_size``, ``block_size``, ``n_embd``, ``n_head``, ``n_layer``, ``dropout``.
The guide's exact architecture is always reachable: ``GPTConfig.from_preset("guide", attention="explicit")``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from sifirdan.configs import check_choice, check_types, dataclass_from_dict
from sifirdan.errors import UserError

ATTENTION_KINDS = ("sdpa", "explicit")
# keys older config.json files carry that are no longer model fields: dropped on reading. ``cpu_kernels`` was
# a run-time choice, not architecture; it is ``TrainConfig.cpu_kernels`` now (sifirdan/kernels).
LEGACY_KEYS = frozenset({"cpu_kernels"})
INIT_KINDS = ("guide", "scaled", "zero_out", "pytorch")
POSITION_KINDS = ("learned", "rope")  # model/embeddings.py (the guide) | model/rope.py
NORM_KINDS = ("layernorm", "rmsnorm")  # nn.LayerNorm (the guide) | model/norms.py
MLP_KINDS = ("gelu", "relu2", "swiglu")  # model/feedforward.py (the guide) | model/mlp_variants.py
# fields that take one of a fixed set of values: validate() checks them, the CLI offers them as choices
FIELD_CHOICES = {"attention": ATTENTION_KINDS, "init": INIT_KINDS, "position": POSITION_KINDS, "norm": NORM_KINDS,
                 "mlp": MLP_KINDS}


@dataclass
class GPTConfig:
    vocab_size: int = 4096  # tokens the embedding table and LM head know (the guide: 500)
    # longest context. 256, not the guide's 128: with rotary positions a model fine-tuned on longer answers than
    # it was pre-trained on falls into loops (Nutuk QA at block 384 on a 128 base: 90 % of held-out answers loop,
    # F1 0.046; on a 256 base: 33 %, 0.082; bench/RESULTS.md, issue 21)
    block_size: int = 256
    n_embd: int = 128  # width of the residual stream
    n_head: int = 4  # attention heads; head_size = n_embd // n_head
    n_layer: int = 4  # transformer blocks
    dropout: float = 0.0  # after the feed-forward network, where the guide puts it (the guide: 0.1)
    bias: bool = False  # biases in the blocks' Linear and norm layers and ln_f (the guide: yes; LLaMA: no)
    # a bias in the LM head (the guide: yes, nn.Linear's default; GPT-2 and LLaMA: no). With the guide's block it
    # carries the tokens' unigram prior (issue 12: 1.829 vs 1.864 val bits/char at equal steps) and `export hf`
    # folds it into GPT-2's head (interop/gpt2.py: fold_head_bias); RMSNorm leaves nothing to fold it into, and
    # the default block does without it.
    lm_head_bias: bool = False
    attention: str = "sdpa"  # "explicit": the guide's masked_fill + softmax; "sdpa": fused kernel, same math
    # share the token embedding with the LM head (the guide: no; GPT-2: yes). Measured on Nutuk at equal
    # wall time: 1.824 vs 1.850 bits/char (vocab 4096: 0.5 M fewer parameters to fit, and the head's rows
    # learn from the input side too). The guide's presets keep it off.
    tie_weights: bool = True
    # "guide": N(0, 0.02) weights, zero biases (matches the guide's step-0 loss 6.244 at vocab 500)
    # "scaled": as "guide" but residual output projections get std 0.02/sqrt(2*n_layer) (GPT-2)
    # "zero_out": as "guide" but every residual output projection starts at zero, so each block starts as the
    #   identity (modded-nanogpt, nanochat)
    # "pytorch": PyTorch's default Linear/Embedding init
    init: str = "zero_out"
    # --- beyond the guide: each piece its own file, each switchable (bench/RESULTS.md, issue 21, measures each).
    # The default block is LLaMA's: rotary positions, RMSNorm, SwiGLU, no biases. On Nutuk at the demo's 1500
    # steps it takes val bits/char from 1.848 (the guide's block) to 1.737; `export hf` writes it as Llama.
    position: str = "rope"  # "learned": the guide's position table; "rope": rotary (model/rope.py)
    rope_theta: float = 10000.0  # RoPE's base (position="rope" only)
    norm: str = "rmsnorm"  # "layernorm": the guide's nn.LayerNorm; "rmsnorm": model/norms.py
    mlp: str = "swiglu"  # "gelu": the guide's (model/feedforward.py); "relu2" | "swiglu": model/mlp_variants.py
    qk_norm: bool = False  # RMS-normalise queries and keys per head before attention (model/norms.py)
    logit_softcap: float = 0.0  # > 0: logits = c * tanh(logits / c) (Gemma 2, modded-nanogpt); 0 = off

    def __post_init__(self):
        self.validate()

    @property
    def gpt2_block(self) -> bool:
        """True when the blocks are the guide's / GPT-2's: learned positions, LayerNorm, GELU MLP, plain logits."""
        return (self.position, self.norm, self.mlp, self.qk_norm, self.logit_softcap) == (
            "learned", "layernorm", "gelu", False, 0.0)

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def validate(self) -> None:
        check_types(self)
        for name in ("vocab_size", "block_size", "n_embd", "n_head", "n_layer"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise UserError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"pick e.g. --n-head {_divisor_hint(self.n_embd, self.n_head)}"
            )
        if self.position == "rope" and self.head_size % 2:
            raise UserError(f"position='rope' needs an even head size, got n_embd/n_head = {self.head_size}")
        if not (isinstance(self.rope_theta, (int, float)) and math.isfinite(self.rope_theta) and self.rope_theta > 1):
            raise UserError(f"rope_theta must be a finite number > 1, got {self.rope_theta!r}; e.g. 10000")
        if not (isinstance(self.logit_softcap, (int, float)) and math.isfinite(self.logit_softcap)
                and self.logit_softcap >= 0):
            raise UserError(f"logit_softcap must be a finite number >= 0 (0 = off), got {self.logit_softcap!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
        for name, choices in FIELD_CHOICES.items():
            check_choice(name, getattr(self, name), choices)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        if isinstance(d, dict):
            d = {k: v for k, v in d.items() if k not in LEGACY_KEYS}
        return dataclass_from_dict(cls, d, "model")

    @staticmethod
    def upgrade_saved(d: dict) -> dict:
        """A model config as a checkpoint saved it, with the fields added since then set to what that
        checkpoint meant: ``lm_head_bias`` was ``bias`` before it was its own field. For configs read back
        from a checkpoint only (config.json, the weights' architecture record); a new config's missing field
        takes the default."""
        if isinstance(d, dict) and "lm_head_bias" not in d:
            d = {**d, "lm_head_bias": d.get("bias", True)}
        if isinstance(d, dict) and "position" not in d:  # saved before the beyond-the-guide block: the guide's
            d = {**GUIDE_BLOCK, **d}
        return d

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPTConfig":
        if name not in MODEL_PRESETS:
            raise UserError(f"unknown preset {name!r}; choose one of {', '.join(MODEL_PRESETS)}")
        return cls.from_dict({**MODEL_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})


def _divisor_hint(n_embd: int, n_head: int) -> int:
    """The divisor of n_embd nearest to n_head (the smaller one on a tie). Walks outwards from n_head, so it
    costs O(distance), not O(n_embd): a hostile n_embd of 10**9 in a config.json must not stall the error."""
    for delta in range(0, 4096):
        for d in (n_head - delta, n_head + delta):
            if 1 <= d <= n_embd and n_embd % d == 0:
                return d
    return 1


# The guide's block (GPT-2's): what a config saved before the beyond-the-guide fields existed meant
GUIDE_BLOCK = dict(position="learned", rope_theta=10000.0, norm="layernorm", mlp="gelu", qk_norm=False, logit_softcap=0.0)

# The guide's §10 table (n_embd / n_head / n_layer). "guide" is the model the guide trains (§7-8).
# The guide's LM head is a plain nn.Linear (with a bias) and not tied to the embedding, and its blocks are GPT-2's
# (learned positions, LayerNorm, GELU, biases): its presets keep all of that, whatever the defaults are.
_GUIDE_HEAD = dict(tie_weights=False, lm_head_bias=True, bias=True, init="guide", **GUIDE_BLOCK)
MODEL_PRESETS: dict[str, dict] = {
    "nano": dict(n_embd=64, n_head=2, n_layer=2, block_size=128, vocab_size=500, **_GUIDE_HEAD),
    "guide": dict(n_embd=128, n_head=4, n_layer=4, block_size=128, vocab_size=500, dropout=0.1, **_GUIDE_HEAD),
    "small": dict(n_embd=256, n_head=8, n_layer=6, block_size=256, vocab_size=500, **_GUIDE_HEAD),
    "medium": dict(n_embd=512, n_head=16, n_layer=12, block_size=512, vocab_size=500, **_GUIDE_HEAD),
}
