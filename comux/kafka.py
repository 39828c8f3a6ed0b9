"""The Kafka layer: where every comux client is built, probed, fed and closed.

- :func:`config`: a client's librdkafka settings: comux's defaults for that client, the
  ``comux.kafka`` logger (librdkafka's own lines), the caller's options untouched, and
  ``bootstrap.servers`` last.
- :func:`consumer`, :func:`producer`, :func:`admin`: the clients; with ``errors=logger`` an
  error callback says each client error once per run on that logger (:func:`kafka_error_cb`).
- :func:`probe`: one metadata request; :class:`BrokerUnavailableError` unless a broker answers.
- :func:`produce_waiting`: a full local queue is waited out, never dropped.
- :func:`close_within`: close a consumer without waiting on the broker past a deadline.
- :func:`describe`: a client's settings for a ``repr``, secret options redacted.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from .config import redact
from .errors import BrokerUnavailableError, ComuxTimeoutError, KafkaError
from .logs import kafka_error_cb

__all__ = [
    "LOGGER",
    "admin",
    "close_within",
    "config",
    "consumer",
    "describe",
    "error_code",
    "probe",
    "produce_waiting",
    "producer",
]

LOGGER = logging.getLogger("comux.kafka")

Options = Mapping[str, Any]


def config(
    servers: str,
    options: Options | None = None,
    *,
    defaults: Options | None = None,
    logger: logging.Logger = LOGGER,
) -> dict[str, Any]:
    """Return librdkafka settings: ``defaults``, the logger, ``options``, then ``servers``.

    Options given by the caller win over the defaults (a ``"logger"`` among them too);
    ``bootstrap.servers`` is always ``servers``.
    """
    settings: dict[str, Any] = {**(defaults or {}), "logger": logger, **(options or {})}
    settings["bootstrap.servers"] = servers
    return settings


def _error_cb(errors: logging.Logger | None) -> dict[str, Any]:
    return {} if errors is None else {"error_cb": functools.partial(kafka_error_cb, errors)}


def consumer(
    settings: Options, *, errors: logging.Logger | None = None, **callbacks: Any
) -> Consumer:
    """Create a consumer from :func:`config` settings (``callbacks``: ``on_commit`` ...)."""
    return Consumer(dict(settings), **_error_cb(errors), **callbacks)


def producer(
    settings: Options,
    *,
    errors: logging.Logger | None = None,
    factory: Callable[[dict[str, Any]], Any] = Producer,
) -> Any:
    """Create a producer from :func:`config` settings; ``factory`` stands in for tests."""
    return factory({**settings, **_error_cb(errors)})


def admin(settings: Options) -> AdminClient:
    """Create an admin client from :func:`config` settings."""
    return AdminClient(dict(settings))


def error_code(err: Any) -> int | None:
    """librdkafka's error code of a ``confluent_kafka.KafkaError``, None for anything else."""
    code = getattr(err, "code", None)
    return code() if callable(code) else None


def probe(client: Any, servers: str, timeout: float, *, topic: str | None = None) -> None:
    """Ask ``client`` for metadata; raise BrokerUnavailableError unless a broker answers.

    :param servers: named in the error, so that the reader knows where comux looked.
    :param timeout: seconds to wait for the answer.
    :param topic: ask for this topic's metadata only (a cheaper request), not every topic's.
    """
    try:
        if topic is None:
            metadata = client.list_topics(timeout=timeout)
        else:
            metadata = client.list_topics(topic, timeout=timeout)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        raise BrokerUnavailableError(
            f"no Kafka broker answered at {servers} within {timeout:g} s ({err})", error_code(err)
        ) from None
    if not metadata.brokers:
        raise BrokerUnavailableError(f"no Kafka broker answered at {servers} within {timeout:g} s")


def produce_waiting(
    producer: Any,
    topic: str,
    value: bytes | None,
    key: bytes | None = None,
    *,
    headers: Any = None,
    on_delivery: Callable[[Any, Any], None] | None = None,
    timeout: float | None = None,
    stopped: Callable[[], bool] | None = None,
    wait: float = 0.05,
) -> bool:
    """Produce one message; while the local queue is full, serve delivery reports and retry.

    Return False when ``stopped()`` turned true while waiting (the message was not produced).
    Raise ComuxTimeoutError when the queue stayed full for ``timeout`` seconds (None: no
    limit), KafkaError (with its ``code``) when the producer refused the message.
    """
    extra: dict[str, Any] = {}
    if headers is not None:
        extra["headers"] = headers
    if on_delivery is not None:
        extra["on_delivery"] = on_delivery
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            producer.produce(topic, value=value, key=key, **extra)
            return True
        except BufferError:
            if deadline is not None and time.monotonic() >= deadline:
                raise ComuxTimeoutError(
                    f"producer queue stayed full for {timeout:g} s sending to {topic!r}"
                ) from None
            producer.poll(wait)
            if stopped is not None and stopped():
                return False
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            raise KafkaError(f"produce to {topic!r} failed: {err}", error_code(err)) from None


def close_within(
    client: Consumer,
    timeout: float,
    before: Callable[[], None] | None = None,
    *,
    log: logging.Logger,
) -> None:
    """Close a consumer (after ``before``), waiting at most ``timeout``: leaving the group and
    committing wait on the broker, which may be gone. A failure is a warning on ``log``."""

    def close() -> None:
        try:
            if before is not None:
                before()
            client.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("closing a consumer: %s", exc)

    closer = threading.Thread(target=close, name="comux-close", daemon=True)
    closer.start()
    closer.join(max(0.0, timeout))


def describe(kind: str, servers: str, options: Options | None, **fields: Any) -> str:
    """``kind(bootstrap_servers=..., fields..., options={...})`` with secret options as ``***``."""
    shown = "".join(f", {name}={value!r}" for name, value in fields.items())
    return f"{kind}(bootstrap_servers={servers!r}{shown}, options={redact(options or {})})"
