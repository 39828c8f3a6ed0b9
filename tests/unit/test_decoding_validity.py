"""Which frames a camera's decoder hands on as valid, which it rates out, and the clock it uses.

Keyframes are read from the bitstream (the ``keyframe`` header is only a hint), a failure makes
every frame up to the next keyframe invalid, and the rate cap runs on the camera's pts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from typing import cast

import av
import numpy as np
import pytest

from comux.annexb import is_keyframe
from comux.decoding import CameraDecoder, DecoderConfig, Message
from comux.media import EncodedPacket, pattern_frame, read_frame_number, synthetic_packets
from tests.fakes import FakeMessage, messages

FPS = 25
GOP = 25


@dataclass
class Item:
    offset: int
    pts: int | None
    image: np.ndarray | None


class Sink:
    """Every delivery, in order: (offset, pts, rgb24 array or None)."""

    def __init__(self) -> None:
        self.items: list[Item] = []

    def __call__(self, offset: int, frame: av.VideoFrame | None, msg: Message) -> None:
        assert msg.offset() == offset
        if frame is None:
            self.items.append(Item(offset, None, None))
        else:
            self.items.append(Item(offset, frame.pts, frame.to_ndarray(format="rgb24")))

    def valid(self, start: int = 0) -> list[Item]:
        return [item for item in self.items[start:] if item.image is not None]


def decoder(rate: float | None = None, clock: float | None = None) -> tuple[CameraDecoder, Sink]:
    """A 320x240 decoder; ``clock`` fixes its wall clock so only pts can drive the rate."""
    sink = Sink()
    config = DecoderConfig(rate=rate, width=320, height=240)
    if clock is None:
        return CameraDecoder("cam", config, sink), sink
    return CameraDecoder("cam", config, sink, clock=lambda: clock), sink


def with_header(msg: FakeMessage, name: str, value: bytes) -> FakeMessage:
    headers = [(n, v) for n, v in msg.headers() or [] if n != name] + [(name, value)]
    return FakeMessage(msg.value(), msg.offset(), _headers=headers)


def clean_decode(packets: list[EncodedPacket]) -> dict[int, np.ndarray]:
    """Frames of a plain PyAV decode of the intact stream, by the offset of their packet."""
    ctx = av.CodecContext.create("h264", "r")
    ctx.copy_opaque = True
    out: dict[int, np.ndarray] = {}
    for offset, p in enumerate(packets):
        packet = av.Packet(p.data)
        packet.opaque = offset
        for frame in ctx.decode(packet):
            out[cast(int, frame.opaque)] = frame.to_ndarray(format="rgb24")
    return out


def keyframes(packets: list[EncodedPacket]) -> list[int]:
    return [i for i, p in enumerate(packets) if p.keyframe]


@pytest.fixture(scope="module")
def video() -> list[EncodedPacket]:
    """4 s of 25 fps 320x240 with 2 B-frames and a keyframe every second."""
    return list(synthetic_packets(320, 240, 100, fps=FPS, gop=GOP, bframes=2))


@pytest.fixture(scope="module")
def video_no_b() -> list[EncodedPacket]:
    return list(synthetic_packets(320, 240, 100, fps=FPS, gop=GOP, bframes=0))


# -- validity after a failure --------------------------------------------------------------------


def test_truncated_keyframe_invalidates_its_gop_and_the_next_gop_matches_a_clean_decode(video):
    keys = keyframes(video)
    assert keys == [0, 25, 50, 75]
    k, after = keys[1], keys[2]
    msgs = messages(video)
    msgs[k] = FakeMessage(video[k].data[: len(video[k].data) // 2], k, _headers=video[k].headers())
    dec, sink = decoder()
    for msg in msgs:
        dec.decode(msg)
    assert dec.stats.decode_errors >= 1
    assert dec.stats.invalid_after_error >= 1
    valid = {item.offset: item.image for item in sink.valid()}
    assert not [offset for offset in valid if k <= offset < after]
    # Packets the decoder had taken get their slot as None; the rest of the GOP is skipped.
    invalid = {item.offset for item in sink.items if item.image is None}
    assert k in invalid
    assert dec.stats.skipped_before_keyframe == after - 1 - max(invalid)
    clean = clean_decode(video)
    expected = [offset for offset in clean if offset < k or offset >= after]
    assert sorted(valid) == sorted(expected)
    for offset in expected:
        diff = np.abs(valid[offset].astype(np.int16) - clean[offset].astype(np.int16))
        assert diff.max() <= 1, f"offset {offset} differs from a clean decode"


def test_garbage_then_p_frames_claiming_keyframe_give_nothing_valid_until_the_next_idr(
    video, caplog
):
    keys = keyframes(video)
    broken, next_idr = keys[1] + 1, keys[2]
    msgs = messages(video)
    msgs[broken] = FakeMessage(b"garbage" * 50, broken, _headers=[("keyframe", b"0")])
    for i in range(broken + 1, next_idr):
        msgs[i] = with_header(msgs[i], "keyframe", b"1")  # P- and B-frames that lie
    dec, sink = decoder()
    caplog.set_level(logging.WARNING, logger="comux.decoding")
    mark = 0
    for msg in msgs:
        dec.decode(msg)
        if msg.offset() == broken:
            mark = len(sink.items)
    after_error = sink.valid(mark)
    assert after_error, "nothing decoded after the next IDR"
    assert min(item.offset for item in after_error) == next_idr
    assert dec.stats.skipped_before_keyframe == next_idr - broken - 1
    assert dec.stats.keyframe_mismatch == next_idr - broken - 1
    # The IDR before the garbage was still in the decoder (B-frame delay): handed on as None.
    assert dec.stats.invalid_after_error >= 1
    assert (keys[1], None) in [(item.offset, item.image) for item in sink.items]
    mismatch_logs = [r for r in caplog.records if "keyframe header" in r.getMessage()]
    assert len(mismatch_logs) == 1


@pytest.mark.parametrize("hint", [b"maybe", b"0", b"", b"\xff\xfe"])
def test_real_keyframe_with_a_wrong_or_malformed_header_starts_decoding_at_once(video, hint):
    keys = keyframes(video)
    msgs = messages(video)[keys[1] :]
    msgs[0] = with_header(msgs[0], "keyframe", hint)
    dec, sink = decoder()
    for msg in msgs:
        dec.decode(msg)
    assert dec.stats.skipped_before_keyframe == 0
    assert dec.stats.keyframe_mismatch == 1
    assert sink.items[0].offset == keys[1] and sink.items[0].image is not None
    assert read_frame_number(sink.items[0].image) == video[keys[1]].pts


def test_after_an_error_a_keyframe_with_header_maybe_restarts_decoding(video):
    keys = keyframes(video)
    msgs = messages(video)
    msgs[keys[1] + 1] = FakeMessage(b"", keys[1] + 1, _headers=[("keyframe", b"0")])
    msgs[keys[2]] = with_header(msgs[keys[2]], "keyframe", b"maybe")
    dec, sink = decoder()
    for msg in msgs:
        dec.decode(msg)
    assert dec.stats.empty_packets == 1
    assert dec.stats.keyframe_mismatch == 1
    assert dec.stats.skipped_before_keyframe == keys[2] - keys[1] - 2
    resumed = [item.offset for item in sink.valid() if item.offset > keys[1]]
    assert resumed and min(resumed) == keys[2]


def test_mismatching_headers_are_counted_per_packet_and_logged_once(video, caplog):
    msgs = [with_header(m, "keyframe", b"0") for m in messages(video)]
    dec, sink = decoder()
    caplog.set_level(logging.WARNING, logger="comux.decoding")
    for msg in msgs:
        dec.decode(msg)
    assert dec.stats.keyframe_mismatch == len(keyframes(video))
    assert dec.stats.decode_errors == 0 and dec.stats.skipped_before_keyframe == 0
    assert len(sink.valid()) == len(clean_decode(video))
    assert len([r for r in caplog.records if "keyframe header" in r.getMessage()]) == 1


def test_new_counters_and_frame_interval_are_exposed(video):
    dec, _ = decoder()
    assert dec.frame_interval is None and dec.gop == 0
    counters = dec.stats.as_dict()
    assert counters["keyframe_mismatch"] == counters["invalid_after_error"] == 0
    assert "started" not in counters


# -- a camera that changes resolution -------------------------------------------------------------


def test_resolution_change_mid_stream_keeps_decoding_at_the_output_size():
    small = list(synthetic_packets(320, 240, 50, fps=FPS, gop=GOP, bframes=2))
    large = list(synthetic_packets(640, 480, 50, fps=FPS, gop=GOP, bframes=2, seed=1))
    dec, sink = decoder()
    for msg in messages(small) + messages(large, first=len(small)):
        dec.decode(msg)
    assert all(item.image is None or item.image.shape == (240, 320, 3) for item in sink.items)
    second = [item for item in sink.valid() if item.offset >= len(small)]
    assert len(second) >= len(large) - 2  # the last two stay in the decoder (B-frame delay)
    for item in second:
        assert read_frame_number(item.image) == large[item.offset - len(small)].pts
    assert dec.stats.decode_errors == 0


# -- the rate, on the camera's clock --------------------------------------------------------------


def delivered_seconds(sink: Sink, time_base: float = 1 / FPS) -> np.ndarray:
    pts = [item.pts for item in sink.valid()]
    assert None not in pts
    return np.array(pts, dtype=np.float64) * time_base


@pytest.mark.parametrize("bframes", [2, 0])
def test_rate_follows_pts_evenly_spaced(video, video_no_b, bframes):
    packets = video if bframes else video_no_b
    # The wall clock stands still, as when a backlog is decoded at full speed: only pts counts.
    dec, sink = decoder(rate=10, clock=0.0)
    for msg in messages(packets):
        dec.decode(msg)
    t = delivered_seconds(sink)
    gaps = np.diff(t)
    assert np.all(np.isclose(gaps, 0.08) | np.isclose(gaps, 0.12)), gaps
    assert 9.5 <= (len(t) - 1) / (t[-1] - t[0]) <= 10.5
    for second in range(int(t[-1])):
        assert 9 <= np.count_nonzero((t >= second) & (t < second + 1)) <= 11
    assert dec.stats.rate_limited == dec.stats.frames - dec.stats.delivered > 0


@pytest.mark.parametrize(("rate", "gaps"), [(10, (0.08, 0.12)), (12.5, (0.08,)), (25, (0.04,))])
def test_rate_tolerates_pts_jitter(video, rate, gaps):
    # 90 kHz pts, each frame up to 3 ms early or late: no due frame may be skipped for it.
    rng = np.random.default_rng(0)
    jitter = rng.uniform(-0.003, 0.003, len(video))
    msgs = []
    for msg, packet in zip(messages(video), video, strict=True):
        assert packet.pts is not None
        pts = round((packet.pts / FPS + jitter[packet.pts]) * 90000)
        msg = with_header(msg, "pts", str(pts).encode())
        msgs.append(with_header(msg, "time_base", b"1/90000"))
    dec, sink = decoder(rate=rate, clock=0.0)
    for msg in msgs:
        dec.decode(msg)
    t = delivered_seconds(sink, 1 / 90000)
    near = [np.isclose(np.diff(t), gap, atol=0.0065) for gap in gaps]
    assert np.all(np.logical_or.reduce(near)), np.diff(t)
    assert abs((len(t) - 1) / (t[-1] - t[0]) - rate) <= 0.5
    assert dec.frame_interval == pytest.approx(0.04, abs=0.003)


def test_rate_restarts_when_the_camera_restarts_or_after_a_gap(video):
    # The same 4 s twice: pts jump back 4 s (a restarted camera), then 10 s ahead (a gap).
    first = messages(video)
    restarted = messages(video, first=len(video))
    later = [
        with_header(m, "pts", str(int(dict(m.headers() or [])["pts"]) + 10 * FPS).encode())
        for m in messages(video, first=2 * len(video))
    ]
    dec, sink = decoder(rate=10, clock=0.0)
    counts = []
    for part in (first, restarted, later):
        before = len(sink.valid())
        for msg in part:
            dec.decode(msg)
        counts.append(len(sink.valid()) - before)
    assert counts[0] >= 38
    assert counts[1] >= counts[0] - 2 and counts[2] >= counts[0] - 2
    assert dec.frame_interval == pytest.approx(0.04)


def test_without_pts_the_rate_and_interval_come_from_the_clock(video):
    now = [0.0]
    sink = Sink()
    config = DecoderConfig(rate=10, width=320, height=240)
    dec = CameraDecoder("cam", config, sink, clock=lambda: now[0])
    for msg in messages(video, headers=False):
        dec.decode(msg)
        now[0] += 0.04
    # 98 frames come out (2 stay in the decoder), arriving over 3.92 s of the clock.
    assert dec.stats.frames == 98
    assert 39 <= dec.stats.delivered <= 41
    assert dec.frame_interval == pytest.approx(0.04)


def test_time_base_is_remembered_for_messages_without_it(video):
    msgs = messages(video)
    msgs[1:] = [
        FakeMessage(m.value(), m.offset(), _headers=[h for h in m.headers() or [] if h[0] == "pts"])
        for m in msgs[1:]
    ]
    dec, _sink = decoder(rate=10, clock=0.0)
    for msg in msgs:
        dec.decode(msg)
    assert 38 <= dec.stats.delivered <= 41
    assert dec.frame_interval == pytest.approx(0.04)


# -- HEVC -----------------------------------------------------------------------------------------


def hevc_packets(frames: int, gop: int) -> list[tuple[bytes, int | None]]:
    """The test pattern through libx265: (Annex-B packet, pts) in decode order."""
    ctx = av.CodecContext.create("libx265", "w")
    ctx.width, ctx.height, ctx.pix_fmt = 320, 240, "yuv420p"
    ctx.time_base = Fraction(1, FPS)
    ctx.framerate = Fraction(FPS)
    ctx.options = {
        "preset": "ultrafast",
        "x265-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:repeat-headers=1:bframes=2"
        ":log-level=error",
    }
    out = []
    for index in range(frames):
        frame = av.VideoFrame.from_ndarray(pattern_frame(320, 240, index), format="yuv420p")
        frame.pts = index
        out += [(bytes(p), p.pts) for p in ctx.encode(frame)]
    return out + [(bytes(p), p.pts) for p in ctx.encode(None)]


@pytest.mark.skipif("libx265" not in av.codecs_available, reason="PyAV built without libx265")
def test_hevc_keyframes_come_from_the_bitstream():
    packets = hevc_packets(50, 10)
    keys = [i for i, (data, _) in enumerate(packets) if is_keyframe(data, "hevc")]
    assert keys == [0, 10, 20, 30, 40]
    broken = keys[2] + 1
    msgs = [
        FakeMessage(
            data if i != broken else b"garbage" * 40,
            i,
            _headers=[("pts", str(pts).encode()), ("time_base", b"1/25"), ("keyframe", b"1")],
        )
        for i, (data, pts) in enumerate(packets)
    ][keys[1] - 3 :]
    sink = Sink()
    dec = CameraDecoder("cam", DecoderConfig(rate=None, width=320, height=240, codec="hevc"), sink)
    mark = 0
    for msg in msgs:
        dec.decode(msg)
        if msg.offset() == broken:
            mark = len(sink.items)
    assert dec.stats.skipped_before_keyframe == 3 + keys[3] - broken - 1
    assert sink.items[0].offset == keys[1]
    assert min(item.offset for item in sink.valid(mark)) == keys[3]
    for item in sink.valid():
        assert item.image is not None
        assert read_frame_number(item.image) == packets[item.offset][1]
    assert dec.gop == 10


@pytest.mark.parametrize(
    "headers",
    [
        [("pts", b"1" * 30), ("time_base", b"1/25")],
        [("pts", b"-9223372036854775808"), ("time_base", b"1/25")],
        [("pts", b"x"), ("time_base", b"1/0"), ("keyframe", None)],
        [("pts", None), ("time_base", b"-1/25"), ("keyframe", b"\xff" * 1000)],
        [("pts", b"0"), ("time_base", b"nan"), ("time_base", b"\xff")],
    ],
)
def test_malformed_headers_never_raise_and_the_bitstream_still_decides(video, headers):
    dec, sink = decoder(rate=10)
    for msg in messages(video[:30]):
        dec.decode(FakeMessage(msg.value(), msg.offset(), _headers=headers))
    assert dec.stats.skipped_before_keyframe == 0
    assert sink.valid() and dec.stats.decode_errors == 0


def test_flush_hands_out_the_frames_held_for_b_frames_then_waits_for_a_keyframe():
    clip = list(synthetic_packets(320, 240, 3 * GOP, fps=FPS, gop=GOP, bframes=2))
    msgs = messages(clip)
    dec, sink = decoder()
    for msg in msgs[:GOP]:
        dec.decode(msg)
    assert dec.holds_frames and len(sink.valid()) < GOP
    dec.flush()
    assert not dec.holds_frames
    assert sorted(item.offset for item in sink.valid()) == list(range(GOP))
    before = len(sink.items)
    for msg in msgs[GOP + 1 : 2 * GOP]:  # its references went with the flush
        dec.decode(msg)
    assert len(sink.items) == before and dec.stats.skipped_before_keyframe == GOP - 1
    for msg in msgs[2 * GOP :]:
        dec.decode(msg)
    dec.flush()
    assert sorted(item.offset for item in sink.valid(before)) == list(range(2 * GOP, 3 * GOP))
    assert dec.stats.invalid_after_error == 0 and dec.stats.decode_errors == 0
