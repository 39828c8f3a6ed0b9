"""comux.registry without a server: redaction, reprs, errors, id validation and the sync loop."""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
import traceback
from typing import Any

import pytest

from comux.errors import ComuxError, ConfigError
from comux.registry import MongoConnect, RegistryError, redact_uri, sync_cameras, uri_hosts
from tests.fakes import CameraTarget

SENTINEL = "S3NTINEL" + secrets.token_hex(8)


def closed_port() -> int:
    """A port of 127.0.0.1 on which nothing listens (connections are refused at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def exception_text(exc: BaseException) -> str:
    """Everything an exception can show: str, repr, args, the formatted chain."""
    return "\n".join([str(exc), repr(exc), repr(exc.args), *traceback.format_exception(exc)])


# -- redact_uri / uri_hosts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("mongodb://user:pass@db:27017/", "mongodb://user:***@db:27017/"),
        (
            "mongodb://user:p%40ss@db1:1,db2:2/x?authSource=admin",
            "mongodb://user:***@db1:1,db2:2/x?authSource=admin",
        ),
        ("mongodb+srv://u:pw@cluster.example.net/db", "mongodb+srv://u:***@cluster.example.net/db"),
        ("mongodb://db:27017/", "mongodb://db:27017/"),
        (
            "mongodb://onlyuser@db/?authMechanism=MONGODB-X509",
            "mongodb://onlyuser@db/?authMechanism=MONGODB-X509",
        ),
        ("mongodb://user:@db/", "mongodb://user:***@db/"),
        (
            "mongodb://db/?tls=true&tlsCertificateKeyFilePassword=pw&appName=x",
            "mongodb://db/?tls=true&tlsCertificateKeyFilePassword=***&appName=x",
        ),
        (
            "mongodb://u:p@db/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:tok",
            "mongodb://u:***@db/?authMechanism=MONGODB-AWS&authMechanismProperties=***",
        ),
    ],
)
def test_redact_uri(uri: str, expected: str) -> None:
    assert redact_uri(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        f"mongodb://user:{SENTINEL}@db:27017/",
        f"mongodb://user:{SENTINEL}/x@db:27017/",  # unescaped '/': pymongo reads it wrongly
        f"mongodb://user:{SENTINEL}?x@db/",
        f"mongodb://user:{SENTINEL}@x@db/",  # unescaped '@'
        f"mongodb://user:a@b:{SENTINEL}@db/",
        f"mongodb://db/?password={SENTINEL}",
        f"mongodb://db/?authMechanismProperties=AWS_SESSION_TOKEN:{SENTINEL}",
    ],
)
def test_redact_uri_hides_malformed_passwords(uri: str) -> None:
    assert SENTINEL not in redact_uri(uri)
    assert SENTINEL not in uri_hosts(uri)


def test_redact_uri_not_a_string() -> None:
    assert redact_uri(None) == "***"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("uri", "hosts"),
    [
        ("mongodb://u:p@db/", "db:27017"),
        ("mongodb://a:1,b,c:3/db?x=y", "a:1,b:27017,c:3"),
        ("mongodb://[::1]:27018/", "[::1]:27018"),
        ("mongodb://[::1]/", "[::1]:27017"),
        ("mongodb+srv://u:p@cluster.example.net/db", "cluster.example.net"),
        ("mongodb://%2Ftmp%2Fmongodb-27017.sock", "%2Ftmp%2Fmongodb-27017.sock"),
    ],
)
def test_uri_hosts(uri: str, hosts: str) -> None:
    assert uri_hosts(uri) == hosts


# -- MongoConnect without a server --------------------------------------------------------------


def test_repr_and_uri_hide_the_password() -> None:
    registry = MongoConnect(
        f"mongodb://alice:{SENTINEL}@db.example:27017/?authSource=admin",
        "fleet",
        "cameras",
        query={"enabled": True},
        client_options={
            "password": SENTINEL,
            "username": "bob",
            "tlsCertificateKeyFilePassword": SENTINEL,
        },
    )
    text = repr(registry) + str(registry) + registry.uri + registry.hosts
    assert SENTINEL not in text
    assert "alice:***@db.example:27017" in repr(registry)
    assert "'username': 'bob'" in repr(registry)
    assert "fleet" in repr(registry) and "cameras" in repr(registry)
    assert registry.hosts == "db.example:27017"
    assert SENTINEL not in str(vars(registry).get("uri", ""))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"database": ""},
        {"collection": 3},
        {"field": ""},
        {"field": "$where"},
        {"field": "a..b"},
        {"query": ["not", "a", "mapping"]},
        {"timeout": 0},
        {"timeout": True},
        {"client_options": "x"},
    ],
)
def test_invalid_arguments_are_config_errors(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"uri": "mongodb://db/", "database": "d", "collection": "c"}
    args.update(kwargs)
    with pytest.raises(ConfigError):
        MongoConnect(**args)


def test_registry_error_is_a_comux_connection_error() -> None:
    assert issubclass(RegistryError, ComuxError)
    assert issubclass(RegistryError, ConnectionError)


def test_unreachable_server_raises_quickly_without_the_password() -> None:
    port = closed_port()
    registry = MongoConnect(
        f"mongodb://alice:{SENTINEL}@127.0.0.1:{port}/", "fleet", "cameras", timeout=0.5
    )
    start = time.monotonic()
    with pytest.raises(RegistryError) as info:
        registry.connect()
    elapsed = time.monotonic() - start
    assert elapsed < 5.0, elapsed
    text = exception_text(info.value)
    assert SENTINEL not in text
    assert f"127.0.0.1:{port}" in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None
    # fetch() connects on its own and fails the same way; the client is not left half-open
    with pytest.raises(RegistryError) as info:
        registry.fetch()
    assert SENTINEL not in exception_text(info.value)
    assert "connected=False" in repr(registry)
    registry.close()
    registry.close()  # idempotent


@pytest.mark.parametrize(
    "uri",
    [
        f"mongodb://alice:{SENTINEL}/x@127.0.0.1:1/",  # pymongo reads "alice:S3NT..." as a host
        f"mongodb://alice:{SENTINEL}@127.0.0.1:notaport/",
        f"mongodb://alice:{SENTINEL}%zz@127.0.0.1:1/",  # bad percent-escape
        f"mongodb://alice:{SENTINEL}@127.0.0.1:1/?unknownOption=1&w=banana",
    ],
)
def test_invalid_uri_errors_do_not_leak(uri: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    registry = MongoConnect(uri, "fleet", "cameras", timeout=0.2)
    with pytest.raises(RegistryError) as info:
        registry.connect()
    assert SENTINEL not in exception_text(info.value)
    assert SENTINEL not in repr(registry)
    for record in caplog.records:
        assert SENTINEL not in record.getMessage()


def test_pymongo_warnings_quoting_a_secret_are_withheld(caplog: pytest.LogCaptureFixture) -> None:
    # pymongo warns "<KEY> is not a supported auth mechanism property..." and ignores the option
    uri = f"mongodb://127.0.0.1:{closed_port()}/?authMechanismProperties={SENTINEL}:v&appName=x"
    registry = MongoConnect(uri, "fleet", "cameras", timeout=0.2)
    with caplog.at_level(logging.DEBUG), pytest.raises(RegistryError):
        registry.connect()
    relayed = [r.getMessage() for r in caplog.records if r.name == "comux.registry"]
    assert any("text withheld" in m for m in relayed), relayed
    assert SENTINEL not in caplog.text


def test_harmless_pymongo_warnings_are_relayed(caplog: pytest.LogCaptureFixture) -> None:
    uri = f"mongodb://u:{SENTINEL}@127.0.0.1:{closed_port()}/?tls=maybe"
    registry = MongoConnect(uri, "fleet", "cameras", timeout=0.2)
    with caplog.at_level(logging.DEBUG), pytest.raises(RegistryError):
        registry.connect()
    assert "The value of tls must be 'true' or 'false'" in caplog.text
    assert SENTINEL not in caplog.text


def test_context_manager_raises_on_unreachable() -> None:
    registry = MongoConnect(f"mongodb://127.0.0.1:{closed_port()}/", "d", "c", timeout=0.2)
    with pytest.raises(RegistryError), registry:
        pass


# -- ids from a fake collection -----------------------------------------------------------------


class FakeCollection:
    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs
        self.calls: list[tuple[Any, Any, Any]] = []

    def find(self, filter: Any, projection: Any, *, sort: Any) -> list[dict[str, Any]]:
        self.calls.append((filter, projection, sort))
        return [dict(d) for d in self.docs]


def fake_registry(docs: list[dict[str, Any]], **kwargs: Any) -> tuple[MongoConnect, FakeCollection]:
    registry = MongoConnect("mongodb://db/", "fleet", "cameras", **kwargs)
    collection = FakeCollection(docs)
    registry._collection = lambda: collection  # type: ignore[method-assign]
    return registry, collection


def test_ret_cam_ids_validates_and_dedups(caplog: pytest.LogCaptureFixture) -> None:
    registry, collection = fake_registry(
        [
            {"cam_id": "cam2"},
            {"cam_id": "cam1"},
            {"cam_id": "cam2"},  # duplicate: not skipped, not repeated
            {},  # missing
            {"cam_id": ""},  # empty
            {"cam_id": 7},  # not a str
            {"cam_id": None},
            {"cam_id": ["cam3"]},
            {"cam_id": "cam3"},
        ],
        query={"enabled": True},
    )
    with caplog.at_level(logging.WARNING, logger="comux.registry"):
        assert registry.ret_cam_ids() == ["cam2", "cam1", "cam3"]
    assert registry.skipped == 5
    assert "skipped 5 document(s)" in caplog.text
    assert collection.calls == [({"enabled": True}, {"cam_id": 1, "_id": 0}, [("_id", 1)])]
    collection.docs = [{"cam_id": "a"}]
    assert registry.ret_cam_ids() == ["a"]
    assert registry.skipped == 0  # counts the last call only


def test_ret_cam_ids_reads_a_dotted_field() -> None:
    registry, collection = fake_registry(
        [{"meta": {"id": "x"}}, {"meta": "flat"}, {"meta": {"other": 1}}, {"meta": {"id": "y"}}],
        field="meta.id",
    )
    assert registry.ret_cam_ids() == ["x", "y"]
    assert registry.skipped == 2
    assert collection.calls[0][1] == {"meta.id": 1, "_id": 0}


def test_fetch_returns_plain_dicts() -> None:
    registry, _ = fake_registry([{"cam_id": "a"}])
    assert registry.fetch() == [{"cam_id": "a"}]


# -- sync_cameras with fakes --------------------------------------------------------------------


class FakeRegistry:
    hosts = "fake:1"

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        self.fail: Exception | None = None

    def ret_cam_ids(self) -> list[str]:
        if self.fail is not None:
            raise self.fail
        return list(self.ids)


def test_sync_adds_removes_and_survives_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    registry = FakeRegistry(["a", "b"])
    comux = CameraTarget(["b", "old"], fail_text=f"boom {SENTINEL}")
    comux.fail_connect.add("a")
    stop = threading.Event()
    thread = sync_cameras(comux, registry, 0.01, stop=stop)  # type: ignore[arg-type]
    try:
        assert thread.daemon and thread.is_alive()
        comux.wait_ids({"a", "b"})
        assert ("kill", "old") in comux.calls
        assert comux.calls.count(("connect", "a")) == 2  # failed once, retried next round
        assert thread.errors >= 1 and thread.added == 1 and thread.removed == 1

        registry.fail = RegistryError("cannot read camera ids from MongoDB at fake:1: down")
        rounds = thread.rounds
        assert thread.wait_rounds(rounds + 3, 10.0)
        assert thread.is_alive() and set(comux.cam_ids) == {"a", "b"}
        assert "down" in (thread.last_error or "")
        registry.fail = None

        registry.ids = ["b", "c"]
        comux.wait_ids({"b", "c"})
    finally:
        stop.set()
        thread.join(5.0)
    assert not thread.is_alive()
    text = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert SENTINEL not in text
    assert "RuntimeError" in text  # the class of a foreign error is logged, not its text


def test_sync_cameras_checks_arguments() -> None:
    stop = threading.Event()
    with pytest.raises(ConfigError):
        sync_cameras(CameraTarget([]), FakeRegistry([]), 0, stop=stop)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        sync_cameras(CameraTarget([]), object(), 1, stop=stop)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        sync_cameras(CameraTarget([]), FakeRegistry([]), 1, stop=None)  # type: ignore[arg-type]


def test_sync_stops_promptly_with_a_long_interval() -> None:
    stop = threading.Event()
    thread = sync_cameras(CameraTarget([]), FakeRegistry(["x"]), 3600, stop=stop)  # type: ignore[arg-type]
    assert thread.wait_rounds(1, 10.0)
    stop.set()
    thread.join(5.0)
    assert not thread.is_alive()
