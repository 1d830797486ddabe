"""Build hook for the optional C core of the tokenizer (all metadata lives in pyproject.toml).

``pip install -e .`` compiles ``sifirdan/tokenizer/_fastbpe.c``; if no C compiler is available the build of
that extension is skipped (``optional=True``) and the tokenizer uses its pure-Python code.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sifirdan.tokenizer._fastbpe",
            sources=["sifirdan/tokenizer/_fastbpe.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
