"""`comux publish` puts a real video file into Kafka the way a camera gateway would."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from fractions import Fraction

import av
import numpy as np
from confluent_kafka import Consumer

from comux import Comux
from comux.annexb import is_disposable, is_keyframe
from comux.media import pattern_frame
from tests.groups import own_group


def write_mp4(path, frames: int = 40) -> list[np.ndarray]:
    """Encode an MP4 (length-prefixed H.264, SPS/PPS out of band) and return its decoded frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {"x264-params": "keyint=10:min-keyint=10:scenecut=0:bframes=2"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern_frame(320, 240, i), format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_publish_mp4_then_consume_and_decode(kafka_broker, tmp_path):
    expected = write_mp4(tmp_path / "clip.mp4")
    cam = f"mp4-{uuid.uuid4().hex[:8]}"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "comux",
            "publish",
            str(tmp_path / "clip.mp4"),
            "--cam-id",
            cam,
            "--bootstrap-servers",
            kafka_broker.bootstrap,
            "--rate",
            "max",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "40 packets" in result.stdout

    with Comux([cam], log_level="WARNING") as cameras:
        cameras.setup_consumers(
            kafka_broker.bootstrap, end=False, max_offset_diff=None, **own_group()
        )
        cameras.setup_decoders(rate=None, W=320, H=240, policy="fifo")
        cameras.start()
        got = []
        deadline = time.monotonic() + 60
        # The last frames, held back for B-frames, come out once the topic has ended.
        while len(got) < len(expected) and time.monotonic() < deadline:
            with cameras.get_batch(timeout=5, stacked=True) as batch:
                assert batch.valid.all(), cameras.stats()
                got.append(batch.frames[0].copy())
        assert cameras.stats()[cam]["decode_errors"] == 0
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected, strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_publish_synthetic_with_the_cameras_gop_and_b_frames(kafka_broker):
    cam = f"syn-{uuid.uuid4().hex[:8]}"
    args = ["--frames", "30", "--gop", "10", "--bframes", "0", "--rate", "max"]
    result = subprocess.run(
        [sys.executable, "-m", "comux", "publish", "--synthetic", "160x120", "--cam-id", cam]
        + args
        + ["--bootstrap-servers", kafka_broker.bootstrap, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_broker.bootstrap,
            "auto.offset.reset": "earliest",
            **own_group(),
        }
    )
    consumer.subscribe([f"raw.{cam}"])
    packets: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(packets) < 30 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            packets.append(msg.value())
    consumer.close()
    assert [i for i, p in enumerate(packets) if is_keyframe(p)] == [0, 10, 20]
    assert not any(is_disposable(p) for p in packets)  # no B-frames
