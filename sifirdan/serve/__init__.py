"""``sifirdan serve``: an OpenAI-compatible HTTP server with continuous batching, and the web chat page.

    from sifirdan.serve import ServerConfig, build_app, load_app
    app = load_app("runs/chat", ServerConfig(model_name="chat", max_batch=32))   # an ASGI app for uvicorn

Modules: ``app`` (routes, limits, streaming), ``protocol`` (request fields, checked), ``scheduler`` (the
worker thread that runs ``sifirdan.generate.continuous.ContinuousBatcher``), ``errors`` (OpenAI's error
envelope). Needs the ``serve`` extra: ``pip install -e ".[serve]"`` (starlette, uvicorn).

Import direction: serve -> generate, chat, checkpoint (never the other way).
"""

from sifirdan.serve.app import ServerConfig, build_app, load_app

__all__ = ["ServerConfig", "build_app", "load_app"]
