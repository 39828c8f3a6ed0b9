"""Results back to Kafka: the original packet, the model's headers and the packet's origin.

The producer is idempotent (``enable.idempotence``, ``acks=all``): a retry after a lost
acknowledgement never writes a result twice. Every delivery report reaches ``on_delivery``,
which the input-offset ledger needs; a failure is counted, logged once per cause and never
dropped silently. With a ``transactional_id`` the results of a batch and its input offsets are
committed in one transaction (exactly-once for ``read_committed`` readers).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import KafkaException, TopicPartition

from . import kafka
from .decoding import Message
from .errors import ConfigError, KafkaError

__all__ = ["RESERVED_PREFIX", "SOURCE_HEADERS", "ResultProducer", "encode_headers"]

log = logging.getLogger("comux.results")

RESERVED_PREFIX = "comux-"
SOURCE_HEADERS = ("comux-source-topic", "comux-source-partition", "comux-source-offset")
HeaderValue = str | bytes | None | Any
Delivered = Callable[[RdKafkaError | None], None]


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays are what a model's results are usually made of.
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"header value of type {type(value).__name__} is not JSON serializable")


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they become the strings "NaN", "Infinity", "-Infinity"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if hasattr(value, "tolist"):
        return _finite(value.tolist())
    return value


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise ConfigError(f"{what} is not valid UTF-8 text: {exc.reason} at {exc.start}") from None


def encode_headers(headers: Mapping[str, HeaderValue] | None) -> list[tuple[str, bytes]]:
    """Encode str as UTF-8, keep bytes, JSON-encode everything else.

    Non-finite floats are written as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``
    (plain JSON has no such numbers). Names starting with ``comux-`` are reserved for comux's
    own headers (provenance, control).
    """
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
        _utf8(name, "a header name")
        if name.lower().startswith(RESERVED_PREFIX):
            raise ConfigError(
                f"header {name!r}: names starting with {RESERVED_PREFIX!r} are reserved"
            )
        if isinstance(value, bytes):
            out.append((name, value))
        elif isinstance(value, str):
            out.append((name, _utf8(value, f"header {name!r}")))
        else:
            try:
                try:
                    text = json.dumps(value, default=_json_default, allow_nan=False)
                except ValueError:
                    text = json.dumps(_finite(value), default=_json_default, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"header {name!r}: {exc}") from None
            out.append((name, text.encode()))
    return out


class ResultProducer:
    """Produce packets with headers; a background thread serves delivery reports.

    :param transactional_id: run the results of each batch in one transaction, committed with
        the batch's input offsets (:meth:`commit_transaction`).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        strict_on_fail: bool = True,
        options: Mapping[str, Any] | None = None,
        connect_timeout: float = 10.0,
        transactional_id: str | None = None,
    ) -> None:
        defaults = {
            "linger.ms": 5,
            "message.max.bytes": 16_000_000,
            "enable.idempotence": True,
            "acks": "all",
            "reconnect.backoff.max.ms": 1_000,  # see consuming.ConsumerSettings
            "client.id": "comux-producer",
        }
        config = kafka.config(bootstrap_servers, options, defaults=defaults)
        if transactional_id is not None:
            config["transactional.id"] = transactional_id
        self.bootstrap_servers = bootstrap_servers
        self.transactional = transactional_id is not None
        self._options = dict(options or {})
        self._producer = kafka.producer(config, errors=log)
        if strict_on_fail:
            kafka.probe(self._producer, bootstrap_servers, connect_timeout)
        self.sent = 0
        self.delivered = 0
        self.failed = 0
        self.last_error: str | None = None
        self.transactions = 0
        self.aborted = 0
        self._causes: set[str] = set()  # delivery failures already logged
        self._in_transaction = False
        self._txn_lock = threading.Lock()
        if self.transactional:
            try:
                self._producer.init_transactions(connect_timeout)
            except KafkaException as exc:
                raise KafkaError(f"init_transactions failed: {exc.args[0]}", None) from None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="comux-producer", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return kafka.describe(
            "ResultProducer",
            self.bootstrap_servers,
            self._options,
            transactional=self.transactional,
        )

    @property
    def queued(self) -> int:
        """Results produced and not yet delivered (or failed): librdkafka's queue."""
        return len(self._producer)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self._producer.poll(0.1)
            except KafkaException as exc:  # a fatal error is raised here once: say it, go on
                self.last_error = str(exc.args[0])
                log.critical("producer: %s", exc.args[0])
                self._stop.wait(0.1)

    def _report(self, err: RdKafkaError | None, on_delivery: Delivered | None) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1
            self.last_error = str(err)
            cause = err.name()
            if cause not in self._causes:  # one line per cause, the counters keep the rest
                self._causes.add(cause)
                log.error("delivery failed (%s): %s; later ones are counted", cause, err)
        if on_delivery is not None:
            try:
                on_delivery(err)
            except Exception:  # a user callback must not stop the delivery reports
                log.exception("delivery callback failed")

    def send(
        self,
        topic: str,
        source: Message,
        headers: Mapping[str, HeaderValue] | None,
        *,
        key: bytes | None = None,
        timeout: float = 10.0,
        on_delivery: Delivered | None = None,
        keep: Callable[[], bool] | None = None,
    ) -> bool:
        """Produce ``source``'s value to ``topic`` with its headers, provenance and ``headers``.

        A full local queue is waited on (up to ``timeout``), never dropped. ``keep`` is asked
        under the transaction lock, so that its answer holds against a concurrent commit:
        False drops the result (and returns False).
        """
        out: list[tuple[str, str | bytes | None]] = [
            (name, value)
            for name, value in source.headers() or ()
            if not name.startswith(RESERVED_PREFIX)
        ]
        out += [
            (SOURCE_HEADERS[0], source.topic().encode()),
            (SOURCE_HEADERS[1], str(source.partition()).encode()),
            (SOURCE_HEADERS[2], str(source.offset()).encode()),
        ]
        out += encode_headers(headers)
        with self._txn_lock:  # a result goes into the transaction open now, never between two
            if keep is not None and not keep():
                return False
            self._begin()
            kafka.produce_waiting(
                self._producer,
                topic,
                source.value(),
                key,
                headers=out,
                on_delivery=lambda err, _msg: self._report(err, on_delivery),
                timeout=timeout,
            )
            self.sent += 1
        return True

    def _begin(self) -> None:
        if self.transactional and not self._in_transaction:
            self._producer.begin_transaction()
            self._in_transaction = True

    def commit_transaction(
        self, offsets: list[TopicPartition], group: Any, timeout: float = 10.0
    ) -> bool:
        """Commit the open transaction with the input ``offsets``; False if it was aborted.

        Called when the model moves past a batch. Its results are flushed first, so that their
        delivery reports are in before the offsets are chosen.
        """
        with self._txn_lock:
            if not self._in_transaction and not offsets:
                return True
            try:
                self._begin()
                if offsets:
                    self._producer.send_offsets_to_transaction(offsets, group, timeout)
                self._producer.commit_transaction(timeout)
                self.transactions += 1
                return True
            except KafkaException as exc:
                err = exc.args[0]
                log.error("transaction failed: %s", err)
                self.aborted += 1
                if err.txn_requires_abort():
                    try:
                        self._producer.abort_transaction(timeout)
                    except KafkaException as again:
                        log.error("abort failed: %s", again.args[0])
                return False
            finally:
                self._in_transaction = False

    def flush(self, timeout: float = 10.0) -> int:
        """Wait for outstanding deliveries; return how many are still undelivered."""
        return int(self._producer.flush(timeout))

    def abort(self, timeout: float = 10.0) -> None:
        """Abort the open transaction: its results are never seen by read_committed readers."""
        with self._txn_lock:
            if not self._in_transaction:
                return
            self._in_transaction = False
            try:
                self._producer.abort_transaction(timeout)
                self.aborted += 1
            except KafkaException as exc:
                log.error("abort failed: %s", exc.args[0])

    def close(self, timeout: float = 10.0) -> int:
        """Flush within ``timeout`` and stop; return how many results were not delivered.

        An open transaction is aborted: its batch was not finished, so neither its results nor
        its offsets count, and the batch is read again after a restart.
        """
        deadline = time.monotonic() + timeout * 0.9
        if self.transactional:
            self.abort(timeout / 3)
        remaining = self.flush(max(0.0, deadline - time.monotonic()))
        if remaining:
            log.error("%d results were not delivered before close", remaining)
        self._stop.set()
        self._thread.join(timeout * 0.1)
        return remaining
