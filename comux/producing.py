"""Results back to Kafka: the original packet, the model's headers and the packet's origin."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import KafkaException, Producer

from .config import redact
from .consuming import check_broker
from .decoding import Message
from .errors import ComuxTimeoutError, ConfigError, KafkaError

__all__ = ["ResultProducer", "encode_headers", "SOURCE_HEADERS"]

log = logging.getLogger("comux.producing")

SOURCE_HEADERS = ("comux-source-topic", "comux-source-partition", "comux-source-offset")
HeaderValue = str | bytes | None | Any


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays are what a model's results are usually made of.
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"header value of type {type(value).__name__} is not JSON serializable")


def encode_headers(headers: Mapping[str, HeaderValue] | None) -> list[tuple[str, bytes]]:
    """Encode str as UTF-8, keep bytes, JSON-encode everything else."""
    if headers is None:
        return []
    if not isinstance(headers, Mapping):
        raise ConfigError(
            f"headers must be a mapping of str to values, got {type(headers).__name__}"
        )
    out: list[tuple[str, bytes]] = []
    for name, value in headers.items():
        if not isinstance(name, str):
            raise ConfigError(f"header names must be str, got {name!r}")
        if isinstance(value, bytes):
            out.append((name, value))
        elif isinstance(value, str):
            out.append((name, value.encode()))
        else:
            try:
                out.append((name, json.dumps(value, default=_json_default).encode()))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"header {name!r}: {exc}") from None
    return out


class ResultProducer:
    """Produce packets with headers; a background thread serves delivery reports."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        strict_on_fail: bool = True,
        options: Mapping[str, Any] | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        config: dict[str, Any] = {
            "linger.ms": 5,
            "message.max.bytes": 16_000_000,
            "client.id": "comux-producer",
            "logger": logging.getLogger("comux.kafka"),
        }
        config.update(options or {})
        config["bootstrap.servers"] = bootstrap_servers
        self.bootstrap_servers = bootstrap_servers
        self._options = dict(options or {})
        self._producer = Producer(config, error_cb=lambda err: log.warning("kafka: %s", err))
        if strict_on_fail:
            check_broker(self._producer, bootstrap_servers, connect_timeout)
        self.sent = 0
        self.delivered = 0
        self.failed = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="comux-producer", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return (
            f"ResultProducer(bootstrap_servers={self.bootstrap_servers!r}, "
            f"options={redact(self._options)})"
        )

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    def _delivered(self, err: RdKafkaError | None, _msg: Any) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1
            self.last_error = str(err)
            log.error("delivery failed: %s", err)

    def send(
        self,
        topic: str,
        source: Message,
        headers: Mapping[str, HeaderValue] | None,
        *,
        key: bytes | None = None,
        timeout: float = 10.0,
    ) -> None:
        """Produce ``source``'s value to ``topic`` with its headers, provenance and ``headers``."""
        out: list[tuple[str, str | bytes | None]] = list(source.headers() or ())
        out += [
            (SOURCE_HEADERS[0], source.topic().encode()),
            (SOURCE_HEADERS[1], str(source.partition()).encode()),
            (SOURCE_HEADERS[2], str(source.offset()).encode()),
        ]
        out += encode_headers(headers)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._producer.produce(
                    topic, source.value(), key, headers=out, on_delivery=self._delivered
                )
                break
            except BufferError:
                # The local queue is full: wait for deliveries instead of dropping the result.
                if time.monotonic() >= deadline:
                    raise ComuxTimeoutError(
                        f"producer queue stayed full for {timeout:g} s while sending to {topic!r}"
                    ) from None
                self._producer.poll(0.05)
            except KafkaException as exc:
                err = exc.args[0]
                raise KafkaError(f"produce to {topic!r} failed: {err}", err.code()) from None
        self.sent += 1

    def flush(self, timeout: float = 10.0) -> int:
        """Wait for outstanding deliveries; return how many are still undelivered."""
        return self._producer.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        remaining = self.flush(timeout * 0.9)
        if remaining:
            log.error("%d results were not delivered before close", remaining)
        self._stop.set()
        self._thread.join(timeout * 0.1)
