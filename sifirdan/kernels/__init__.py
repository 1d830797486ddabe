"""sifirdan's CPU speed layer: C kernels for the non-matmul parts of a small GPT's training step.

The model (``sifirdan/model/``) is the guide's math in PyTorch and knows nothing of this package; this package
knows the model. The arrow points one way, ``model <- kernels``, as llm.c keeps ``train_gpt2.c`` plain and its
fast kernels in other files:

  * ``_kernels.c`` / ``_kernels_impl.h`` -- the C code, compiled by ``pip install -e .`` once per instruction set
    (AVX-512, AVX2, generic; the widest this CPU runs is picked at import);
  * ``ops.py`` -- each kernel as an autograd function (``causal_attention``, ``bias_gelu``, ``add_layernorm``,
    ``add_rmsnorm``, ``silu_mul``, ``rope_qkv``, ``cross_entropy``, ``dropout``), tested against the PyTorch code
    it replaces, and ``available()`` /
    ``describe()``: whether this machine should use them;
  * ``fused.py`` -- ``fused_forward(model, idx, targets)``: ``GPT.forward`` again, written with the kernels.

Where it is chosen: in one place, ``accelerate(model)``, which returns a ``FusedGPT`` wrapper (or the model
itself where the kernels do not apply). The trainer calls it (``TrainConfig.cpu_kernels``, ``--no-cpu-kernels``)
and so does ``sifirdan eval``; generation does not (its KV-cache steps are one token wide, where the kernels
gain nothing). Why a wrapper, and not a branch inside ``GPT.forward`` or ``torch.library`` custom ops:

  * the chapter files stay the guide's code: a breakpoint in ``TransformerBlock.forward`` fires whenever the
    kernels are off, and ``attention="explicit"`` is never fused;
  * the fused pass spans layers (a sub-layer's output bias, the residual add and the *next* LayerNorm are one
    kernel), which per-module custom ops cannot express without threading flags through every module;
  * the wrapper owns no parameters, so optimizers, checkpoints, DDP and ``torch.compile`` see the same tensors.

Wrappers stay correct: a layer that is not exactly the ``nn.Linear``/``nn.LayerNorm``/``nn.GELU``/``nn.Dropout``
the model builds (a LoRA adapter, a quantised Linear, a module with hooks) is called, not bypassed; structures
the fused pass cannot represent run ``GPT.forward`` (``fused.why_not`` says why). ``SIFIRDAN_KERNELS=0`` turns the
kernels off for every command; ``SIFIRDAN_KERNELS_ISA=generic|avx2`` forces a narrower copy.
"""

from sifirdan.kernels.fused import FusedGPT, accelerate, fused_forward, why_not
from sifirdan.kernels.ops import (
    FAST_ISAS,
    add_layernorm,
    add_rmsnorm,
    applies,
    available,
    bias_gelu,
    causal_attention,
    cross_entropy,
    describe,
    dropout,
    rope_qkv,
    silu_mul,
)

__all__ = [
    "FAST_ISAS",
    "FusedGPT",
    "accelerate",
    "add_layernorm",
    "add_rmsnorm",
    "applies",
    "available",
    "bias_gelu",
    "causal_attention",
    "cross_entropy",
    "describe",
    "dropout",
    "fused_forward",
    "rope_qkv",
    "silu_mul",
    "why_not",
]
