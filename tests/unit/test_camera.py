"""A camera's place in the batches: taken when it joins (on assignment), given up when it leaves."""

from __future__ import annotations

from comux.batching import BatchPool
from comux.camera import Camera
from comux.decoding import DecoderConfig


def test_a_camera_takes_a_slot_only_once_it_joins_and_its_counters_run_on():
    pool = BatchPool((4, 6, 3))
    camera = Camera(
        "a",
        "raw.a",
        DecoderConfig(rate=None, width=6, height=4),
        pool,
        policy="latest",
        depth=8,
        max_bytes=1 << 20,
    )
    assert "a" not in pool and camera.rows.slot == -1  # its partition is not assigned yet
    camera.join_batches()
    assert "a" in pool and camera.rows.slot == 0
    camera.rows.in_batches, camera.rows.replaced, camera.rows.stalls = 5, 2, 1
    camera.leave_batches()  # paused, or revoked
    assert "a" not in pool
    camera.join_batches()
    stats = camera.stats()
    assert (stats["in_batches"], stats["replaced"], stats["stalls"]) == (5, 2, 1)
