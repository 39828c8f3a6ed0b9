"""Error texts a user meets first: unknown cameras, steps out of order."""

from __future__ import annotations

import pytest

from comux import Comux, StateError, UnknownCameraError


def test_an_unknown_camera_lists_the_known_ones_when_few():
    cameras = Comux(["cam-a", "cam-b"])
    with pytest.raises(UnknownCameraError) as info:
        cameras.kill("cam-c")
    assert str(info.value) == "unknown cam_id 'cam-c' (known: 'cam-a', 'cam-b')"
    assert isinstance(info.value, KeyError) and info.value.cam_id == "cam-c"


def test_an_unknown_camera_counts_the_known_ones_when_many():
    cameras = Comux([f"cam-{i}" for i in range(11)])
    with pytest.raises(UnknownCameraError) as info:
        cameras.update("nope", rate=5)
    assert str(info.value) == "unknown cam_id 'nope' (11 cameras are known)"
    assert "cam-3" not in str(info.value)
    assert str(UnknownCameraError("x", [])) == "unknown cam_id 'x' (this instance has no cameras)"
    assert str(UnknownCameraError("x")) == "unknown cam_id 'x'"


def test_get_batch_before_start_says_the_same_as_with_no_setup():
    cameras = Comux(["a"])
    with pytest.raises(StateError) as bare:
        cameras.get_batch(timeout=0)
    cameras.setup_decoders(W=64, H=64)
    cameras.setup_consumers("127.0.0.1:1", strict_on_fail=False, connect_timeout=0.2)
    with pytest.raises(StateError) as set_up:
        cameras.get_batch(timeout=0)
    assert str(set_up.value) == str(bare.value)
    assert "start()" in str(bare.value)
    cameras.close(1)
    with pytest.raises(StateError, match="closed"):
        cameras.get_batch(timeout=0)


def test_send_without_a_producer_names_setup_producer():
    cameras = Comux(["a"])
    with pytest.raises(StateError, match=r"setup_producer\(\)"):
        cameras.send("a", 0, {})
