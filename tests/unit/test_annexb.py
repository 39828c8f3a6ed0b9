from __future__ import annotations

import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comux._ext import nal
from comux.annexb import (
    DISPOSABLE,
    KEYFRAME,
    has_parameter_sets,
    insert_parameter_sets,
    is_keyframe,
    nal_types,
    normalize_codec,
    parameter_sets,
    scan,
)
from comux.errors import ConfigError
from comux.media import synthetic_packets

SC4 = b"\x00\x00\x00\x01"
SC3 = b"\x00\x00\x01"


def h264(nal_type: int, payload: bytes = b"\x88\x84", ref_idc: int = 3) -> bytes:
    return bytes([(ref_idc << 5) | nal_type]) + payload


def hevc(nal_type: int, payload: bytes = b"\xaf\x01") -> bytes:
    return bytes([nal_type << 1, 0x01]) + payload


SPS, PPS, SEI, AUD = h264(7), h264(8), h264(6, ref_idc=0), h264(9, b"\xf0", ref_idc=0)
IDR, P_SLICE, B_SLICE = h264(5), h264(1), h264(1, ref_idc=0)


def test_nal_types_with_3_and_4_byte_start_codes_and_trailing_zeros():
    data = SC4 + SPS + SC3 + PPS + b"\x00\x00" + SC4 + IDR + b"\x00"
    assert nal_types(data, "h264") == [7, 8, 5]


def test_no_start_code_means_no_nal_units():
    assert nal_types(b"", "h264") == []
    assert nal_types(b"\x65\x88\x84", "h264") == []
    assert not is_keyframe(b"\x00" * 1000)
    assert not has_parameter_sets(b"")


def test_h264_keyframe_is_an_idr_slice():
    assert is_keyframe(SC4 + SPS + SC4 + PPS + SC4 + IDR)
    assert is_keyframe(SC4 + AUD + SC4 + IDR + SC3 + IDR, "h264")
    assert not is_keyframe(SC4 + P_SLICE)
    assert not is_keyframe(SC4 + SPS + SC4 + PPS)  # parameter sets alone are no picture
    assert not is_keyframe(SC4 + B_SLICE, "h264")


def test_h264_parameter_sets_need_sps_and_pps():
    assert has_parameter_sets(SC4 + SEI + SC4 + SPS + SC4 + PPS + SC4 + IDR, "h264")
    assert not has_parameter_sets(SC4 + SPS + SC4 + IDR, "h264")
    assert not has_parameter_sets(SC4 + IDR, "h264")


@pytest.mark.parametrize("codec", ["hevc", "h265", "HEVC", "H.265"])
@pytest.mark.parametrize("nal_type", [16, 17, 18, 19, 20, 21])
def test_hevc_keyframe_is_an_irap_picture(codec, nal_type):
    assert is_keyframe(SC4 + hevc(nal_type), codec)


@pytest.mark.parametrize("nal_type", [0, 1, 8, 9, 22, 32, 35, 39])
def test_hevc_other_nal_units_are_no_keyframe(nal_type):
    assert not is_keyframe(SC4 + hevc(nal_type), "hevc")


def test_hevc_nal_types_and_parameter_sets():
    vps, sps, pps, sei, idr = hevc(32), hevc(33), hevc(34), hevc(39), hevc(19)
    data = SC4 + vps + SC4 + sps + SC4 + pps + SC4 + sei + SC4 + idr
    assert nal_types(data, "hevc") == [32, 33, 34, 39, 19]
    assert has_parameter_sets(data, "hevc")
    assert not has_parameter_sets(SC4 + sps + SC4 + pps + SC4 + idr, "hevc")  # no VPS
    # the same bytes read as H.264 are other types: the codec matters
    assert not is_keyframe(SC4 + idr, "h264")


def test_codec_names():
    assert normalize_codec("H264") == normalize_codec("avc1") == "h264"
    assert normalize_codec("h265") == normalize_codec("hvc1") == "hevc"
    with pytest.raises(ConfigError):
        is_keyframe(SC4 + IDR, "vp9")


def test_parameter_sets_are_extracted_and_inserted_before_the_first_slice():
    keyframe = SC4 + AUD + SC4 + SPS + SC3 + PPS + SC4 + IDR
    params = parameter_sets(keyframe, "h264")
    assert params == SC4 + SPS + SC4 + PPS
    bare = SC4 + AUD + SC4 + SEI + SC4 + IDR
    patched = insert_parameter_sets(bare, params, "h264")
    assert nal_types(patched, "h264") == [9, 6, 7, 8, 5]
    assert patched.endswith(SC4 + IDR)
    assert parameter_sets(SC4 + IDR, "h264") == b""


def test_agrees_with_the_encoder_on_real_packets(small_video):
    keyframes = [p for p in small_video if p.keyframe]
    assert len(keyframes) == 6
    for packet in small_video:
        assert is_keyframe(packet.data, "h264") == packet.keyframe
        assert has_parameter_sets(packet.data, "h264") == packet.keyframe
        types = nal_types(packet.data, "h264")
        assert (5 in types) == packet.keyframe
        assert set(types) <= {1, 5, 6, 7, 8, 9}


def test_big_packets_are_scanned_at_c_speed():
    # 4 MB of random slice data, as in a 4K keyframe, with the IDR slice last
    payload = os.urandom(4_000_000).replace(SC3, b"\x00\x00\x03")
    data = SC4 + SPS + SC4 + PPS + SC4 + h264(1, payload) + SC4 + IDR
    start = time.perf_counter()
    for _ in range(10):
        assert is_keyframe(data)
        assert has_parameter_sets(data)
    assert (time.perf_counter() - start) / 10 < 0.05


# -- the compiled scan against this reference -------------------------------------------------

PIECES = [SC3, SC4, b"\x00", b"\x00\x00", b"\x01", b"\x03"]


@settings(max_examples=400, deadline=None)
@given(
    parts=st.lists(
        st.one_of(st.sampled_from(PIECES), st.binary(min_size=1, max_size=6)), max_size=12
    ),
    hevc=st.booleans(),
)
def test_the_compiled_scan_agrees_with_the_reference_on_any_bytes(parts, hevc):
    data = b"".join(parts)
    assert nal.scan(data, hevc) == scan(data, hevc), data.hex()


@pytest.mark.parametrize("gop", [10, None], ids=["fixed-gop", "x264-defaults"])
def test_the_compiled_scan_agrees_on_encoded_streams(gop):
    packets = list(synthetic_packets(176, 144, 120, gop=gop, bframes=3))
    flags = [nal.scan(p.data, False) for p in packets]
    assert flags == [scan(p.data, False) for p in packets]
    assert [bool(f & KEYFRAME) for f in flags] == [p.keyframe for p in packets]
    assert any(f & DISPOSABLE for f in flags)  # b-pyramid leaves non-reference B-frames


def test_the_compiled_scan_reads_hevc_types():
    for kind in range(64):
        for data in (SC4 + hevc(kind), SC3 + hevc(35) + SC3 + hevc(kind)):
            assert nal.scan(data, True) == scan(data, True), kind
