from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from comux.annexb import has_parameter_sets, is_keyframe, nal_types, parameter_sets
from comux.errors import ConfigError
from comux.media import (
    EncodedPacket,
    file_packets,
    pattern_frame,
    read_frame_number,
    synthetic_packets,
)

W, H = 160, 96


def decode(packets, codec: str = "h264") -> list[av.VideoFrame]:
    """Decode with a fresh decoder that knows nothing but the packets (no extradata)."""
    ctx = av.CodecContext.create(codec, "r")
    frames: list[av.VideoFrame] = []
    for packet in packets:
        frames += ctx.decode(av.Packet(packet.data))
    frames += ctx.decode(None)
    return frames


def starts_with_start_code(data: bytes) -> bool:
    return data.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01"))


def write_video(path: Path, frames: int = 30, gop: int = 10, codec: str = "libx264") -> None:
    """The test pattern encoded into a container of PyAV's choosing (by suffix)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        if codec == "libx264":
            stream.options = {
                "preset": "ultrafast",
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=2",
            }
        elif codec == "libx265":
            stream.options = {
                "preset": "ultrafast",
                "x265-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:log-level=error",
            }
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern_frame(W, H, i), format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def decode_file(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def assert_same_frames(got: list[av.VideoFrame], want: list[av.VideoFrame]) -> None:
    assert len(got) == len(want) > 0
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a.to_ndarray(), b.to_ndarray())


@pytest.fixture(scope="module")
def synthetic() -> list[EncodedPacket]:
    return list(synthetic_packets(W, H, 30, fps=25, gop=10, bframes=2))


# --- synthetic_packets ------------------------------------------------------------------


def test_synthetic_packets_decode_to_every_frame_in_order(synthetic):
    frames = decode(synthetic)
    assert len(frames) == 30
    assert {(f.width, f.height) for f in frames} == {(W, H)}
    assert [read_frame_number(f.to_ndarray(format="gray")) for f in frames] == list(range(30))
    assert [read_frame_number(f.to_ndarray(format="rgb24")) for f in frames[:3]] == [0, 1, 2]


def test_synthetic_packets_are_annexb_with_parameter_sets_before_every_keyframe(synthetic):
    first = synthetic[0]
    assert first.keyframe and first.pts == 0
    assert has_parameter_sets(first.data, "h264")
    keyframes = [p for p in synthetic if p.keyframe]
    assert [p.pts for p in keyframes] == [0, 10, 20]
    for packet in synthetic:
        assert starts_with_start_code(packet.data)
        assert packet.keyframe == is_keyframe(packet.data, "h264")
        if packet.keyframe:
            assert has_parameter_sets(packet.data, "h264")
        assert packet.codec == "h264" and (packet.width, packet.height) == (W, H)
        assert packet.time_base == Fraction(1, 25)


def test_a_decoder_can_join_at_a_later_keyframe(synthetic):
    second = [i for i, p in enumerate(synthetic) if p.keyframe][1]
    frames = decode(synthetic[second:])
    assert [read_frame_number(f.to_ndarray(format="gray")) for f in frames] == list(range(10, 30))


def test_bframes_give_decoder_delay_and_can_be_turned_off(synthetic):
    pts = [p.pts for p in synthetic]
    assert sorted(pts) == list(range(30))
    assert pts != sorted(pts)  # decode order differs from presentation order
    plain = [p.pts for p in synthetic_packets(W, H, 12, bframes=0)]
    assert plain == list(range(12))


def test_gop_none_encodes_as_libx264_does_by_default():
    """b-pyramid (a B-frame referenced by others) and keyframes at the scene cuts, which come
    at uneven intervals: the dynamic GOPs of a real encoder, not a fixed one."""
    packets = list(synthetic_packets(W, H, 300, gop=None, bframes=3, seed=7))
    keys = [i for i, p in enumerate(packets) if p.keyframe]
    gaps = {b - a for a, b in itertools.pairwise(keys)}
    assert len(keys) >= 3 and len(gaps) >= 2, keys
    pts = [p.pts for p in packets]
    assert sorted(pts) == list(range(300)) and pts != sorted(pts)
    # b-pyramid: a B-frame comes before the B-frames shown around it (e.g. pts 4, 2, 1, 3)
    assert any(a > b > c for a, b, c in zip(pts, pts[1:], pts[2:], strict=False))
    frames = decode(packets)
    assert [read_frame_number(f.to_ndarray(format="gray")) for f in frames] == list(range(300))


def test_synthetic_packets_are_deterministic_and_the_seed_matters(synthetic):
    again = list(synthetic_packets(W, H, 30, fps=25, gop=10, bframes=2))
    assert [p.data for p in again] == [p.data for p in synthetic]
    other = list(synthetic_packets(W, H, 5, gop=10, seed=1))
    assert other[0].data != synthetic[0].data


def test_pattern_differs_frame_to_frame():
    frames = [pattern_frame(W, H, i) for i in range(4)]
    assert frames[0].shape == (H * 3 // 2, W) and frames[0].dtype == np.uint8
    for a, b in itertools.pairwise(frames):
        # more than the frame-number bars change
        assert np.count_nonzero(a[H // 4 :] != b[H // 4 :]) > W * H // 4
    assert read_frame_number(frames[3][:H]) == 3
    assert read_frame_number(pattern_frame(640, 360, 54321)[:360]) == 54321


def test_headers():
    packet = EncodedPacket(b"\x00\x00\x00\x01\x65", 123, Fraction(1, 25), True, "h264", 640, 360)
    assert packet.headers() == [
        ("pts", b"123"),
        ("time_base", b"1/25"),
        ("keyframe", b"1"),
        ("codec", b"h264"),
        ("width", b"640"),
        ("height", b"360"),
    ]
    unknown = EncodedPacket(b"", None, Fraction(1, 90000), False, "hevc", 2, 2).headers()
    assert dict(unknown) == {
        "time_base": b"1/90000",
        "keyframe": b"0",
        "codec": b"hevc",
        "width": b"2",
        "height": b"2",
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"width": 15, "height": 96},
        {"width": 160, "height": 95},
        {"width": 160, "height": 96, "frames": -1},
        {"width": 160, "height": 96, "fps": 0},
        {"width": 160, "height": 96, "gop": 0},
        {"width": 160, "height": 96, "bframes": -1},
    ],
)
def test_synthetic_packets_reject_bad_arguments(kwargs):
    kwargs = {"frames": 1, **kwargs}
    with pytest.raises(ConfigError):
        synthetic_packets(**kwargs)


# --- file_packets -----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["mp4", "mkv"])
def test_container_files_give_annexb_that_decodes_like_the_file(tmp_path, suffix):
    path = tmp_path / f"video.{suffix}"
    write_video(path)
    with av.open(str(path)) as container:  # the container really stores avcC
        assert container.streams.video[0].codec_context.extradata[0] == 1
    packets = list(file_packets(path))
    assert len(packets) == 30
    for packet in packets:
        assert starts_with_start_code(packet.data)
        assert packet.keyframe == is_keyframe(packet.data, "h264")
        assert packet.codec == "h264" and (packet.width, packet.height) == (W, H)
        if packet.keyframe:
            assert has_parameter_sets(packet.data, "h264")
    assert sum(p.keyframe for p in packets) == 3
    assert packets[0].keyframe
    direct = decode_file(path)
    assert_same_frames(decode(packets), direct)
    # packet pts are the file's, in its time base
    assert sorted(p.pts for p in packets) == sorted(f.pts for f in direct)
    assert packets[0].time_base == direct[0].time_base
    # and a decoder joining at the second keyframe needs nothing else
    second = [i for i, p in enumerate(packets) if p.keyframe][1]
    assert_same_frames(decode(packets[second:]), direct[10:])


def test_raw_h264_round_trip(tmp_path, synthetic):
    path = tmp_path / "video.h264"
    path.write_bytes(b"".join(p.data for p in synthetic))
    packets = list(file_packets(path))
    assert b"".join(p.data for p in packets) == path.read_bytes()
    assert [p.keyframe for p in packets] == [p.keyframe for p in synthetic]
    assert all(p.pts is None for p in packets)  # a raw stream has no timestamps
    assert_same_frames(decode(packets), decode(synthetic))


def test_raw_stream_with_parameter_sets_only_at_the_start_gets_them_repeated(tmp_path, synthetic):
    stripped = [synthetic[0].data]
    for packet in synthetic[1:]:
        data = packet.data
        if packet.keyframe:  # drop the SPS/PPS the encoder repeated
            data = data.replace(parameter_sets(data, "h264"), b"")
            assert nal_types(data, "h264")[-1] == 5 and not has_parameter_sets(data, "h264")
        stripped.append(data)
    path = tmp_path / "once.h264"
    path.write_bytes(b"".join(stripped))
    packets = list(file_packets(path))
    keyframes = [i for i, p in enumerate(packets) if p.keyframe]
    assert len(keyframes) == 3
    assert all(has_parameter_sets(packets[i].data, "h264") for i in keyframes)
    frames = decode(packets[keyframes[2] :])
    assert [read_frame_number(f.to_ndarray(format="gray")) for f in frames] == list(range(20, 30))


def test_hevc_mp4_gives_annexb_with_vps_sps_pps(tmp_path):
    try:
        av.codec.Codec("libx265", "w")
    except Exception:
        pytest.skip("FFmpeg has no libx265 encoder")
    path = tmp_path / "video.mp4"
    write_video(path, frames=12, gop=6, codec="libx265")
    packets = list(file_packets(path))
    assert {p.codec for p in packets} == {"hevc"}
    keyframes = [p for p in packets if p.keyframe]
    assert len(keyframes) >= 2
    for packet in packets:
        assert starts_with_start_code(packet.data)
        assert packet.keyframe == is_keyframe(packet.data, "hevc")
    assert all(has_parameter_sets(p.data, "hevc") for p in keyframes)
    assert_same_frames(decode(packets, "hevc"), decode_file(path))


def test_audio_only_file_is_a_config_error(tmp_path):
    path = tmp_path / "audio.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate, frame.pts = 8000, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    with pytest.raises(ConfigError, match="no video stream"):
        file_packets(path)


def test_text_file_is_a_config_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a video\n" * 10)
    with pytest.raises(ConfigError):
        file_packets(path)


def test_unsupported_video_codec_is_a_config_error(tmp_path):
    path = tmp_path / "video.avi"
    write_video(path, frames=2, codec="mpeg4")
    with pytest.raises(ConfigError, match="mpeg4"):
        file_packets(path)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        file_packets(tmp_path / "nope.mp4")
