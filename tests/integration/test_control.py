"""The control topic on the real broker: hot add/remove, replies, refusals, replays, restarts."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import Consumer, Producer

from comux import Comux
from comux.control import REQUEST_ID_HEADER, TARGET_HEADER, sign
from comux.media import synthetic_packets
from comux.publish import publish_forever
from tests.groups import own_group

CLIP = list(synthetic_packets(160, 120, 50, fps=25, gop=10, bframes=0))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Remote:
    """Send control messages and wait for their replies, as an operator's tool would."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.producer = Producer({"bootstrap.servers": bootstrap})
        self.replies = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": unique("remote"),
                "auto.offset.reset": "earliest",
                "topic.metadata.refresh.interval.ms": 500,
            }
        )
        self.replies.subscribe([f"{topic}.replies"])
        self.seen: dict[str, list[dict]] = {}

    def send(
        self,
        action: str,
        value: bytes | dict,
        headers: list | None = None,
        request_id: str | None = None,
    ) -> str:
        request_id = request_id or uuid.uuid4().hex
        body = value if isinstance(value, bytes) else json.dumps(value).encode()
        hdrs = list(headers or [])
        if not any(h[0] == REQUEST_ID_HEADER for h in hdrs):
            hdrs.append((REQUEST_ID_HEADER, request_id.encode()))
        self.producer.produce(self.topic, body, action.encode(), headers=hdrs)
        self.producer.flush(10)
        return request_id

    def reply(self, request_id: str, nth: int = 1, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while len(self.seen.get(request_id, [])) < nth:
            assert time.monotonic() < deadline, f"no reply to {request_id}"
            msg = self.replies.poll(0.2)
            if msg is None or msg.error():
                continue
            body = json.loads(msg.value())
            self.seen.setdefault(str(body.get("id")), []).append(body)
        return self.seen[request_id][nth - 1]

    def call(self, action: str, value: bytes | dict, **kw) -> dict:
        return self.reply(self.send(action, value, **kw))

    def close(self) -> None:
        self.replies.close()


@pytest.fixture
def cameras_publishing(kafka_broker) -> Iterator[tuple[list[str], threading.Event]]:
    """Three cameras publishing in real time (25 fps) until the test ends."""
    cams = [unique("ctl-cam") for _ in range(3)]
    stop = threading.Event()
    threads = publish_forever(CLIP, cams, bootstrap_servers=kafka_broker.bootstrap, stop=stop)
    yield cams, stop
    stop.set()
    for t in threads:
        t.join(10)


def running(bootstrap: str, cams: list[str], topic: str, acts=None, **control) -> Comux:
    comux = Comux(cams, "raw.:cam_id", "out.:cam_id", "WARNING")
    comux.setup_consumers(bootstrap, end=True, max_offset_diff=50, **own_group())
    comux.setup_decoders(rate=None, W=160, H=120, max_wait=0.5)
    control = comux.setup_controller(topic, bootstrap, acts, **control)
    comux.start()
    assert control.ready.wait(30), "the controller never got its partition"
    return comux


@pytest.fixture
def control_rig(kafka_broker) -> Iterator[Callable[..., tuple[Remote, Comux]]]:
    """``control_rig(cams, **control)``: a running Comux on a new control topic, and its remote."""
    made: list[tuple[Remote, Comux]] = []

    def make(cams: list[str], **control) -> tuple[Remote, Comux]:
        topic = unique("control")
        remote = Remote(kafka_broker.bootstrap, topic)
        made.append((remote, running(kafka_broker.bootstrap, cams, topic, **control)))
        return made[-1]

    yield make
    for remote, comux in made:
        comux.close()
        remote.close()


def frames_per_camera(comux: Comux, seconds: float) -> tuple[dict[str, int], list]:
    counts: dict[str, int] = {}
    batches = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        batch = comux.get_batch(timeout=1)
        for cam_id, _, frame in batch or []:
            if frame is not None:
                counts[cam_id] = counts.get(cam_id, 0) + 1
        batches.append((time.monotonic(), [c for c, _, f in batch or [] if f is not None]))
    return counts, batches


def delivered(comux: Comux) -> dict[str, int]:
    return {cam: s["delivered"] for cam, s in comux.stats().items()}


def test_create_and_delete_while_frames_flow(control_rig, cameras_publishing):
    (a, b, c), _ = cameras_publishing
    remote, comux = control_rig([a, b])
    assert remote.call("list", {})["status"] == "ok"  # the controller is listening
    frames_per_camera(comux, 1.0)  # warm up: both cameras past their first keyframe
    start = delivered(comux)
    frames_per_camera(comux, 3.0)
    before = {cam: n - start[cam] for cam, n in delivered(comux).items()}

    sent = time.monotonic()
    start = delivered(comux)
    request = remote.send("create", {"cam_ids": [c]})
    first_c = None
    gaps = {a: [sent], b: [sent]}
    while time.monotonic() - sent < 3.0 or first_c is None:
        assert time.monotonic() - sent < 30, comux.stats()
        for cam_id, _, frame in comux.get_batch(timeout=1) or []:
            if frame is None:
                continue
            if cam_id in gaps and time.monotonic() - sent < 3.0:
                gaps[cam_id].append(time.monotonic())
            if cam_id == c and first_c is None:
                first_c = time.monotonic() - sent
        if time.monotonic() - sent < 3.0:
            during = {cam: n - start.get(cam, 0) for cam, n in delivered(comux).items()}
    reply = remote.reply(request)
    assert reply["status"] == "ok" and reply["result"]["created"] == [c]
    print(
        f"create -> first frame of the new camera: {first_c:.3f} s; frames in 3 s "
        f"before {before}, during {during}"
    )
    for cam in (a, b):
        # The others keep their frame rate, and their batches never stall.
        assert during[cam] >= 0.9 * before[cam], (before, during)
        assert max(t2 - t1 for t1, t2 in zip(gaps[cam], gaps[cam][1:], strict=False)) < 0.5

    reply = remote.call("delete", {"cam_ids": [a]})
    assert reply["result"] == {"deleted": [a], "unknown": []}
    _, batches = frames_per_camera(comux, 1.5)
    assert all(a not in cams for _, cams in batches)
    assert any(c in cams for _, cams in batches)
    assert comux.cam_ids == [b, c]
    for worker in comux._consumer.decoders.workers:
        assert worker.crashes == 0 and worker.is_alive()


def test_bad_messages_get_error_replies_and_the_controller_keeps_going(control_rig):
    remote, comux = control_rig([], max_payload=1024, max_cameras=2)
    assert remote.call("list", {})["status"] == "ok"
    bad_json = remote.call("create", b"{not json")
    assert bad_json["status"] == "error" and "JSON" in bad_json["error"]
    unknown = remote.call("explode", {})
    assert unknown == {**unknown, "status": "error", "error": "✘ No action 'explode' defined!"}
    big = remote.call("create", b'{"cam_ids": ["' + b"x" * 2000 + b'"]}')
    assert big["status"] == "error" and "exceeds 1024" in big["error"]
    bad_id = remote.call("create", {"cam_ids": ["../etc"]})
    assert bad_id["status"] == "error" and "invalid cam id" in bad_id["error"]
    too_many = remote.call("create", {"cam_ids": ["c1", "c2", "c3"]})
    assert too_many["status"] == "error" and "max_cameras" in too_many["error"]
    ok = remote.call("create", {"cam_ids": ["c1"]})
    assert ok["status"] == "ok" and comux.cam_ids == ["c1"]
    assert comux.control.counters["rejected"] == 2  # not JSON, too big
    assert comux.control.counters["errors"] == 3  # unknown action, bad id, too many


def test_signed_control_refuses_unsigned_forged_and_stale(control_rig):
    secret = "sentinel-secret-7f3a"
    remote, comux = control_rig([], secret=secret, max_skew=30)
    value = json.dumps({"cam_ids": ["s1"]}).encode()

    def signed(request_id: str, **kw) -> list:
        return sign(secret, "create", value, request_id=request_id, **kw)

    r = remote.call("create", value)
    assert r["status"] == "error" and "unsigned" in r["error"]
    rid = uuid.uuid4().hex
    forged = sign("wrong-secret", "create", value, request_id=rid)
    assert remote.reply(remote.send("create", value, forged, rid))["error"] == "bad signature"
    rid = uuid.uuid4().hex
    # The signature covers the action: re-keying a signed 'list' as 'create' fails.
    swapped = sign(secret, "list", value, request_id=rid)
    assert remote.reply(remote.send("create", value, swapped, rid))["error"] == "bad signature"
    rid = uuid.uuid4().hex
    stale = signed(rid, timestamp=time.time() - 3600)
    assert "stale" in remote.reply(remote.send("create", value, stale, rid))["error"]
    assert comux.cam_ids == []
    rid = uuid.uuid4().hex
    good = remote.reply(remote.send("create", value, signed(rid), rid))
    assert good["status"] == "ok" and comux.cam_ids == ["s1"]
    assert comux.control.counters["rejected"] == 4
    assert secret not in repr(comux.control)


def test_replayed_request_is_answered_again_but_applied_once(control_rig):
    applied = []
    acts = {"count": lambda comux, value: applied.append(value) or len(applied)}
    remote, _ = control_rig([], acts=acts)
    first = remote.call("count", {"id": "req-1", "n": 1}, request_id="req-1")
    second = remote.reply(remote.send("count", {"n": 1}, request_id="req-1"), nth=2)
    assert first["result"] == 1 and second["result"] == 1 and second["duplicate"] is True
    assert len(applied) == 1
    # The payload's "id" field serves when the header is absent.
    third = remote.call(
        "count", {"id": "req-2"}, headers=[(REQUEST_ID_HEADER, b"")], request_id="req-2"
    )
    assert third["id"] == "req-2" and len(applied) == 2


def test_messages_for_other_instances_are_ignored_and_counted(control_rig):
    remote, comux = control_rig([], instance_id="node-1", groups=["edge"])
    remote.send("create", {"cam_ids": ["x1"]}, headers=[(TARGET_HEADER, b"node-2")])
    to_group = remote.call("create", {"cam_ids": ["g1"]}, headers=[(TARGET_HEADER, b"edge")])
    assert to_group["status"] == "ok" and to_group["instance"] == "node-1"
    assert comux.cam_ids == ["g1"]
    assert comux.control.counters["ignored"] == 1


def test_restarted_controller_does_not_apply_old_actions_again(kafka_broker):
    topic = unique("control")
    remote = Remote(kafka_broker.bootstrap, topic)
    instance = unique("node")
    first = running(kafka_broker.bootstrap, [], topic, instance_id=instance)
    try:
        assert remote.call("create", {"cam_ids": ["old"]})["status"] == "ok"
    finally:
        first.close()
    second = running(kafka_broker.bootstrap, [], topic, instance_id=instance)
    try:
        assert remote.call("list", {})["result"]["cam_ids"] == []
        assert second.control.counters["applied"] == 1  # only the list
    finally:
        second.close()
        remote.close()


def test_pause_update_and_resume_a_running_camera(control_rig, cameras_publishing):
    (a, b, _), _ = cameras_publishing
    remote, comux = control_rig([a, b])
    _, batches = frames_per_camera(comux, 1.5)
    assert any(b in cams for _, cams in batches)
    assert remote.call("pause", {"cam_ids": [b]})["result"] == {"paused": [b]}
    _, batches = frames_per_camera(comux, 1.5)
    assert all(b not in cams for _, cams in batches) and any(a in cams for _, cams in batches)
    reply = remote.call("update", {"cam_ids": [a], "rate": 5, "max_offset_diff": 30})
    assert reply["status"] == "ok", reply
    decoder = comux._cameras[a].decoder
    assert decoder.config.rate == 5 and decoder.max_offset_diff == 30
    bad = remote.call("update", {"cam_ids": [a], "colour": "red"})
    assert bad["status"] == "error" and "colour" in bad["error"]
    assert remote.call("update", {"cam_ids": [b], "policy": "fifo"})["status"] == "ok"
    assert remote.call("resume", {"cam_ids": [b]})["result"] == {"resumed": [b]}
    assert comux._pool.rows(b).policy == "fifo"  # a resume keeps what update chose
    _, batches = frames_per_camera(comux, 3.0)
    assert any(b in cams for _, cams in batches)
    listed = remote.call("list", {})["result"]
    assert listed["cam_ids"] == [a, b] and set(listed["stats"]) == {a, b}
