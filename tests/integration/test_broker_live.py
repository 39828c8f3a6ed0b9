"""comux.broker against a real Kafka 4.3.1 broker: up, produce, consume, restart, down."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from comux.broker import LocalKafka
from tests.fixtures_kafka import free_port, shared_lib_dir

pytestmark = pytest.mark.integration


def _brokers_running(properties: Path) -> list[int]:
    """Pids of java processes started with this server.properties (there must be one)."""
    wanted = os.fsencode(str(properties))
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kafka.Kafka" in args and wanted in args:
            pids.append(int(entry.name))
    return pids


def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    errors: list[object] = []
    producer.produce(topic, value, on_delivery=lambda err, _msg: errors.append(err))
    assert producer.flush(60) == 0
    assert errors == [None]


def _consume_one(bootstrap: str, topic: str) -> bytes:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            value = msg.value()
            assert value is not None
            return value
        raise AssertionError(f"no message on {topic} within 60 s")
    finally:
        consumer.close()


def test_up_produce_consume_restart_down(tmp_path: Path) -> None:
    folder = tmp_path / "kafka"
    port = free_port()
    broker = LocalKafka(folder, port=port, lib_dir=shared_lib_dir())
    folder.mkdir()
    broker.pid_path.write_text(f"{os.getpid()}\n")  # a stale pid file must not block up()
    lines: list[str] = []
    try:
        bootstrap = broker.up(timeout=180, log=lines.append)
        assert bootstrap == broker.bootstrap == f"127.0.0.1:{port}"
        assert any(line.startswith("formatting storage") for line in lines)
        assert broker.status() == bootstrap
        assert LocalKafka(folder, lib_dir=shared_lib_dir()).status() == bootstrap  # no port
        assert (folder / "kafka.log").stat().st_size > 0

        _produce(bootstrap, "comux-live", b"hello")
        assert _consume_one(bootstrap, "comux-live") == b"hello"

        assert LocalKafka(folder).down() is True
        assert broker.status() is None
        assert _brokers_running(broker.properties_path) == []

        # a restart on another port keeps the data and does not format again
        lines.clear()
        again = LocalKafka(folder, port=free_port(), lib_dir=shared_lib_dir())
        rebooted = again.up(timeout=180, log=lines.append)
        assert rebooted != bootstrap
        assert not any(line.startswith("formatting storage") for line in lines)
        assert _consume_one(rebooted, "comux-live") == b"hello"
        assert again.down() is True
        assert again.status() is None
        assert again.down() is False
    finally:
        broker.down()


def test_up_twice_starts_one_broker(tmp_path: Path) -> None:
    folder = tmp_path / "kafka"
    first = LocalKafka(folder, port=free_port(), lib_dir=shared_lib_dir())
    try:
        bootstrap = first.up(timeout=180)
        pid = int(first.pid_path.read_text())
        second = LocalKafka(folder, port=free_port(), lib_dir=shared_lib_dir())
        assert second.up(timeout=60) == bootstrap
        assert second.bootstrap == bootstrap
        assert first.up(timeout=60) == bootstrap
        assert int(first.pid_path.read_text()) == pid
        assert _brokers_running(first.properties_path) == [pid]
    finally:
        assert first.down() is True
    assert _brokers_running(first.properties_path) == []
