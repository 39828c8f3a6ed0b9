"""`comux publish` puts a real video file into Kafka the way a camera gateway would."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from fractions import Fraction

import av
import numpy as np

from comux import Comux
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
        # A live decoder holds the last B-frame-delayed frames back: all but those arrive.
        while len(got) < len(expected) - 2 and time.monotonic() < deadline:
            with cameras.get_batch(timeout=5, stacked=True) as batch:
                assert batch.valid.all(), cameras.stats()
                got.append(batch.frames[0].copy())
        assert cameras.stats()[cam]["decode_errors"] == 0
    assert len(got) == len(expected) - 2
    for mine, theirs in zip(got, expected, strict=False):
        np.testing.assert_array_equal(mine, theirs)
