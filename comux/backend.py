"""Which core the pipeline runs on: the compiled kernels or the pure-Python reference.

``COMUX_BACKEND`` is read once, when comux is first imported:

- ``compiled`` (the default): decoded frames are converted into their batch slot by the
  ``nogil`` kernels of ``comux/_ext/convert.pyx``.
- ``reference``: the same pipeline with the pure-Python path (swscale through PyAV, then one
  copy into the slot). ``comux._ext`` is not imported, so it runs on a tree whose core was never
  built, and the tests run against it as they do against the compiled one (uvloop, pyzmq).

Example::

    COMUX_BACKEND=reference python -m pytest tests/unit/test_batching.py
"""

from __future__ import annotations

import os
from typing import Final, Literal

from .errors import ConfigError

__all__ = ["BACKEND", "BACKENDS", "ENV_VAR", "Backend"]

Backend = Literal["compiled", "reference"]
BACKENDS: Final[tuple[Backend, ...]] = ("compiled", "reference")
ENV_VAR: Final = "COMUX_BACKEND"


def _from_environment() -> Backend:
    value = os.environ.get(ENV_VAR, "").strip().lower() or "compiled"
    for backend in BACKENDS:
        if value == backend:
            return backend
    raise ConfigError(f"{ENV_VAR} must be one of {', '.join(BACKENDS)}, got {value!r}")


BACKEND: Final[Backend] = _from_environment()
"""The backend this process runs on."""
