"""sifirdan — from raw Turkish text to your own GPT, from scratch (fine-tuning it to chat is coming).

Stages (one sub-package each, imports point one way):
    tokenizer  ← data ← train        model ← train / generate
"""

__version__ = "0.1.0"


def load_model(path, device="cpu"):
    """Load a checkpoint directory and return ``(model, tokenizer)``."""
    from sifirdan.checkpoint import load_model as _load

    return _load(path, device=device)


__all__ = ["__version__", "load_model"]
