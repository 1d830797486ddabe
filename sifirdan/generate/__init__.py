"""Text generation: one engine (KV cache, batches, sampling, streaming, stop strings) for every caller.

    from sifirdan.generate import Engine, GenerationConfig
    engine = Engine(model, tokenizer)
    result = engine.generate("Türkiye'nin başkenti", GenerationConfig(temperature=0.8, top_p=0.9, seed=1))
    result.text, result.finish_reason, result.completion_tokens

Import direction: generate -> model, tokenizer (never the other way).
"""

from sifirdan.generate.config import MAX_NEW_TOKENS_CAP, GenerationConfig, GenerationResult
from sifirdan.generate.engine import Engine, TokenEvent

__all__ = ["Engine", "GenerationConfig", "GenerationResult", "MAX_NEW_TOKENS_CAP", "TokenEvent"]
