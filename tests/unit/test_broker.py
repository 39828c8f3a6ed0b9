"""comux.broker without a broker: configuration, error messages, pid bookkeeping."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from comux.broker import (
    KAFKA_VERSION,
    LocalKafka,
    _cluster_id,
    _parse_java_major,
    _server_properties,
)
from comux.errors import ComuxError, ProvisionError


def _parse(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return {key: value for key, value in pairs}


def _fake_java(folder: Path, version_line: str) -> Path:
    """A ``java`` on PATH that only answers ``-version``, as a real one does, on stderr."""
    folder.mkdir(parents=True, exist_ok=True)
    java = folder / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(0o755)
    return java


def _fake_lib(folder: Path) -> Path:
    """A lib folder that provision() takes as complete, so no Maven runs."""
    folder.mkdir(parents=True)
    (folder / ".complete").write_text(KAFKA_VERSION + "\n")
    return folder


def _which_without(monkeypatch: pytest.MonkeyPatch, *missing: str) -> None:
    real = shutil.which

    def which(name: str, *args: object, **kwargs: object) -> str | None:
        return None if name in missing else real(name)

    monkeypatch.setattr(shutil, "which", which)
    monkeypatch.delenv("JAVA_HOME", raising=False)


def _fake_broker(broker: LocalKafka, *, ignore_term: bool) -> subprocess.Popen[str]:
    """A process whose command line names kafka.Kafka and the folder's server.properties."""
    code = (
        "import signal, sys, time\n"
        + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else "")
        + "print('ready', flush=True)\n"
        + "time.sleep(300)\n"
    )
    broker.directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "kafka.Kafka", str(broker.properties_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    broker.pid_path.write_text(f"{proc.pid}\n")
    return proc


def test_server_properties_listen_on_loopback_only(tmp_path: Path) -> None:
    props = _parse(_server_properties(19001, 19002, tmp_path / "data"))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19001,CONTROLLER://127.0.0.1:19002"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19001"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19002"
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["auto.create.topics.enable"] == "true"
    text = " ".join(props.values())
    assert "0.0.0.0" not in text and "localhost" not in text


def test_cluster_id_is_a_kafka_uuid() -> None:
    ids = {_cluster_id() for _ in range(50)}
    assert len(ids) == 50
    for value in ids:
        assert len(value) == 22 and not value.startswith("-")
        assert len(base64.urlsafe_b64decode(value + "==")) == 16


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_292"', 8),
        ("no version here", None),
    ],
)
def test_parse_java_major(output: str, major: int | None) -> None:
    assert _parse_java_major(output) == major


def test_bootstrap_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMUX_KAFKA_LIB", raising=False)
    broker = LocalKafka(tmp_path, port=19093)
    assert broker.bootstrap == "127.0.0.1:19093"
    assert broker.lib_dir == tmp_path / f"lib-{KAFKA_VERSION}"
    assert broker.data_dir == tmp_path / "data"
    monkeypatch.setenv("COMUX_KAFKA_LIB", str(tmp_path / "shared"))
    assert LocalKafka(tmp_path).lib_dir == tmp_path / "shared"
    assert LocalKafka().directory == Path.home() / ".cache" / "comux" / "kafka"


def test_missing_java_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _which_without(monkeypatch, "java")
    with pytest.raises(ProvisionError) as caught:
        LocalKafka(tmp_path, port=19094).up(timeout=5)
    assert "java is not on PATH" in str(caught.value)
    assert "apt-get install -y openjdk-17-jre-headless" in str(caught.value)
    assert isinstance(caught.value, ComuxError)


def test_old_java_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    _fake_java(bin_dir, 'java version "1.8.0_292"')
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(ProvisionError, match="needs Java 17 or newer.*1.8.0_292"):
        LocalKafka(tmp_path / "k", port=19095).up(timeout=5)


def test_missing_mvn_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _which_without(monkeypatch, "mvn")
    broker = LocalKafka(tmp_path, lib_dir=tmp_path / "lib")
    with pytest.raises(ProvisionError) as caught:
        broker.provision()
    assert "mvn (Apache Maven) is not on PATH" in str(caught.value)
    assert "apt-get install -y maven" in str(caught.value)
    assert not (tmp_path / "lib").exists()


def test_provision_reuses_a_complete_lib_without_maven(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _which_without(monkeypatch, "mvn")
    lib = _fake_lib(tmp_path / "lib")
    lines: list[str] = []
    assert LocalKafka(tmp_path, lib_dir=lib).provision(log=lines.append) == lib
    assert lines == []


def test_port_taken_by_something_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    _fake_java(bin_dir, 'openjdk version "17.0.2" 2022-01-18')
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    lib = _fake_lib(tmp_path / "lib")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        broker = LocalKafka(tmp_path / "k", port=port, lib_dir=lib)
        broker.directory.mkdir()
        broker.pid_path.write_text(f"{os.getpid()}\n")  # stale: must not block up()
        with pytest.raises(ProvisionError, match=f"port {port} on 127.0.0.1 is already in use"):
            broker.up(timeout=5)
    assert not broker.pid_path.exists()
    assert not broker.properties_path.exists()


def test_status_of_a_never_started_folder(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path / "never")
    assert broker.status() is None
    assert broker.down() is False
    assert not (tmp_path / "never").exists()


def test_stale_pid_of_an_exited_process(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    broker = LocalKafka(tmp_path)
    broker.pid_path.write_text(f"{gone.pid}\n")
    assert broker.status() is None
    assert not broker.pid_path.exists()
    broker.pid_path.write_text("not a pid\n")
    assert broker.down() is False


def test_recycled_pid_is_never_signalled(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path)
    broker.pid_path.write_text(f"{os.getpid()}\n")  # alive, but not a Kafka broker
    assert broker.status() is None
    broker.pid_path.write_text(f"{os.getpid()}\n")
    assert broker.down() is False
    assert not broker.pid_path.exists()


def test_down_terminates_the_folders_broker(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path)
    proc = _fake_broker(broker, ignore_term=False)
    try:
        assert LocalKafka(tmp_path).down(timeout=30) is True
        assert proc.wait(timeout=10) is not None
        assert not broker.pid_path.exists()
        assert LocalKafka(tmp_path).down() is False
    finally:
        proc.kill()
        proc.wait()


def test_down_kills_a_broker_that_ignores_sigterm(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path)
    proc = _fake_broker(broker, ignore_term=True)
    try:
        assert broker.down(timeout=0.3) is True
        assert proc.wait(timeout=10) is not None
    finally:
        proc.kill()
        proc.wait()
