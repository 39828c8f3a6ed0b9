"""Frame-to-batch latency with cameras publishing in real time (25 fps) through the real broker.

For every batch handed to the caller, the youngest valid frame is the one that completed it:
its age when ``get_batch`` returns is the latency comux adds (decode done → batch in hand).
The oldest frame's age adds the wait for the slowest camera, which the batching policy
chooses, not comux's machinery. Target: added latency p99 <= 5 ms with 16 cameras at 640x360.
"""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
from confluent_kafka.admin import AdminClient

from comux import Comux
from comux.media import synthetic_packets
from comux.publish import publish_forever


def _percentiles(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values) * 1000.0
    return {f"p{q}_ms": round(float(np.percentile(arr, q)), 3) for q in (50, 90, 99)} | {
        "max_ms": round(float(arr.max()), 3)
    }


def test_frame_to_batch_latency(kafka_broker, long_mode, results):
    cameras, seconds = (16, 20.0) if long_mode else (8, 6.0)
    width, height = 640, 360
    # No B-frames: a B-frame stream leaves the decoder in bursts, which would be the camera's
    # latency, not comux's.
    clip = list(synthetic_packets(width, height, 100, fps=25, gop=25, bframes=0))
    cam_ids = [f"lat-{uuid.uuid4().hex[:6]}-{i}" for i in range(cameras)]
    stop = threading.Event()
    publishers = publish_forever(clip, cam_ids, bootstrap_servers=kafka_broker.bootstrap, stop=stop)
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    deadline = time.monotonic() + 30
    while not all(f"raw.{c}" in admin.list_topics(timeout=5).topics for c in cam_ids):
        assert time.monotonic() < deadline, "the publishers never created their topics"
        stop.wait(0.1)
    added: list[float] = []
    oldest: list[float] = []
    in_batches = 0  # valid slots of every batch, warm-up included (the span stats() covers)
    try:
        with Comux(cam_ids, log_level="WARNING") as comux:
            comux.setup_consumers(
                kafka_broker.bootstrap, end=True, **{"group.id": f"lat-{uuid.uuid4().hex}"}
            )
            comux.setup_decoders(rate=None, W=width, H=height, max_wait=0.1)
            comux.start()
            warmup = time.monotonic() + 3.0
            end = warmup + seconds
            while time.monotonic() < end:
                batch = comux.get_batch(timeout=1, stacked=True)
                if batch is None:
                    continue
                with batch:
                    now = time.time()
                    in_batches += int(batch.valid.sum())
                    ages = now - batch.timestamps[batch.valid]
                    if time.monotonic() > warmup and ages.size:
                        added.append(float(ages.min()))
                        oldest.append(float(ages.max()))
            stats = comux.stats()
    finally:
        stop.set()
        for thread in publishers:
            thread.join(10)
    assert added, "no batch arrived"
    record = {
        "cameras": cameras,
        "size": f"{width}x{height}",
        "fps_per_camera": 25,
        "seconds": seconds,
        "batches": len(added),
        "added_latency": _percentiles(added),
        "oldest_frame_age": _percentiles(oldest),
        "frames_in_batches": in_batches,
        # frames converted into a slot (stats "delivered"); "replaced" ones never reached a batch
        "frames_decoded": sum(s.get("delivered", 0) for s in stats.values()),
        "replaced": sum(s.get("replaced", 0) for s in stats.values()),
    }
    results("latency").record(f"{cameras}x{width}x{height}", record)
    print(record)
