"""The control topic on the real broker: hot add/remove, replies, refusals, replays, restarts."""

from __future__ import annotations

import hashlib
import hmac
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
            self.poll(0.2)
        return self.seen[request_id][nth - 1]

    def poll(self, timeout: float) -> None:
        """Collect at most one reply into ``seen`` (by its id)."""
        msg = self.replies.poll(timeout)
        if msg is not None and not msg.error():
            body = json.loads(msg.value())
            self.seen.setdefault(str(body.get("id")), []).append(body)

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


# -- reliability: all or nothing, replays, reply size, big creates, the first start ----------


def test_update_pause_and_resume_change_nothing_when_any_part_is_wrong(
    control_rig, cameras_publishing
):
    (a, b, _), _ = cameras_publishing
    remote, comux = control_rig([a, b])
    frames_per_camera(comux, 1.0)
    decoder = comux._cameras[a].decoder
    for action, value, named in [
        ("update", {"cam_ids": [a, "ghost"], "rate": 5}, "ghost"),
        ("update", {"cam_ids": [a, b], "rate": 5, "policy": "lifo"}, "policy"),
        ("update", {"cam_ids": [a], "rate": 5, "max_offset_diff": True}, "max_offset_diff"),
        ("update", {"cam_ids": [a], "max_offset_diff": 30, "rate": "fast"}, "rate"),
        ("update", {"cam_ids": [a], "max_offset_diff": 30, "rate": 0}, "rate"),
        ("pause", {"cam_ids": [a, "ghost"]}, "ghost"),
    ]:
        reply = remote.call(action, value)
        assert reply["status"] == "error" and named in reply["error"], (value, reply)
        assert decoder.config.rate is None and decoder.max_offset_diff == 50, value
        assert comux._paused == set() and comux._pool.rows(b).policy == "latest", value
    assert remote.call("pause", {"cam_ids": [a, b]})["status"] == "ok"
    reply = remote.call("resume", {"cam_ids": [a, "ghost"]})
    assert reply["status"] == "error" and "ghost" in reply["error"]
    assert comux._paused == {a, b}


def _raw_sign(secret: str, action: str, value: bytes, stamp: str, request_id: str = "") -> list:
    """Headers signed by hand: any timestamp text, and no request id (a sender without nonces)."""
    signed = "\n".join([stamp, action, "", request_id]).encode() + b"\n" + value
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return [
        ("comux-signature", digest.encode()),
        ("comux-timestamp", stamp.encode()),
        (REQUEST_ID_HEADER, request_id.encode()),
    ]


def test_signed_messages_need_a_nonce_and_a_finite_timestamp(control_rig):
    secret = "sentinel-secret-7f3a"
    applied = []
    acts = {"count": lambda comux, value: applied.append(value) or len(applied)}
    remote, _comux = control_rig([], secret=secret, acts=acts)
    value = b'{"n": 1}'
    no_nonce = _raw_sign(secret, "count", value, f"{time.time():.3f}")
    for _ in range(2):
        remote.send("count", value, no_nonce)
    for stamp in ("nan", "inf", "-inf"):
        rid = uuid.uuid4().hex
        remote.send("count", value, _raw_sign(secret, "count", value, stamp, rid), rid)
        reply = remote.reply(rid)
        assert reply["status"] == "error" and "timestamp" in reply["error"], reply
    # A signed message with a nonce, sent twice: applied once, answered as a duplicate.
    rid = uuid.uuid4().hex
    good = sign(secret, "count", value, request_id=rid)
    remote.send("count", value, good, rid)
    remote.send("count", value, good, rid)
    assert remote.reply(rid)["status"] == "ok"
    assert remote.reply(rid, nth=2)["duplicate"] is True
    assert len(applied) == 1, applied
    refusals = remote.seen["None"]
    assert len(refusals) == 2 and all(r["status"] == "error" for r in refusals), refusals
    assert all("comux-request-id" in r["error"] for r in refusals)
    # sign() still gives every message a nonce when the sender names none.
    headers = dict(sign(secret, "count", value))
    rid = headers[REQUEST_ID_HEADER].decode()
    assert len(rid) >= 32
    reply = remote.reply(remote.send("count", value, list(headers.items()), rid))
    assert reply["status"] == "ok" and len(applied) == 2


def test_a_reply_too_big_for_the_broker_is_truncated_not_dropped(control_rig):
    acts = {"big": lambda comux, value: "x" * 2_000_000}
    remote, comux = control_rig([], acts=acts)
    reply = remote.reply(remote.send("big", {}), timeout=20)
    assert reply["status"] == "ok" and reply["result"]["truncated"] is True
    assert reply["result"]["bytes"] > 2_000_000
    assert remote.call("list", {})["status"] == "ok"
    assert comux.control.counters["reply_errors"] == 0


def test_a_big_create_keeps_existing_cameras_flowing(control_rig, cameras_publishing):
    (a, _, _), _ = cameras_publishing
    remote, comux = control_rig([a], max_cameras=5000)
    frames_per_camera(comux, 1.5)
    many = [f"bulk-{uuid.uuid4().hex[:6]}-{i}" for i in range(2000)]
    sent = time.monotonic()
    request = remote.send("create", {"cam_ids": many})
    seen_a: list[float] = [sent]
    batches = 0
    while request not in remote.seen:
        assert time.monotonic() - sent < 120, "the create never answered"
        for cam_id, _, frame in comux.get_batch(timeout=0.2) or []:
            if cam_id == a and frame is not None:
                seen_a.append(time.monotonic())
                batches += 1
        remote.poll(0)
    took = time.monotonic() - sent
    reply = remote.reply(request)
    assert reply["status"] == "ok" and len(reply["result"]["created"]) == 2000
    gap = max(t2 - t1 for t1, t2 in zip(seen_a, seen_a[1:] + [time.monotonic()], strict=True))
    print(f"create of 2000: {took:.1f} s; {batches} batches with {a}; longest gap {gap:.2f} s")
    assert batches > 0 and gap < 5.0
    listed = remote.reply(remote.send("list", {}), timeout=30)
    # 2001 cameras' stats pass librdkafka's 1 MB: the list says it is partial, and is delivered.
    result = listed["result"]
    assert listed["status"] == "ok" and len(result["cam_ids"]) == 2001, result.keys()
    assert result["truncated"] is True and result["total"] == 2001
    assert 0 < len(result["stats"]) < 2001
    sent = time.monotonic()
    assert remote.reply(remote.send("delete", {"cam_ids": many}), timeout=60)["status"] == "ok"
    print(f"delete of 2000: {time.monotonic() - sent:.1f} s")
    assert comux.cam_ids == [a]


def test_a_create_over_max_cameras_is_refused_and_creates_nothing(control_rig):
    remote, comux = control_rig([])  # the default limit: what this machine can hold
    reply = remote.call("create", {"cam_ids": [f"c{i}" for i in range(2000)]})
    assert reply["status"] == "error" and "max_cameras" in reply["error"], reply
    assert comux.cam_ids == []
    limit = comux.control.dispatch.camera_limit()
    assert 1 <= limit <= 1024
    reply = remote.call("create", {"cam_ids": [f"c{i}" for i in range(limit + 1)]})
    assert reply["status"] == "error" and f"max_cameras is {limit}" in reply["error"], reply
    reply = remote.call("create", {"cam_ids": [f"c{i}" for i in range(limit)]})
    assert reply["status"] == "ok" and len(comux.cam_ids) == limit


def test_a_fresh_instance_applies_what_was_sent_shortly_before_it_started(kafka_broker):
    topic = unique("control")
    remote = Remote(kafka_broker.bootstrap, topic)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    old = json.dumps({"cam_ids": ["ancient"]}).encode()
    ms = int((time.time() - 3600) * 1000)
    producer.produce(topic, old, b"create", headers=[(REQUEST_ID_HEADER, b"old")], timestamp=ms)
    producer.flush(10)
    request = remote.send("create", {"cam_ids": ["early"]})
    comux = running(kafka_broker.bootstrap, [], topic, instance_id=unique("node"))
    try:
        reply = remote.reply(request, timeout=20)
        assert reply["status"] == "ok" and reply["result"]["created"] == ["early"]
        assert comux.cam_ids == ["early"] and "old" not in remote.seen
    finally:
        comux.close()
        remote.close()
