"""The compiled core. Importing it fails with instructions when it was never built."""

try:
    from . import convert
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "comux's compiled core (comux._ext) is missing or was built for another Python. "
        "Build it with `pip install -e .` (or `python setup.py build_ext --inplace`) "
        "in the comux source folder; it needs a C compiler, Cython and numpy."
    ) from exc

__all__ = ["convert"]
