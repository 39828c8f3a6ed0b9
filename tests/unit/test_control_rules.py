"""The control plane without a broker: ``Control._handle`` fed fake messages, replies caught by a
fake producer; nonces, reply sizes, unknown actions, the acts' limits, big creates."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import KafkaException

from comux import Comux
from comux import control as control_module
from comux.acts import MAX_CAMERAS, Acts, camera_limit
from comux.control import MAX_REPLY, REQUEST_ID_HEADER, Control, NoSuchAction, sign
from tests.fakes import FakeMessage

SECRET = "unit-secret"


class FakeProducer:
    """Records replies; ``fail`` makes produce raise it."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.callbacks: list[Callable[[Any, Any], None] | None] = []
        self.fail: Exception | None = None

    def produce(self, topic: str, value: bytes, key: Any = None, **kw: Any) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append(value)
        self.callbacks.append(kw.get("on_delivery"))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0

    def replies(self) -> list[dict]:
        return [json.loads(v) for v in self.sent]


@pytest.fixture
def make_control() -> Iterator[Callable[..., Control]]:
    """``make_control(comux, acts, **options)``: a Control that never connects, replying into a
    FakeProducer; its ``_handle`` is fed by hand. ``max_cameras`` goes to its Acts."""

    def make(comux: Comux | None = None, acts: dict | None = None, **options: Any) -> Control:
        dispatch = Acts(comux or Comux([]), acts, max_cameras=options.pop("max_cameras", None))
        control = Control("ctl", dispatch, bootstrap_servers="127.0.0.1:1", **options)
        control._producer = FakeProducer()
        return control

    yield make


class ControlMessage(FakeMessage):
    def error(self) -> None:
        return None


def message(action: str, value: bytes, headers: list, offset: int = 0) -> ControlMessage:
    return ControlMessage(value, offset, _topic="ctl", _key=action.encode(), _headers=headers)


def counting() -> tuple[list, dict]:
    applied: list = []
    return applied, {"count": lambda comux, value: applied.append(value) or len(applied)}


def test_sign_adds_a_nonce_and_refuses_non_finite_timestamps():
    first, second = dict(sign(SECRET, "list", b"{}")), dict(sign(SECRET, "list", b"{}"))
    assert len(first[REQUEST_ID_HEADER]) == 32
    assert first[REQUEST_ID_HEADER] != second[REQUEST_ID_HEADER]
    assert dict(sign(SECRET, "list", b"{}", request_id="r1"))[REQUEST_ID_HEADER] == b"r1"
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            sign(SECRET, "list", b"{}", timestamp=bad)


def test_a_replay_inside_the_window_is_a_duplicate_even_after_many_other_requests(make_control):
    applied, acts = counting()
    control = make_control(acts=acts, secret=SECRET, max_skew=30)
    value = b'{"n": 1}'
    first = sign(SECRET, "count", value, request_id="first")
    control._handle(message("count", value, first))
    for _ in range(1500):  # more than the replies remembered
        control._handle(message("count", value, sign(SECRET, "count", value)))
    control._handle(message("count", value, first))
    assert len(applied) == 1501
    last = control._producer.replies()[-1]
    assert last["duplicate"] is True and last["id"] == "first" and last["status"] == "error"
    assert control.counters["duplicates"] == 1


def test_nonces_are_forgotten_after_twice_max_skew_and_bounded(make_control, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(control_module.time, "monotonic", lambda: now[0])
    applied, acts = counting()
    control = make_control(acts=acts, secret=SECRET, max_skew=10)
    value = b"{}"
    for _ in range(5):
        control._handle(message("count", value, sign(SECRET, "count", value)))
    assert len(control._nonces) == 5
    now[0] += 21  # past 2 * max_skew: none of them could pass the skew check any more
    control._handle(message("count", value, sign(SECRET, "count", value)))
    assert len(control._nonces) == 1 and len(applied) == 6
    monkeypatch.setattr(control_module, "_MAX_NONCES", 3)
    for _ in range(3):
        control._handle(message("count", value, sign(SECRET, "count", value)))
    assert len(applied) == 8  # the fourth within the window is refused, not remembered
    refused = control._producer.replies()[-1]
    assert refused["status"] == "error" and "retry later" in refused["error"]


def test_signed_messages_without_nonce_or_with_non_finite_timestamps_are_refused(make_control):
    applied, acts = counting()
    control = make_control(acts=acts, secret=SECRET)
    value = b"{}"
    no_nonce = [h for h in sign(SECRET, "count", value) if h[0] != REQUEST_ID_HEADER]
    control._handle(message("count", value, no_nonce))  # the signature covers the nonce
    stamp = f"{time.time():.3f}"
    signed = control_module._signed_bytes("count", value, stamp, None, None)
    digest = control_module.hmac.new(SECRET.encode(), signed, "sha256").hexdigest()
    headers = [("comux-signature", digest.encode()), ("comux-timestamp", stamp.encode())]
    control._handle(message("count", value, headers))
    for bad in ("nan", "inf", "-inf", "NaN"):
        signed = control_module._signed_bytes("count", value, bad, None, "n-" + bad)
        digest = control_module.hmac.new(SECRET.encode(), signed, "sha256").hexdigest()
        headers = [
            ("comux-signature", digest.encode()),
            ("comux-timestamp", bad.encode()),
            (REQUEST_ID_HEADER, ("n-" + bad).encode()),
        ]
        control._handle(message("count", value, headers))
    replies = control._producer.replies()
    assert applied == []
    assert replies[0]["error"] == "bad signature"
    assert "comux-request-id" in replies[1]["error"]
    assert all("finite" in r["error"] for r in replies[2:]) and len(replies) == 6


def test_a_reply_over_the_limit_is_truncated_with_a_marker(make_control):
    acts = {"big": lambda comux, value: "x" * 2_000_000}
    control = make_control(acts=acts)
    control._handle(message("big", b"{}", [(REQUEST_ID_HEADER, b"r1")]))
    (raw,) = control._producer.sent
    reply = json.loads(raw)
    assert len(raw) <= MAX_REPLY and reply["status"] == "ok" and reply["id"] == "r1"
    assert reply["result"] == {"truncated": True, "bytes": reply["result"]["bytes"]}
    assert reply["result"]["bytes"] > 2_000_000 and control.counters["truncated"] == 1


def test_a_list_over_the_limit_keeps_every_id_and_the_stats_that_fit(make_control):
    ids = [f"cam-{i:05d}" for i in range(3400)]
    stats = {cam: {"counter": "0" * 480} for cam in ids}
    control = make_control(acts={"list": lambda comux, value: {"cam_ids": ids, "stats": stats}})
    control._handle(message("list", b"{}", [(REQUEST_ID_HEADER, b"r2")]))
    (raw,) = control._producer.sent
    result = json.loads(raw)["result"]
    assert len(raw) <= MAX_REPLY and result["truncated"] is True and result["total"] == 3400
    assert result["cam_ids"] == ids and 1000 < len(result["stats"]) < 3400
    assert list(result["stats"]) == ids[: len(result["stats"])]
    # The largest that fits: one more camera would not.
    assert MAX_REPLY - len(raw) < len(json.dumps({ids[0]: stats[ids[0]]}))
    # A big reply is remembered for duplicates by its size only.
    control._handle(message("list", b"{}", [(REQUEST_ID_HEADER, b"r2")]))
    again = control._producer.replies()[-1]
    assert again["duplicate"] is True and again["result"] == {"truncated": True, "bytes": len(raw)}


def test_a_reply_that_cannot_be_produced_is_logged_and_counted(make_control, caplog):
    control = make_control()
    control._producer.fail = KafkaException("MSG_SIZE_TOO_LARGE")
    control._handle(message("list", b"{}", []))
    assert control.counters["reply_errors"] == 1
    assert "control reply" in caplog.text
    control._producer.fail = None
    control._handle(message("list", b"{}", []))
    control._producer.callbacks[-1]("broker said no", None)  # a failed delivery report
    assert control.counters["reply_errors"] == 2


def test_camera_limit_follows_the_batch_shape_and_memory():
    assert camera_limit((120, 160, 3), 3) == MAX_CAMERAS
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    frame = (4320, 7680, 3)  # 8K: 100 MB a row
    assert camera_limit(frame, 3) == max(1, memory // 4 // (7680 * 4320 * 3 * 3 * 2))


def test_the_default_limit_uses_the_comux_batches(make_control):
    comux = Comux([])
    comux.setup_decoders(rate=None, W=1920, H=1080, buffers=4)
    control = make_control(comux)
    assert control.dispatch.camera_limit() == camera_limit((1080, 1920, 3), 4)
    assert make_control(max_cameras=5).dispatch.camera_limit() == 5
    assert Acts(Comux([])).camera_limit() == camera_limit((1080, 1920, 3), 3)  # the defaults


def test_a_create_over_the_limit_creates_nothing(make_control):
    comux = Comux(["a"])
    control = make_control(comux, max_cameras=3)
    value = json.dumps({"cam_ids": ["b", "c", "d"]}).encode()
    control._handle(message("create", value, []))
    reply = control._producer.replies()[-1]
    assert reply["status"] == "error" and "max_cameras is 3" in reply["error"]
    assert comux.cam_ids == ["a"]
    control._handle(message("create", json.dumps({"cam_ids": ["b", "a", "c"]}).encode(), []))
    assert control._producer.replies()[-1]["result"] == {"created": ["b", "c"], "existing": ["a"]}


def test_a_big_create_lets_go_of_the_lock_between_steps(monkeypatch):
    comux = Comux([])
    comux._started = True  # connect() is stubbed: each camera takes 2 ms
    monkeypatch.setattr(comux, "connect", lambda cam_id: time.sleep(0.002))
    ids = [f"c{i}" for i in range(640)]
    worker = threading.Thread(target=comux.add_cameras, args=(ids,))
    worker.start()
    time.sleep(0.05)
    asked = time.monotonic()
    with comux._lock:
        waited = time.monotonic() - asked
    worker.join(10)
    assert waited < 0.5, f"waited {waited:.2f} s for the lock during a create of 640"


class FakeConsumer:
    """Hands out ``messages`` once each, then nothing; records commits and close."""

    def __init__(self, messages: list[ControlMessage]) -> None:
        self.messages = list(messages)
        self.committed: list[int] = []
        self.closed = threading.Event()

    def poll(self, timeout: float) -> ControlMessage | None:
        if self.messages:
            return self.messages.pop(0)
        time.sleep(timeout)
        return None

    def commit(self, message: ControlMessage, asynchronous: bool) -> None:
        self.committed.append(message.offset())

    def close(self) -> None:
        self.closed.set()


def test_stop_does_not_wait_on_a_long_action_and_the_thread_closes_its_consumer(make_control):
    started = threading.Event()

    def slow(comux: Comux, value: Any) -> str:
        started.set()
        time.sleep(1.5)
        return "done"

    control = make_control(acts={"slow": slow})
    consumer = FakeConsumer([message("slow", b"{}", [(REQUEST_ID_HEADER, b"s1")])])
    control._consumer = consumer
    control._thread = threading.Thread(target=control._listen, daemon=True)
    control._thread.start()
    assert started.wait(5)
    asked = time.monotonic()
    control.stop(timeout=1.0)
    assert time.monotonic() - asked < 1.2 and not consumer.closed.is_set()
    assert consumer.closed.wait(5), "the thread never closed its consumer"
    assert consumer.committed == [0]  # the action it was in was finished and answered
    assert control._producer.replies()[-1]["result"] == "done"


# -- the transport and the acts apart ------------------------------------------------------


class FakeCameras:
    """The acts' view of a Comux (comux.acts.Cameras) with no pipeline: records each change."""

    def __init__(self, cam_ids: list[str], running: list[str] | None = None) -> None:
        self.cam_ids = list(cam_ids)
        self.threads = dict.fromkeys(cam_ids if running is None else running)
        self._lock = threading.RLock()
        self.calls: list[tuple] = []

    def batch_layout(self) -> tuple[tuple[int, ...], int]:
        return (360, 640, 3), 3

    def add_cameras(self, cam_ids: list[str]) -> dict[str, list[str]]:
        new = [c for c in cam_ids if c not in self.cam_ids]
        self.cam_ids += new
        self.calls.append(("add", new))
        return {"created": new, "existing": [c for c in cam_ids if c not in new]}

    def kill(self, cam_id: str) -> None:
        self.calls.append(("kill", cam_id))
        self.cam_ids.remove(cam_id)

    def update(self, cam_id: str, **settings: Any) -> None:
        self.calls.append(("update", cam_id, settings))

    def pause(self, cam_id: str) -> None:
        self.calls.append(("pause", cam_id))

    def resume(self, cam_id: str) -> None:
        self.calls.append(("resume", cam_id))

    def stats(self) -> dict[str, dict[str, Any]]:
        return {c: {"frames": 0} for c in self.cam_ids}


def handle(control: Control, action: str, value: Any, request_id: str | None = None) -> dict:
    headers = [(REQUEST_ID_HEADER, request_id.encode())] if request_id else []
    control._handle(message(action, json.dumps(value).encode(), headers))
    return control._producer.replies()[-1]


def fake_control(cameras: FakeCameras, **options: Any) -> Control:
    dispatch = Acts(cameras, max_cameras=options.pop("max_cameras", None))
    control = Control("ctl", dispatch, bootstrap_servers="127.0.0.1:1", **options)
    control._producer = FakeProducer()
    return control


def test_the_constructor_neither_connects_nor_starts_a_thread():
    before = threading.active_count()
    control = Control("ctl", Acts(FakeCameras([])), bootstrap_servers="127.0.0.1:1")
    assert control._consumer is None and control._producer is None and control._thread is None
    assert threading.active_count() == before and not control.ready.is_set()
    assert control.topic_last_offset is None
    control.stop(timeout=0.1)  # nothing to stop: returns at once
    assert Control.kill is Control.stop  # the original name stays


def test_an_unknown_action_is_an_explicit_outcome_answered_with_its_text():
    cameras = FakeCameras(["a"])
    assert Acts(cameras)("nope", {}) == NoSuchAction("nope")
    control = fake_control(cameras)
    reply = handle(control, "nope", {}, "u1")
    assert reply == {
        "action": "nope",
        "id": "u1",
        "instance": control.instance_id,
        "status": "error",
        "error": "✘ No action 'nope' defined!",
    }
    assert control.counters["errors"] == 1 and control.counters["applied"] == 0
    assert cameras.calls == []


def test_any_callable_dispatches():
    control = Control("ctl", lambda action, value: {action: value}, bootstrap_servers="x:1")
    control._producer = FakeProducer()
    assert handle(control, "echo", {"n": 1})["result"] == {"echo": {"n": 1}}
    with pytest.raises(Exception, match="dispatch must be callable"):
        Control("ctl", "not callable", bootstrap_servers="x:1")  # type: ignore[arg-type]


def test_update_pause_and_resume_are_all_or_nothing():
    cameras = FakeCameras(["a", "b", "idle"], running=["a", "b"])
    control = fake_control(cameras)
    refused = [
        handle(control, "update", {"cam_ids": ["a", "ghost"], "rate": 5}),
        handle(control, "update", {"cam_ids": ["a", "idle"], "rate": 5}),
        handle(control, "update", {"cam_ids": ["a"], "rate": -1, "policy": "newest"}),
        handle(control, "update", {"cam_ids": ["a"], "colour": "red"}),
        handle(control, "pause", {"cam_ids": ["a", "ghost"]}),
        handle(control, "resume", {"cam_ids": ["b", "ghost"]}),
        handle(control, "pause", {"cam_ids": ["bad id!"]}),
    ]
    assert all(r["status"] == "error" for r in refused), refused
    assert "nothing was changed" in refused[0]["error"] and "'ghost'" in refused[0]["error"]
    assert "not started" in refused[1]["error"]
    assert "rate" in refused[2]["error"] and "policy" in refused[2]["error"]
    assert refused[6]["error"].startswith("ActionError: invalid cam id")
    everyone = handle(control, "update", {"rate": 5})  # no cam_ids: all, and "idle" is not started
    assert everyone["status"] == "error" and "'idle'" in everyone["error"]
    assert cameras.calls == []
    ok = handle(control, "update", {"cam_ids": ["a", "b"], "max_offset_diff": 5})
    assert ok["result"] == {"updated": ["a", "b"], "settings": {"max_offset_diff": 5}}
    assert cameras.calls == [("update", c, {"max_offset_diff": 5}) for c in ("a", "b")]


def test_delete_list_and_a_create_past_the_limit_of_a_callers_create():
    cameras = FakeCameras(["a", "b"])
    created: list = []
    acts = Acts(cameras, {"create": lambda comux, value: created.append(value)}, max_cameras=3)
    control = Control("ctl", acts, bootstrap_servers="127.0.0.1:1")
    control._producer = FakeProducer()
    assert "max_cameras is 3" in handle(control, "create", {"cam_ids": ["c", "d"]})["error"]
    assert created == []  # the limit holds for an act that replaced the built-in create
    assert handle(control, "create", {"cam_ids": ["c"]})["status"] == "ok" and len(created) == 1
    assert handle(control, "delete", {"cam_ids": ["a", "zz"]})["result"] == {
        "deleted": ["a"],
        "unknown": ["zz"],
    }
    assert handle(control, "list", {})["result"] == {
        "cam_ids": ["b"],
        "stats": {"b": {"frames": 0}},
    }
