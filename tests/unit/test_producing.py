from __future__ import annotations

import numpy as np
import pytest

from comux.errors import ConfigError
from comux.producing import encode_headers


def test_header_values_are_encoded_by_type():
    out = dict(
        encode_headers(
            {"s": "person", "b": b"\x00\x01", "n": 3, "d": {"boxes": [[1, 2]]}, "a": np.arange(3)}
        )
    )
    assert out == {
        "s": b"person",
        "b": b"\x00\x01",
        "n": b"3",
        "d": b'{"boxes": [[1, 2]]}',
        "a": b"[0, 1, 2]",
    }


def test_bad_headers_raise_config_error():
    with pytest.raises(ConfigError):
        encode_headers([("a", "b")])  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        encode_headers({1: "b"})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="'o'"):
        encode_headers({"o": object()})
