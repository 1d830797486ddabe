"""Build hook for sifirdan's two optional C extensions (all metadata lives in pyproject.toml).

``pip install -e .`` compiles
  * ``sifirdan/tokenizer/_fastbpe.c`` -- the BPE trainer/encoder core (else: pure Python), and
  * ``sifirdan/kernels/_kernels.c`` -- CPU kernels for a training step (attention, bias+GELU, loss, dropout,
    residual add + LayerNorm or RMSNorm, SwiGLU's gate, rotary positions; else: PyTorch's ops),
    with OpenMP threads where the compiler has them (GCC, Clang with libomp), single-threaded otherwise.
If no C compiler is available both are skipped (``optional=True``) and everything still works, slower.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP = ["-fopenmp"]


class BuildExt(build_ext):
    """Try each extension with OpenMP first; if the compiler or linker refuses it, build it without."""

    def build_extension(self, ext):
        if OPENMP[0] not in ext.extra_compile_args:
            return super().build_extension(ext)
        try:
            return super().build_extension(ext)
        except Exception as exc:  # CompileError / LinkError: no OpenMP here (e.g. Apple Clang)
            self.warn(f"{ext.name}: building without OpenMP ({exc})")
            ext.extra_compile_args = [a for a in ext.extra_compile_args if a not in OPENMP]
            ext.extra_link_args = [a for a in ext.extra_link_args if a not in OPENMP]
            return super().build_extension(ext)


setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=[
        Extension(
            "sifirdan.tokenizer._fastbpe",
            sources=["sifirdan/tokenizer/_fastbpe.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "sifirdan.kernels._kernels",
            sources=["sifirdan/kernels/_kernels.c"],
            depends=["sifirdan/kernels/_kernels_impl.h"],  # included once per instruction set
            # no -ffast-math: the kernels keep IEEE semantics (inf masks, NaN propagation)
            extra_compile_args=["-O3", "-funroll-loops", "-fno-math-errno", "-fno-trapping-math", "-Wno-psabi", *OPENMP],
            extra_link_args=[*OPENMP],
            optional=True,
        ),
    ],
)
