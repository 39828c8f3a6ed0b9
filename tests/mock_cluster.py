"""librdkafka's mock cluster with its fault injection, which confluent-kafka does not expose.

The mock cluster's C API (``rd_kafka_mock_*``) is reached with ctypes in the librdkafka that
confluent-kafka ships. For unit tests and fault injection only: the integration tier uses a real
broker.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import confluent_kafka

__all__ = ["API_OFFSET_COMMIT", "API_PRODUCE", "MockCluster"]

API_PRODUCE = 0
API_OFFSET_COMMIT = 8


def _librdkafka() -> ctypes.CDLL:
    package = Path(confluent_kafka.__file__).parent
    candidates = sorted(package.parent.glob("confluent_kafka.libs/librdkafka*.so*"))
    if not candidates:
        raise RuntimeError(f"no librdkafka next to {package}")
    lib = ctypes.CDLL(str(candidates[0]))
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_mock_cluster_new.restype = ctypes.c_void_p
    lib.rd_kafka_mock_cluster_new.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_mock_cluster_bootstraps.restype = ctypes.c_char_p
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_push_request_errors_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int16,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_int),
    ]
    lib.rd_kafka_mock_topic_create.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_int,
    ]
    lib.rd_kafka_mock_cluster_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    return lib


class MockCluster:
    """An in-process cluster on local ports whose requests can be made to fail on demand."""

    def __init__(self, brokers: int = 1) -> None:
        self._lib = _librdkafka()
        errstr = ctypes.create_string_buffer(512)
        conf = self._lib.rd_kafka_conf_new()
        self._rk = self._lib.rd_kafka_new(0, conf, errstr, len(errstr))
        if not self._rk:
            raise RuntimeError(errstr.value.decode())
        self._cluster = self._lib.rd_kafka_mock_cluster_new(self._rk, brokers)
        self.bootstrap = self._lib.rd_kafka_mock_cluster_bootstraps(self._cluster).decode()

    def create_topic(self, topic: str, partitions: int = 1) -> None:
        self._lib.rd_kafka_mock_topic_create(self._cluster, topic.encode(), partitions, 1)

    def fail_next(self, api_key: int, *errors: int) -> None:
        """The next ``len(errors)`` requests of ``api_key`` answer these error codes, in order."""
        codes = (ctypes.c_int * len(errors))(*errors)
        self._lib.rd_kafka_mock_push_request_errors_array(
            self._cluster, api_key, len(errors), codes
        )

    def close(self) -> None:
        if self._cluster:
            self._lib.rd_kafka_mock_cluster_destroy(self._cluster)
            self._lib.rd_kafka_destroy(self._rk)
            self._cluster = None
