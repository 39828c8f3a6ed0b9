from __future__ import annotations

import threading

import numpy as np
import pytest

from comux.batching import LatestFrames
from comux.errors import UnknownCameraError


def frame(v: int) -> np.ndarray:
    return np.full((2, 2, 3), v, np.uint8)


def test_batch_waits_for_every_camera_and_keeps_the_newest():
    frames = LatestFrames()
    for cam in ("a", "b"):
        frames.add(cam)
    frames.put("a", 1, frame(1))
    frames.put("a", 2, frame(2))
    done = threading.Event()
    result: list = []

    def take() -> None:
        result.append(frames.batch())
        done.set()

    t = threading.Thread(target=take)
    t.start()
    assert not done.wait(0.05)  # b has nothing yet
    frames.put("b", 7, None)
    t.join(5)
    batch = result[0]
    assert [(c, i) for c, i, _ in batch] == [("a", 2), ("b", 7)]
    assert batch[0][2][0, 0, 0] == 2 and batch[1][2] is None
    assert frames.replaced["a"] == 1


def test_timeout_returns_partial_batch_or_none():
    frames = LatestFrames()
    frames.add("a")
    frames.add("b")
    assert frames.batch(timeout=0.01) is None
    frames.put("b", 3, frame(3))
    batch = frames.batch(timeout=0.01)
    assert [(c, i) for c, i, _ in batch] == [("a", -1), ("b", 3)]
    assert batch[0][2] is None


def test_get_one_camera_and_unknown_camera():
    frames = LatestFrames()
    frames.add("a")
    assert frames.get("a", timeout=0.01) is None
    frames.put("a", 5, frame(5))
    assert frames.get("a", timeout=0.01)[1] == 5
    with pytest.raises(UnknownCameraError, match="'zz'"):
        frames.get("zz")


def test_removed_camera_leaves_the_next_batch_and_late_frames_are_dropped():
    frames = LatestFrames()
    frames.add("a")
    frames.add("b")
    frames.put("a", 1, frame(1))
    frames.remove("b")
    frames.put("b", 9, frame(9))
    assert [c for c, _, _ in frames.batch(timeout=0.01)] == ["a"]
