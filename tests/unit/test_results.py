from __future__ import annotations

import numpy as np
import pytest

from comux.errors import ConfigError
from comux.results import ResultProducer, encode_headers
from tests.fakes import FakeMessage


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


def test_non_finite_numbers_are_written_as_strings_json_can_read():
    out = dict(encode_headers({"x": float("nan"), "d": {"s": [1.5, float("-inf")]}}))
    assert out == {"x": b'"NaN"', "d": b'{"s": [1.5, "-Infinity"]}'}
    assert dict(encode_headers({"a": np.array([np.inf, 1.0])})) == {"a": b'["Infinity", 1.0]'}


def test_text_that_is_not_utf8_raises_config_error_naming_the_header():
    with pytest.raises(ConfigError, match="'label'"):
        encode_headers({"label": "\udcff"})
    with pytest.raises(ConfigError, match="name"):
        encode_headers({"\udcff": "x"})


def test_the_comux_prefix_is_reserved():
    with pytest.raises(ConfigError, match="reserved"):
        encode_headers({"comux-source-offset": "1"})
    with pytest.raises(ConfigError, match="reserved"):
        encode_headers({"Comux-Anything": "1"})


def test_a_full_producer_queue_waits_and_every_result_is_delivered(mock_cluster):
    producer = ResultProducer(
        mock_cluster,
        options={"queue.buffering.max.messages": 2, "linger.ms": 50, "log_level": 2},
    )
    reports: list[object] = []
    try:
        for i in range(20):
            producer.send("results", FakeMessage(b"x", i), {"n": i}, on_delivery=reports.append)
        assert producer.close(10) == 0
    finally:
        producer.close(1)
    assert reports == [None] * 20
    assert producer.delivered == 20 and producer.failed == 0


def test_close_says_how_many_results_were_not_delivered():
    producer = ResultProducer(
        "127.0.0.1:1", strict_on_fail=False, options={"message.timeout.ms": 60_000}
    )
    producer.send("results", FakeMessage(b"x", 0), None)
    assert producer.close(0.5) == 1
