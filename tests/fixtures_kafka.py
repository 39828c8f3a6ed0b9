"""A real Kafka broker for the integration tests, started once per session on a free port.

Import the fixture where it is needed (or from conftest.py):
``from tests.fixtures_kafka import kafka_broker  # noqa: F401``.
The jars are shared between sessions through ``$COMUX_KAFKA_LIB`` or
``~/.cache/comux/kafka/lib-<version>``, so only the first session ever runs Maven.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from comux.broker import KAFKA_VERSION, LIB_ENV, LocalKafka, default_directory

__all__ = ["free_port", "kafka_broker", "shared_lib_dir"]


def shared_lib_dir() -> Path:
    """The jar cache every test broker uses: $COMUX_KAFKA_LIB, else the user's cache."""
    configured = os.environ.get(LIB_ENV)
    if configured:
        return Path(configured)
    return default_directory() / f"lib-{KAFKA_VERSION}"


def free_port() -> int:
    """A port free on 127.0.0.1 now; never 9092, which a running demo may hold."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A running LocalKafka in a temporary folder; use ``kafka_broker.bootstrap``."""
    broker = LocalKafka(
        tmp_path_factory.mktemp("kafka"), port=free_port(), lib_dir=shared_lib_dir()
    )
    broker.up(timeout=180.0)
    try:
        yield broker
    finally:
        broker.down()


@pytest.fixture(scope="module")
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A LocalKafka of the module's own, for tests that stop and restart it.

    Both ports are fixed up front, so ``down()`` then ``up()`` brings it back on the same
    bootstrap and controller ports, with the same data folder (topics and offsets survive;
    ``up()`` formats storage only when ``meta.properties`` is missing). The jars are the shared
    cache. Use ``tests.fault_helpers.restart_up(broker)`` to bring it back: it waits for the
    ports to be free first (``up()`` refuses a busy port rather than picking another).
    """
    port = free_port()
    controller_port = free_port()
    while controller_port == port:
        controller_port = free_port()
    broker = LocalKafka(
        tmp_path_factory.mktemp("private-kafka"),
        port=port,
        controller_port=controller_port,
        lib_dir=shared_lib_dir(),
    )
    broker.up(timeout=180.0)
    try:
        yield broker
    finally:
        broker.down()


__all__.append("private_broker")
