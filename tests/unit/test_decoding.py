from __future__ import annotations

import av
import numpy as np
import pytest

from comux.decoding import CameraDecoder, DecoderConfig
from comux.errors import ConfigError
from comux.media import read_frame_number
from tests.fakes import FakeMessage, messages


class Sink:
    def __init__(self) -> None:
        self.items: list[tuple[int, np.ndarray | None]] = []

    def __call__(self, index: int, frame: av.VideoFrame | None, msg: FakeMessage) -> None:
        assert msg.offset() == index
        self.items.append((index, None if frame is None else frame.to_ndarray(format="rgb24")))


def decoder(**kw: object) -> tuple[CameraDecoder, Sink]:
    """A decoder of 320x240 frames with no rate cap, and the list its frames land in."""
    sink = Sink()
    config = DecoderConfig(**{"rate": None, "width": 320, "height": 240, **kw})  # type: ignore[arg-type]
    return CameraDecoder("cam", config, sink), sink


def direct_decode(packets) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    ctx = av.CodecContext.create("h264", "r")
    out = []
    for p in packets:
        out += [f.to_ndarray(format="rgb24") for f in ctx.decode(av.Packet(p.data))]
    return out


def test_index_is_the_offset_of_the_packet_that_carried_the_frame(small_video):
    dec, sink = decoder()
    for msg in messages(small_video, first=100):
        dec.decode(msg)
    # B-frames: output order differs from packet order, and the last frames stay in the decoder.
    indices = [i for i, _ in sink.items]
    assert indices != sorted(indices)
    for index, array in sink.items:
        assert array is not None
        frame_number = read_frame_number(array)
        assert small_video[index - 100].pts == frame_number


def test_pixels_equal_a_direct_pyav_decode(small_video):
    dec, sink = decoder()
    for msg in messages(small_video):
        dec.decode(msg)
    expected = direct_decode(small_video)
    assert len(sink.items) == len(expected) > 50
    for (_, got), want in zip(sink.items, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_other_sizes_are_scaled_to_the_output_size(small_video):
    dec, sink = decoder(width=160, height=120)
    for msg in messages(small_video[:12]):
        dec.decode(msg)
    assert sink.items and all(a.shape == (120, 160, 3) for _, a in sink.items)


def test_mid_stream_join_skips_until_keyframe(small_video):
    dec, sink = decoder()
    msgs = messages(small_video)
    keys = [i for i, p in enumerate(small_video) if p.keyframe]
    join = keys[1] - 3
    for msg in msgs[join:]:
        dec.decode(msg)
    assert dec.stats.skipped_before_keyframe == 3
    assert dec.stats.decode_errors == 0
    assert min(i for i, _ in sink.items) >= keys[1]


def test_keyframe_found_without_headers(small_video):
    dec, sink = decoder()
    msgs = messages(small_video, headers=False)
    keys = [i for i, p in enumerate(small_video) if p.keyframe]
    for msg in msgs[keys[1] - 2 :]:
        dec.decode(msg)
    assert dec.stats.skipped_before_keyframe == 2
    assert sink.items


@pytest.mark.parametrize("bad", [b"", None, b"\x00\x00\x00\x01" + bytes(200), b"garbage" * 50])
def test_bad_packet_gives_none_counts_and_recovers_at_next_keyframe(small_video, bad):
    dec, sink = decoder()
    msgs = messages(small_video)
    keys = [i for i, p in enumerate(small_video) if p.keyframe]
    broken = keys[1] + 1
    msgs[broken] = FakeMessage(bad, broken, _headers=[("keyframe", b"0")])
    for msg in msgs:
        dec.decode(msg)
    assert dec.stats.decode_errors >= 1
    assert (broken, None) in [(i, a) for i, a in sink.items if a is None]
    # After the error the decoder waits for the next keyframe and decodes again from there.
    after = [i for i, a in sink.items if a is not None and i >= keys[2]]
    assert after, "no frame decoded after the next keyframe"
    assert dec.stats.skipped_before_keyframe >= keys[2] - broken - 1


def test_truncated_keyframe_is_an_error_not_a_silent_frame(small_video):
    dec, sink = decoder()
    msgs = messages(small_video)
    keys = [i for i, p in enumerate(small_video) if p.keyframe]
    k = keys[2]
    msgs[k] = FakeMessage(
        small_video[k].data[: len(small_video[k].data) // 3], k, _headers=small_video[k].headers()
    )
    for msg in msgs:
        dec.decode(msg)
    assert dec.stats.decode_errors >= 1
    assert any(a is None for _, a in sink.items)


def test_rate_caps_delivered_frames(small_video):
    sink = Sink()
    now = [0.0]
    config = DecoderConfig(rate=5, width=320, height=240)
    dec = CameraDecoder("cam", config, sink, clock=lambda: now[0])
    for msg in messages(small_video):
        dec.decode(msg)
        now[0] += 0.04  # a 25 fps camera
    # Frames nothing due needed were never decoded; the 58 that come out of a full decode
    # are each decoded or skipped.
    skipped = dec.stats.skipped_not_due + dec.stats.skipped_to_keyframe
    assert skipped > 0 and dec.stats.frames + skipped == 58
    # 58 frames at 25 fps last 2.32 s: a 5 fps cap delivers one frame every 0.2 s of that.
    assert len(sink.items) == 12
    assert dec.stats.rate_limited == dec.stats.frames - len(sink.items)


def test_skip_below_drops_and_counts_then_waits_for_keyframe(small_video):
    dec, sink = decoder()
    msgs = messages(small_video)
    for msg in msgs[:5]:
        dec.decode(msg)
    dec.skip_below = 25
    for msg in msgs[5:]:
        dec.decode(msg)
    assert dec.stats.lag_dropped == 20
    keys = [i for i, p in enumerate(small_video) if p.keyframe and i >= 25]
    assert dec.stats.skipped_before_keyframe == keys[0] - 25
    assert all(i < 5 or i >= keys[0] for i, _ in sink.items)


def test_frames_done_before_the_commit_are_decoded_for_their_references_only(small_video):
    # A resume from the keyframe at 20 whose commit says frames up to 24 were done already.
    dec, sink = decoder()
    dec.done_below = 25
    for msg in messages(small_video)[20:]:
        dec.decode(msg)
    dec.flush()
    assert sorted(i for i, _ in sink.items) == list(range(25, 60))
    assert dec.stats.already_done == 5
    for index, array in sink.items:  # the P- and B-frames after 25 decode against 20..24
        assert array is not None and read_frame_number(array) == small_video[index].pts


@pytest.mark.parametrize(
    "kw",
    [{"rate": 0}, {"width": 321}, {"height": -2}, {"codec": "vp9"}, {"pix_fmt": "rgba"}],
)
def test_bad_decoder_settings_raise_config_error(kw):
    with pytest.raises(ConfigError):
        DecoderConfig(**kw)  # type: ignore[arg-type]


def test_frames_carry_the_pts_of_their_own_packet(small_video):
    seen = []
    dec = CameraDecoder(
        "cam",
        DecoderConfig(rate=None, width=320, height=240),
        lambda index, frame, msg: seen.append((index, frame.pts)),
    )
    for msg in messages(small_video):
        dec.decode(msg)
    assert seen and all(pts == small_video[index].pts for index, pts in seen)


def test_de_codec_takes_every_spelling_the_bitstream_helpers_take():
    from comux.annexb import CODECS, normalize_codec

    for name in [*CODECS, "AVC1", "H.264", "h-265"]:
        assert DecoderConfig(codec=name).codec == name
        assert normalize_codec(name) in ("h264", "hevc")


@pytest.mark.parametrize("pix_fmt", ["rgb24", "bgr24", "gray", "yuv420p"])
def test_the_frame_shape_is_the_one_the_compiled_kernels_check(pix_fmt):
    convert = pytest.importorskip("comux._ext.convert")
    config = DecoderConfig(width=640, height=360, pix_fmt=pix_fmt)
    assert config.shape == convert.out_shape(640, 360, pix_fmt)
