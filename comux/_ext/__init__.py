"""The compiled core. Importing it fails with instructions when it was never built.

With ``COMUX_BACKEND=reference`` (see :mod:`comux.backend`) the pipeline does not use it and
this package does not import it; ``from comux._ext import convert`` still does.
"""

from ..backend import BACKEND

if BACKEND == "compiled":
    try:
        from . import convert
    except ImportError as exc:  # pragma: no cover - exercised only on a broken install
        raise ImportError(
            "comux's compiled core (comux._ext) is missing or was built for another Python. "
            "Build it with `pip install -e .` (or `python setup.py build_ext --inplace`) "
            "in the comux source folder; it needs a C compiler, Cython and numpy; or run "
            "the pure-Python reference with COMUX_BACKEND=reference."
        ) from exc

__all__ = ["convert"]
