"""The whole flow on the real broker: publish, consume, decode, batch, send, read back."""

from __future__ import annotations

import time
import uuid

import av
import numpy as np
from confluent_kafka import Consumer

from comux import Comux
from comux.media import EncodedPacket, synthetic_packets
from comux.publish import publish
from comux.results import SOURCE_HEADERS
from tests.groups import own_group


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def direct_decode(packets: list[EncodedPacket], *, flush: bool = False) -> dict[int, np.ndarray]:
    """Decode the packets straight with PyAV; key each frame by the offset of its packet.

    ``flush`` also takes the frames the decoder holds back for B-frames at the end, as comux
    does once a topic has ended.
    """
    ctx = av.CodecContext.create("h264", "r")
    ctx.copy_opaque = True
    out = {}
    for offset, p in enumerate(packets):
        packet = av.Packet(p.data)
        packet.opaque = offset
        for frame in ctx.decode(packet):
            out[frame.opaque] = frame.to_ndarray(format="rgb24")
    for frame in ctx.decode(None) if flush else ():
        out[frame.opaque] = frame.to_ndarray(format="rgb24")
    return out


def read_topic(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("reader-"),
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    got: list = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                got.append(msg)
    finally:
        consumer.close()
    return got


def test_publish_consume_decode_batch_send_and_read_back(kafka_broker, small_video):
    bootstrap = kafka_broker.bootstrap
    cams = [unique("e2e-a-"), unique("e2e-b-")]
    for cam in cams:
        publish(lambda: iter(small_video), cam, bootstrap_servers=bootstrap, rate="max")
    expected = direct_decode(small_video, flush=True)  # the topic ends: comux flushes too

    received: dict[str, dict[int, np.ndarray]] = {cam: {} for cam in cams}
    with Comux(cams, "raw.:cam_id", "out.:cam_id", "WARNING") as cameras:
        cameras.setup_consumers(bootstrap, end=False, max_offset_diff=None, **own_group())
        cameras.setup_decoders(rate=None, W=320, H=240)
        cameras.setup_producer(bootstrap)
        cameras.start()
        deadline = time.monotonic() + 60
        while any(got.keys() != expected.keys() for got in received.values()):
            assert time.monotonic() < deadline, cameras.stats()
            batch = cameras.get_batch(timeout=5)
            assert batch is not None, cameras.stats()
            assert sorted(c for c, _, _ in batch) == sorted(cams)
            for cam_id, index, array in batch:
                if array is None:
                    continue
                received[cam_id][index] = array
                cameras.send(cam_id, index, {"label": "person", "score": 0.5, "raw": b"\x01"})
        stats = cameras.stats()

    sent = 0
    for cam in cams:
        s = stats[cam]
        assert s["packets"] == len(small_video)
        assert s["decode_errors"] == 0
        # Every delivered frame was either handed out or replaced by a newer one: none vanished.
        assert s["delivered"] == len(received[cam]) + s["replaced"] == len(expected)
        for index, array in received[cam].items():
            np.testing.assert_array_equal(array, expected[index])
        sent += len(received[cam])

        out = read_topic(bootstrap, f"out.{cam}", len(received[cam]))
        assert len(out) == len(received[cam])
        for msg in out:
            headers = dict(msg.headers())
            offset = int(headers[SOURCE_HEADERS[2]])
            assert offset in received[cam]
            assert msg.value() == small_video[offset].data
            assert msg.key() == cam.encode()
            assert headers[SOURCE_HEADERS[0]] == f"raw.{cam}".encode()
            assert headers[SOURCE_HEADERS[1]] == b"0"
            assert headers["label"] == b"person"
            assert headers["score"] == b"0.5"
            assert headers["raw"] == b"\x01"
            assert headers["keyframe"] == (b"1" if small_video[offset].keyframe else b"0")
    assert sent > 0


def test_camera_far_behind_jumps_near_the_end_and_counts_the_skip(kafka_broker):
    bootstrap = kafka_broker.bootstrap
    cam = unique("lag-")
    clip = list(synthetic_packets(160, 120, 110, gop=10, bframes=0))
    publish(lambda: iter(clip[:10]), cam, bootstrap_servers=bootstrap, rate="max")
    with Comux([cam], log_level="WARNING") as cameras:
        cameras.setup_consumers(bootstrap, end=False, max_offset_diff=20, **own_group())
        cameras.setup_decoders(rate=None, W=160, H=120, policy="latest")
        cameras.start()
        entry = cameras.get(cam, timeout=30)  # caught up with the first ten
        assert entry is not None, cameras.stats()
        cameras.pause(cam)  # stops fetching: the camera falls behind while 100 more come
        publish(lambda: iter(clip[10:]), cam, bootstrap_servers=bootstrap, rate="max")
        cameras.resume(cam)
        deadline = time.monotonic() + 30
        while entry[1] < 100:
            assert time.monotonic() < deadline, cameras.stats()
            entry = cameras.get(cam, timeout=5) or entry
        stats = cameras.stats()[cam]
    # It fell 100 behind: it must have jumped over most of them, to a keyframe near the end.
    skipped = stats["lag_unread"] + stats["lag_dropped"] + stats["skipped_before_keyframe"]
    assert skipped >= 60, stats
    assert stats["packets"] <= 110 - 60 + 10, stats
    assert stats["decode_errors"] == 0


def test_a_backlog_asked_for_is_read_whole_before_max_offset_diff_applies(kafka_broker):
    bootstrap = kafka_broker.bootstrap
    cam = unique("backlog-")
    clip = list(synthetic_packets(160, 120, 100, gop=10, bframes=0))
    publish(lambda: iter(clip), cam, bootstrap_servers=bootstrap, rate="max")
    seen: list[int] = []
    with Comux([cam], log_level="WARNING") as cameras:
        cameras.setup_consumers(bootstrap, end=False, max_offset_diff=20, **own_group())
        cameras.setup_decoders(rate=None, W=160, H=120)  # end=False: fifo by default
        cameras.start()
        while len(seen) < len(clip):
            batch = cameras.get_batch(timeout=10)
            assert batch is not None, cameras.stats()
            seen += [index for _, index, frame in batch if frame is not None]
        stats = cameras.stats()[cam]
    assert seen == list(range(len(clip)))
    assert stats["lag_unread"] == stats["lag_dropped"] == 0


def test_live_start_at_end_skips_old_video(kafka_broker):
    bootstrap = kafka_broker.bootstrap
    cam = unique("live-")
    old = list(synthetic_packets(160, 120, 30, gop=10, bframes=0))
    publish(lambda: iter(old), cam, bootstrap_servers=bootstrap, rate="max")
    with Comux([cam], log_level="WARNING") as cameras:
        cameras.setup_consumers(bootstrap, end=True, **own_group())
        cameras.setup_decoders(rate=None, W=160, H=120)
        cameras.start()
        # Nothing new was published: an end=True consumer must not serve the old frames.
        assert cameras.get(cam, timeout=3) is None
        assert cameras.stats()[cam]["packets"] == 0
