"""Decoding only what will be delivered, through the real broker: the right frames, intact."""

from __future__ import annotations

import time

import numpy as np
import pytest

from comux import Comux
from comux.media import synthetic_packets
from comux.publish import publish
from tests.fleet_helpers import Fleet, create_topics
from tests.groups import own_group
from tests.integration.test_end_to_end import direct_decode, unique

SECONDS, FPS = 8, 25


@pytest.mark.parametrize(("rate", "gop", "bframes"), [(1, 25, 0), (1, 50, 0), (5, 25, 2)])
def test_rate_delivers_due_frames_intact_and_skips_the_rest(kafka_broker, rate, gop, bframes):
    clip = list(synthetic_packets(320, 240, SECONDS * FPS, fps=FPS, gop=gop, bframes=bframes))
    cam = unique("skip-")
    publish(lambda: iter(clip), cam, bootstrap_servers=kafka_broker.bootstrap, rate="max")
    expected = direct_decode(clip)
    got: dict[int, np.ndarray] = {}
    with Comux([cam], log_level="WARNING") as cameras:
        cameras.setup_consumers(kafka_broker.bootstrap, end=False, **own_group())
        cameras.setup_decoders(rate=rate, W=320, H=240)  # end=False: fifo, every due frame
        cameras.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stats = cameras.stats()[cam]
            if stats["packets"] == len(clip) and stats["queued"] == 0 and got:
                batch = cameras.get_batch(timeout=1)  # whatever the last packets gave
            else:
                batch = cameras.get_batch(timeout=5)
            if batch is None:
                break
            got.update((index, frame) for _, index, frame in batch if frame is not None)
        stats = cameras.stats()[cam]
    times = [clip[i].pts / FPS for i in sorted(got, key=lambda i: clip[i].pts)]
    # Evenly spaced by the camera's clock: 1/rate apart, give or take one frame interval.
    assert len(times) == SECONDS * rate, times
    assert np.all(np.abs(np.diff(times) - 1 / rate) <= 1 / FPS + 1e-9), times
    if rate == 1 and gop == FPS:
        assert all(clip[i].keyframe for i in got)  # a delivery per GOP lands on its keyframe
    for index, frame in got.items():
        assert np.array_equal(frame, expected[index]), f"offset {index} differs from a decode"
    skipped = stats["skipped_to_keyframe"] + stats["skipped_not_due"]
    assert skipped > 0 and stats["decode_errors"] == stats["invalid_after_error"] == 0
    assert stats["frames"] + skipped <= len(clip)


def test_live_cameras_at_rate_1_get_fresh_intact_keyframes(kafka_broker):
    """Live, each delivery is a keyframe, fresh when it reaches its slot, and intact."""
    clip = list(synthetic_packets(320, 240, 30 * FPS, fps=FPS, gop=FPS, bframes=2))
    expected = direct_decode(clip)
    cams = [unique("live-skip-") for _ in range(2)]
    create_topics(kafka_broker.bootstrap, [f"raw.{c}" for c in cams])
    fleet = Fleet(kafka_broker.bootstrap)
    fleet.live(clip, cams)  # from the clip's first packet: offset = index in the clip
    seen: list[tuple[str, int, float, np.ndarray]] = []  # camera, offset, age in slot, pixels
    try:
        with Comux(cams, log_level="WARNING") as cameras:
            cameras.setup_consumers(kafka_broker.bootstrap, end=True, **own_group())
            cameras.setup_decoders(rate=1, W=320, H=240)
            cameras.start()
            deadline = time.monotonic() + 40
            while len(seen) < 2 * 8 and time.monotonic() < deadline:
                batch = cameras.get_batch(timeout=5, stacked=True)
                if batch is None:
                    continue
                with batch:
                    for slot, cam in enumerate(batch.cam_ids):
                        index = int(batch.indices[slot])
                        # The original packet is kept for send(): it has the produce time.
                        msg = cameras._cameras[cam].cache.get(index)
                        if batch.valid[slot] and msg is not None:
                            age = float(batch.timestamps[slot]) - msg.timestamp()[1] / 1000
                            seen.append((cam, index, age, batch.frames[slot].copy()))
            stats = cameras.stats()
    finally:
        fleet.close()
    assert len(seen) >= 2 * 8, stats
    for cam, index, age, pixels in seen:
        i = index % len(clip)
        assert clip[i].keyframe, f"{cam} offset {index} is not a keyframe"
        # A stale keyframe is a GOP (1 s) old; a fresh one is a few frames old, more on a busy
        # machine: half a GOP tells them apart.
        assert age < 0.5, f"{cam} offset {index}: {age:.3f} s old when it reached its slot"
        assert np.array_equal(pixels, expected[i]), f"{cam} offset {index} differs"
    for s in stats.values():
        assert s["skipped_to_keyframe"] >= 50  # most of each GOP, once the interval is learned
        assert s["decode_errors"] == s["invalid_after_error"] == 0
