"""Decoding only what will be delivered, through the real broker: the right frames, intact."""

from __future__ import annotations

import time

import numpy as np
import pytest

from comux import Comux
from comux.media import synthetic_packets
from comux.publish import publish
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
