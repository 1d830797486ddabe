"""Interoperability with Hugging Face ``transformers``: export a sifirdan model as a GPT-2, import a GPT-2.

    from sifirdan.interop import export_hf, import_hf
    export_hf("runs/nutuk", "hf/nutuk")       # AutoModelForCausalLM / AutoTokenizer load it, offline
    import_hf("hf/nutuk", "runs/back")        # a sifirdan checkpoint again: the same weights, ids and logits

``gpt2.py`` is the tensor-by-tensor mapping and what GPT-2 cannot express; ``jinja_template.py`` writes our chat
template as the Jinja transformers applies; ``hf.py`` reads and writes the directories. transformers itself is
not needed for either direction (only to load the result).
"""

from sifirdan.interop.jinja_template import jinja_chat_template
from sifirdan.interop.hf import export_hf, import_hf, is_export

__all__ = ["export_hf", "import_hf", "is_export", "jinja_chat_template"]
