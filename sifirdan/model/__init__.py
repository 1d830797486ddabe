"""The model, one file per guide chapter: embeddings (§3), attention (§4), feedforward (§5), block (§6), gpt (§7)."""

from sifirdan.model.config import MODEL_PRESETS, GPTConfig
from sifirdan.model.gpt import GPT, IGNORE_INDEX
from sifirdan.model.kv_cache import KVCache

__all__ = ["GPT", "GPTConfig", "IGNORE_INDEX", "KVCache", "MODEL_PRESETS"]
