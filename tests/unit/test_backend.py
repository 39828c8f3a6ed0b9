"""COMUX_BACKEND: the pipeline on the compiled core or on the pure-Python reference."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from comux import backend
from comux.batching import compiled_writer, frame_writer, pyav_writer
from comux.errors import ConfigError


def run_python(code: str, value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != backend.ENV_VAR}
    if value is not None:
        env[backend.ENV_VAR] = value
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def kind(writer: object) -> str:
    return getattr(writer, "__qualname__", "").split(".")[0]


def test_frame_writer_follows_the_backend_unless_told_which():
    expected = {"compiled": "compiled_writer", "reference": "pyav_writer"}
    assert kind(frame_writer("rgb24")) == expected[backend.BACKEND]
    assert kind(frame_writer("rgb24", backend="compiled")) == "compiled_writer"
    assert kind(frame_writer("gray", backend="reference")) == "pyav_writer"
    assert kind(compiled_writer("rgb24")) == "compiled_writer"
    assert kind(pyav_writer("rgb24")) == "pyav_writer"
    with pytest.raises(ConfigError, match="backend must be one of compiled, reference"):
        frame_writer("rgb24", backend="cffi")  # type: ignore[arg-type]


PIPELINE = """
import sys
from comux import Comux, backend
cameras = Comux(["a"])
cameras.setup_decoders(W=64, H=48)
print(backend.BACKEND, cameras._pool._writer.__qualname__.split(".")[0],
      "comux._ext.convert" in sys.modules, type(cameras._pool._ring).__module__)
"""


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, "compiled compiled_writer True comux._ext.ring"),
        ("compiled", "compiled compiled_writer True comux._ext.ring"),
        (" Reference ", "reference pyav_writer False comux.ring"),
    ],
)
def test_the_environment_picks_the_pipeline_s_writer_once_at_import(value, shown):
    """The reference pipeline never imports the compiled core (its writer nor its ring), so it
    runs without one."""
    done = run_python(PIPELINE, value)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == shown


def test_an_unknown_backend_fails_the_import_with_the_choices():
    done = run_python("import comux", "cffi")
    assert done.returncode != 0
    assert "COMUX_BACKEND must be one of compiled, reference, got 'cffi'" in done.stderr
