"""comux.registry against a real MongoDB-compatible server (FerretDB 1.24 on SQLite)."""

from __future__ import annotations

import logging
import secrets
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote_plus

import pytest
from pymongo import MongoClient
from pymongo.collection import Collection

from comux import Comux
from comux.media import synthetic_packets
from comux.publish import publish
from comux.registry import MongoConnect, RegistryError, sync_cameras
from tests.fakes import CameraTarget
from tests.fixtures_mongo import FerretDB
from tests.groups import own_group

pytestmark = pytest.mark.integration

DEADLINE = 20.0


@pytest.fixture
def collection(mongo_server: FerretDB) -> Iterator[Collection]:
    """A fresh, uniquely named collection of the server (dropped afterwards)."""
    client: MongoClient = MongoClient(mongo_server.uri, serverSelectionTimeoutMS=10_000)
    coll = client["comux_test"][f"cams_{uuid.uuid4().hex[:12]}"]
    try:
        yield coll
    finally:
        coll.drop()
        client.close()


def registry_for(server: FerretDB, coll: Collection, **kwargs: Any) -> MongoConnect:
    return MongoConnect(server.uri, coll.database.name, coll.name, **kwargs)


# -- reading ids --------------------------------------------------------------------------------


def test_ret_cam_ids_with_and_without_a_query(
    mongo_server: FerretDB,
    collection: Collection,
) -> None:
    collection.insert_many(
        [
            {"cam_id": "gate", "enabled": True, "site": "north"},
            {"cam_id": "dock", "enabled": False, "site": "north"},
            {"cam_id": "yard", "enabled": True, "site": "south"},
            {"cam_id": "gate", "enabled": True, "site": "south"},  # a duplicate id
            {"enabled": True},  # no id
            {"cam_id": 42, "enabled": True},  # not a str
            {"cam_id": "", "enabled": True},  # empty
        ]
    )
    with registry_for(mongo_server, collection) as registry:
        assert registry.ret_cam_ids() == ["gate", "dock", "yard"]  # registration (_id) order
        assert registry.skipped == 3
        assert "connected=True" in repr(registry)

    enabled = registry_for(mongo_server, collection, query={"enabled": True})
    try:
        assert enabled.ret_cam_ids() == ["gate", "yard"]  # connects on its own
        assert enabled.skipped == 3
    finally:
        enabled.close()

    south = registry_for(mongo_server, collection, query={"site": "south", "enabled": True})
    try:
        assert south.ret_cam_ids() == ["yard", "gate"]
        assert south.skipped == 0
        assert registry_for(mongo_server, collection, query={"site": "east"}).ret_cam_ids() == []
    finally:
        south.close()


def test_fetch_projects_the_field_only(mongo_server: FerretDB, collection: Collection) -> None:
    collection.insert_many([{"cam_id": "a", "secret": "x", "n": 1}, {"cam_id": "b", "n": 2}])
    with registry_for(mongo_server, collection) as registry:
        assert registry.fetch() == [{"cam_id": "a"}, {"cam_id": "b"}]


def test_field_option(mongo_server: FerretDB, collection: Collection) -> None:
    collection.insert_many(
        [
            {"camera": "c1", "meta": {"id": "m1"}},
            {"camera": "c2", "meta": {"id": "m2"}},
            {"cam_id": "ignored"},
        ]
    )
    with registry_for(mongo_server, collection, field="camera") as registry:
        assert registry.ret_cam_ids() == ["c1", "c2"]
        assert registry.skipped == 1
    with registry_for(mongo_server, collection, field="meta.id") as registry:
        assert registry.ret_cam_ids() == ["m1", "m2"]
        assert registry.skipped == 1


def test_missing_collection_has_no_ids(mongo_server: FerretDB) -> None:
    with MongoConnect(mongo_server.uri, "comux_nothing", "nothing") as registry:
        assert registry.ret_cam_ids() == []
        assert registry.skipped == 0


# -- keeping a stand-in Comux in step -----------------------------------------------------------


def test_sync_cameras_follows_the_documents(mongo_server: FerretDB, collection: Collection) -> None:
    collection.insert_many([{"cam_id": "a"}, {"cam_id": "b"}])
    comux = CameraTarget(["b", "stale"])
    registry = registry_for(mongo_server, collection, timeout=2.0)
    stop = threading.Event()
    thread = sync_cameras(comux, registry, 0.05, stop=stop)  # type: ignore[arg-type]
    try:
        comux.wait_ids({"a", "b"})
        assert ("kill", "stale") in comux.calls
        assert ("connect", "b") not in comux.calls  # already there: left alone

        collection.insert_many([{"cam_id": "c"}, {"cam_id": "d"}])
        comux.wait_ids({"a", "b", "c", "d"})

        collection.delete_one({"cam_id": "a"})
        comux.wait_ids({"b", "c", "d"})
        assert comux.calls.count(("kill", "a")) == 1

        collection.update_one({"cam_id": "d"}, {"$set": {"cam_id": "e"}})
        comux.wait_ids({"b", "c", "e"})

        # invalid documents change nothing: two full rounds after the insert leave ids as they are
        collection.insert_many([{"cam_id": ""}, {"cam_id": 5}, {"other": "x"}])
        rounds = thread.rounds
        assert thread.wait_rounds(rounds + 2, DEADLINE)
        assert set(comux.cam_ids) == {"b", "c", "e"}
        assert registry.skipped == 3

        collection.delete_many({})
        comux.wait_ids(set())
        assert thread.errors == 0, thread.last_error
        assert thread.added == 4 and thread.removed == 6  # stale, a, d, then b, c, e
    finally:
        stop.set()
        thread.join(DEADLINE)
        registry.close()
    assert not thread.is_alive()


def test_sync_cameras_keeps_going_through_a_failing_registry(
    mongo_server: FerretDB,
    collection: Collection,
) -> None:
    """A query the server rejects fails every round; the thread counts it and goes on."""
    collection.insert_one({"cam_id": "a"})
    registry = registry_for(mongo_server, collection, query={"$bogus": 1}, timeout=2.0)
    comux = CameraTarget(["x"])
    stop = threading.Event()
    thread = sync_cameras(comux, registry, 0.02, stop=stop)  # type: ignore[arg-type]
    try:
        assert thread.wait_rounds(3, DEADLINE)
        assert thread.is_alive()
        assert thread.errors >= 3
        assert comux.cam_ids == ["x"] and comux.calls == []  # nothing is killed on a failed read
        assert "cannot read camera ids" in (thread.last_error or "")

        registry.query = {}  # the registry heals: the next rounds sync
        comux.wait_ids({"a"})
    finally:
        stop.set()
        thread.join(DEADLINE)
        registry.close()
    assert not thread.is_alive()


# -- authentication -----------------------------------------------------------------------------


@pytest.fixture
def auth_collection(mongo_auth_server: FerretDB) -> Iterator[Collection]:
    client: MongoClient = MongoClient(mongo_auth_server.auth_uri, serverSelectionTimeoutMS=10_000)
    coll = client["comux_test"][f"cams_{uuid.uuid4().hex[:12]}"]
    coll.insert_many([{"cam_id": "a"}, {"cam_id": "b"}])
    try:
        yield coll
    finally:
        coll.drop()
        client.close()


def test_authentication(mongo_auth_server: FerretDB, auth_collection: Collection) -> None:
    server = mongo_auth_server
    db, name = auth_collection.database.name, auth_collection.name

    with MongoConnect(server.auth_uri, db, name) as registry:  # credentials in the URI
        assert registry.ret_cam_ids() == ["a", "b"]

    options = {"username": server.username, "password": server.password, "authSource": "admin"}
    with MongoConnect(server.uri, db, name, client_options=options) as registry:
        assert registry.ret_cam_ids() == ["a", "b"]
        assert server.password not in repr(registry)

    anonymous = MongoConnect(server.uri, db, name, timeout=2.0)
    anonymous.connect()  # ping needs no user...
    with pytest.raises(RegistryError, match="not authorized"):
        anonymous.fetch()  # ...reading does
    anonymous.close()

    wrong = MongoConnect(
        f"mongodb://{server.username}:not-the-password@{server.host}:{server.port}/?authSource=admin",
        db,
        name,
        timeout=2.0,
    )
    with pytest.raises(RegistryError, match="authentication failed"):
        wrong.connect()


# -- secrets stay secret ------------------------------------------------------------------------


def _capture_everything(caplog: pytest.LogCaptureFixture) -> None:
    """Every logger at DEBUG into caplog, including loggers that do not propagate."""
    caplog.set_level(logging.DEBUG)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            caplog.set_level(logging.DEBUG, logger=name)
            if not logger.propagate and caplog.handler not in logger.handlers:
                logger.addHandler(caplog.handler)
    for name in ("comux", "comux.registry", "pymongo"):
        caplog.set_level(logging.DEBUG, logger=name)


def _record_texts(caplog: pytest.LogCaptureFixture) -> list[str]:
    texts = []
    for record in caplog.records:
        texts.append(record.getMessage())
        texts.append(caplog.handler.format(record))
        texts.append(repr(record.args))
    return texts


def _exception_texts(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), repr(exc.args), *traceback.format_exception(exc)]


def test_secrets_never_appear(
    mongo_auth_server: FerretDB,
    auth_collection: Collection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = mongo_auth_server
    db, name = auth_collection.database.name, auth_collection.name
    sentinel = "S3NT1NEL" + secrets.token_hex(10)
    assert server.password is not None
    forbidden = [sentinel, server.password, quote_plus(server.password)]
    _capture_everything(caplog)
    exceptions: list[BaseException] = []
    shown: list[str] = []
    hostport = f"{server.host}:{server.port}"

    def attempt(registry: MongoConnect, expect_error: bool) -> None:
        shown.append(repr(registry))
        shown.append(registry.uri)
        try:
            registry.ret_cam_ids()
        except RegistryError as exc:
            exceptions.append(exc)
            assert expect_error, exc
        else:
            assert not expect_error
        finally:
            registry.close()
        shown.append(repr(registry))

    # the right password, in the URI and in client_options: works, shows nothing
    attempt(MongoConnect(server.auth_uri, db, name), expect_error=False)
    attempt(
        MongoConnect(
            server.uri,
            db,
            name,
            client_options={
                "username": server.username,
                "password": server.password,
                "authSource": "admin",
            },
        ),
        expect_error=False,
    )
    # a wrong (sentinel) password, in the URI and in client_options
    attempt(
        MongoConnect(
            f"mongodb://{server.username}:{sentinel}@{hostport}/?authSource=admin",
            db,
            name,
            timeout=2.0,
        ),
        expect_error=True,
    )
    attempt(
        MongoConnect(
            server.uri,
            db,
            name,
            timeout=2.0,
            client_options={
                "username": server.username,
                "password": sentinel,
                "authSource": "admin",
            },
        ),
        expect_error=True,
    )
    # malformed URIs holding the sentinel (an unescaped '/' makes pymongo misread the host)
    attempt(
        MongoConnect(
            f"mongodb://{server.username}:{sentinel}/x@{hostport}/", db, name, timeout=1.0
        ),
        expect_error=True,
    )
    attempt(
        MongoConnect(
            f"mongodb://{server.username}:{sentinel}%zz@{hostport}/", db, name, timeout=1.0
        ),
        expect_error=True,
    )
    attempt(
        MongoConnect(
            f"{server.auth_uri}&authMechanismProperties={sentinel}", db, name, timeout=1.0
        ),
        expect_error=False,
    )  # pymongo only warns, then ignores it
    # a sync thread whose registry keeps failing authentication logs every round
    failing = MongoConnect(
        f"mongodb://{server.username}:{sentinel}@{hostport}/?authSource=admin",
        db,
        name,
        timeout=1.0,
    )
    stop = threading.Event()
    thread = sync_cameras(CameraTarget(["x"]), failing, 0.01, stop=stop)  # type: ignore[arg-type]
    try:
        assert thread.wait_rounds(3, DEADLINE)
        assert thread.errors >= 3 and "authentication failed" in (thread.last_error or "")
        shown.append(thread.last_error or "")
    finally:
        stop.set()
        thread.join(DEADLINE)
        failing.close()

    assert len(exceptions) == 4
    assert all(hostport in str(exc) for exc in exceptions)
    texts = _record_texts(caplog) + shown
    for exc in exceptions:
        assert exc.__cause__ is None and exc.__context__ is None
        texts += _exception_texts(exc)
    assert any("pymongo" in r.name for r in caplog.records)  # pymongo's own logs were captured
    assert any("authentication failed" in r.getMessage() for r in caplog.records)
    for text in texts:
        for secret in forbidden:
            assert secret not in text, f"a secret leaked into: {text[:300]}"
    # a fragment of the sentinel (as a malformed URI splits it) does not leak either
    assert sentinel[8:] not in "\n".join(texts)


def test_comux_from_mongo_follows_the_registry_while_running(
    mongo_server: FerretDB, collection: Collection, kafka_broker
) -> None:

    clip = list(synthetic_packets(160, 120, 12, gop=6, bframes=0))
    cams = [f"reg-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    for cam in cams:
        publish(lambda: iter(clip), cam, bootstrap_servers=kafka_broker.bootstrap, rate="max")
    collection.insert_many([{"cam_id": cams[0]}, {"cam_id": cams[1]}])
    comux = Comux.from_mongo(
        mongo_server.uri, collection.database.name, collection.name, log_level="WARNING"
    )
    try:
        assert comux.cam_ids == cams[:2]
        comux.setup_consumers(
            kafka_broker.bootstrap, end=False, max_offset_diff=None, **own_group()
        )
        comux.setup_decoders(rate=None, W=160, H=120)
        comux.start()
        sync = comux.sync(interval=0.1)
        collection.insert_one({"cam_id": cams[2]})
        collection.delete_one({"cam_id": cams[0]})
        assert sync.wait_rounds(sync.rounds + 2, timeout=30)
        assert comux.cam_ids == cams[1:]
        seen: set[str] = set()
        deadline = time.monotonic() + 30
        while seen != set(cams[1:]):
            assert time.monotonic() < deadline, comux.stats()
            for cam_id, _, frame in comux.get_batch(timeout=2) or []:
                assert cam_id != cams[0]
                if frame is not None:
                    seen.add(cam_id)
        assert sync.errors == 0
    finally:
        comux.close()
