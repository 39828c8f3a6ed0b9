"""Decode only what will be delivered: under ``rate`` a camera's decoder leaves out packets
whose frames (and every frame that refers to them) will not be due, and never hands out a
frame that differs from a full decode."""

from __future__ import annotations

import numpy as np
import pytest

from comux.annexb import is_disposable
from comux.media import EncodedPacket, synthetic_packets
from tests.fakes import messages
from tests.unit.test_decoding_validity import FPS, clean_decode, decoder


def fed(dec) -> int:
    """Packets that reached the codec."""
    s = dec.stats
    return s.packets - s.skipped_not_due - s.skipped_to_keyframe - s.skipped_before_keyframe


def run(packets: list[EncodedPacket], rate: float | None):
    dec, sink = decoder(rate=rate, clock=0.0)  # a frozen wall clock: only pts can drive it
    for msg in messages(packets):
        dec.decode(msg)
    dec.flush()
    return dec, sink


def check_intact(packets: list[EncodedPacket], sink) -> None:
    clean = clean_decode(packets)
    for item in sink.valid():
        assert np.array_equal(item.image, clean[item.offset]), f"offset {item.offset} differs"


def delivered_times(packets: list[EncodedPacket], sink) -> list[float]:
    return sorted(float(packets[item.offset].pts * packets[0].time_base) for item in sink.valid())


@pytest.fixture(scope="module")
def gop25() -> list[EncodedPacket]:
    """10 s at 25 fps, a keyframe every second, no B-frames."""
    return list(synthetic_packets(320, 240, 250, fps=FPS, gop=25, bframes=0))


@pytest.fixture(scope="module")
def gop50() -> list[EncodedPacket]:
    return list(synthetic_packets(320, 240, 250, fps=FPS, gop=50, bframes=0))


@pytest.fixture(scope="module")
def bframes() -> list[EncodedPacket]:
    return list(synthetic_packets(320, 240, 250, fps=FPS, gop=25, bframes=2))


def test_rate_1_on_a_one_second_gop_decodes_keyframes_only(gop25):
    dec, sink = run(gop25, rate=1)
    times = delivered_times(gop25, sink)
    assert len(times) == 10 and all(round(t, 6) == float(i) for i, t in enumerate(times))
    check_intact(gop25, sink)
    # Keyframes and the packets before the interval is learned; nothing else.
    assert fed(dec) <= 10 + 2 * 25 + 1
    assert dec.stats.skipped_to_keyframe >= 250 - fed(dec) - 1
    assert dec.stats.decode_errors == dec.stats.invalid_after_error == 0


def test_rate_1_on_a_two_second_gop_decodes_the_chain_to_the_due_frame_only(gop50):
    dec, sink = decoder(rate=1, clock=0.0)
    msgs = messages(gop50)
    for msg in msgs[:100]:  # two keyframe intervals: the interval is learned
        dec.decode(msg)
    learning = fed(dec)
    for msg in msgs[100:]:
        dec.decode(msg)
    times = delivered_times(gop50, sink)
    assert len(times) == 10 and np.allclose(np.diff(times), 1.0)
    check_intact(gop50, sink)
    # From then on each 2 s GOP decodes its keyframe and the chain to the frame due at 1 s.
    assert fed(dec) - learning <= 3 * 26


def test_rate_5_on_b_frames_skips_non_reference_frames_that_are_not_due(bframes):
    assert any(is_disposable(p.data) for p in bframes)
    dec, sink = run(bframes, rate=5)
    times = delivered_times(bframes, sink)
    assert 49 <= len(times) <= 51
    assert set(np.round(np.diff(times), 6)) <= {0.16, 0.2, 0.24}
    check_intact(bframes, sink)
    assert dec.stats.skipped_not_due > 0
    assert fed(dec) < 250


def test_without_rate_or_capture_times_every_packet_is_decoded(gop25):
    dec, sink = run(gop25, rate=None)
    assert fed(dec) == 250 and len(sink.valid()) == 250
    no_pts = [
        EncodedPacket(p.data, None, p.time_base, p.keyframe, p.codec, p.width, p.height)
        for p in gop25
    ]
    dec, _ = decoder(rate=1, clock=0.0)
    for msg in messages(no_pts):
        dec.decode(msg)
    assert dec.stats.skipped_to_keyframe == dec.stats.skipped_not_due == 0


def test_a_keyframe_interval_that_changes_is_counted_and_relearned():
    first = list(synthetic_packets(320, 240, 100, fps=FPS, gop=25, bframes=0))
    later = list(synthetic_packets(320, 240, 225, fps=FPS, gop=75, bframes=0, seed=1))
    tb = first[0].time_base
    shifted = [
        EncodedPacket(p.data, p.pts + 100, tb, p.keyframe, p.codec, p.width, p.height)
        for p in later
    ]
    clip = first + shifted
    dec, sink = run(clip, rate=1)
    assert dec.stats.keyframe_late == 1
    times = delivered_times(clip, sink)
    # Every second while the GOP is 1 s; afterwards at least one frame per keyframe, and a
    # frame every second once the 3 s interval has been learned again.
    assert [t for t in times if t < 4] == [0.0, 1.0, 2.0, 3.0]
    assert {4.0, 7.0, 10.0, 12.0} <= set(times)
    check_intact(clip, sink)
    assert dec.stats.decode_errors == 0


def test_one_delivery_per_gop_lands_on_the_keyframe_whatever_the_phase(gop25):
    dec, sink = decoder(rate=None, clock=0.0)
    msgs = messages(gop25)
    for msg in msgs[:87]:  # the keyframe interval is learned; then the rate starts mid-GOP
        dec.decode(msg)
    dec.set_rate(1)
    start = len(sink.items)
    before = fed(dec)
    for msg in msgs[87:]:
        dec.decode(msg)
    times = [float(gop25[i.offset].pts * gop25[0].time_base) for i in sink.valid(start)]
    assert times[0] == pytest.approx(3.48)  # the first frame after the change is due at once
    assert times[1:] == [4.0, 5.0, 6.0, 7.0, 8.0, 9.0]  # then every keyframe, and only those
    assert fed(dec) - before <= 1 + 12 + 6  # that frame, the rest of its GOP, six keyframes
    check_intact(gop25, sink)


def test_latest_without_rate_skips_what_a_slow_model_would_only_see_replaced(gop25):
    from comux.decoding import CameraDecoder, DecoderConfig

    lag, take_every, phase = 0.05, 1.0, 0.5  # transit; a model taking a batch a second at +0.5 s
    clock = [0.0]
    got: list[tuple[float, int]] = []  # (wall time delivered, offset)
    dec = CameraDecoder(
        "cam",
        DecoderConfig(rate=None, width=320, height=240),
        lambda offset, frame, msg: got.append((clock[0], offset)) if frame is not None else None,
        clock=lambda: clock[0],
    )

    def next_take() -> tuple[float, float]:
        k = (clock[0] - phase) // take_every + 1
        return k * take_every + phase, take_every

    dec.demand = next_take
    msgs = messages(gop25)
    for msg, p in zip(msgs, gop25, strict=True):
        clock[0] = float(p.pts * p.time_base) + lag  # live: each packet arrives as captured
        dec.decode(msg)
    capture = {i: float(p.pts * p.time_base) for i, p in enumerate(gop25)}
    learned = 3  # seconds: the keyframe interval and the lag are known from here on
    decoded_after = [o for w, o in got if capture[o] >= learned]
    assert len(decoded_after) <= 0.6 * (250 - learned * 25)
    # At every take the newest frame decoded by then is the newest that had arrived, or at most
    # one frame older: nothing the model would have seen was skipped.
    for take in np.arange(learned + phase, 10, take_every):
        newest = max(capture[o] for w, o in got if w <= take)
        assert newest >= take - lag - 2 / FPS, (take, newest)
    assert dec.stats.decode_errors == 0 and dec.stats.skipped_to_keyframe > 0
