"""sifirdan — from raw Turkish text to your own chatting GPT, from scratch: a BPE tokenizer, pre-training,
instruction fine-tuning, chat, an OpenAI-compatible server and a Hugging Face export.

    from sifirdan.train import pretrain, finetune   # the two training stages as library calls

Stages (one sub-package each, imports point one way; README "How the code is laid out"):
    tokenizer ← data ← train ← cli        model ← train / generate / serve / interop
"""

__version__ = "0.1.0"


def load_model(path, device="cpu"):
    """Load a checkpoint directory and return ``(model, tokenizer)``."""
    from sifirdan.checkpoint import load_model as _load

    return _load(path, device=device)


__all__ = ["__version__", "load_model"]
