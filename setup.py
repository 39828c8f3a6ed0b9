"""Build the Cython core; everything else is declared in pyproject.toml."""

from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

ext_dir = Path("comux/_ext")
sources = sorted(ext_dir.glob("*.pyx"))
if not sources:
    # Without this, a tree that lacks the .pyx files (an sdist made without MANIFEST.in) builds
    # a pure-Python `py3-none-any` wheel whose `import comux` fails.
    raise SystemExit(f"setup.py: no Cython sources (*.pyx) in {ext_dir}: cannot build the core")

extensions = [
    Extension(
        f"comux._ext.{pyx.stem}",
        [str(pyx)],
        include_dirs=[str(ext_dir), numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
        depends=[str(p) for p in sorted(ext_dir.glob("*.h"))],
    )
    for pyx in sources
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            # The ring's hand-off is C atomics (ring.h, checked under ThreadSanitizer) and the
            # colour kernels keep no state: on a free-threaded CPython, importing the core
            # leaves the GIL off.
            "freethreading_compatible": True,
        },
    )
)
