"""H.264/HEVC Annex-B helpers: which NAL units a packet holds, without decoding it.

Kafka messages carry one encoded packet each; the consumer needs to know whether a
packet is a keyframe (a decoder may join there) and whether it carries its parameter
sets. Start codes are found with ``bytes.find`` (C speed): emulation prevention
guarantees ``00 00 01`` never occurs inside a NAL unit, so no byte-wise parsing is needed.
"""

from __future__ import annotations

from collections.abc import Iterator

from .errors import ConfigError

__all__ = [
    "CODECS",
    "DISPOSABLE",
    "KEYFRAME",
    "START_CODE",
    "has_parameter_sets",
    "insert_parameter_sets",
    "is_disposable",
    "is_keyframe",
    "iter_nals",
    "nal_types",
    "normalize_codec",
    "parameter_sets",
    "scan",
]

# The codec names comux takes (lower case, without '.' and '-') and the decoder each one means.
CODECS: dict[str, str] = {
    "h264": "h264",
    "avc": "h264",
    "avc1": "h264",
    "hevc": "hevc",
    "h265": "hevc",
    "hvc1": "hevc",
    "hev1": "hevc",
}
START_CODE = b"\x00\x00\x00\x01"
_SHORT_START = b"\x00\x00\x01"

_H264_IDR = 5
_H264_PARAMS = {7, 8}  # SPS, PPS
_H264_VCL = range(1, 6)
_HEVC_IRAP = range(16, 22)  # BLA_W_LP .. CRA_NUT
_HEVC_PARAMS = {32, 33, 34}  # VPS, SPS, PPS
_HEVC_VCL = range(0, 32)


def normalize_codec(codec: str) -> str:
    """Return ``"h264"`` or ``"hevc"`` for the spellings gateways use (h265, avc1, H.264, ...)."""
    try:
        return CODECS[codec.lower().replace(".", "").replace("-", "")]
    except KeyError:
        raise ConfigError(f"unsupported codec {codec!r}: only h264 and hevc") from None


def iter_nals(data: bytes) -> Iterator[tuple[int, int]]:
    """Yield ``(start, end)`` of each NAL unit, without start code and trailing zeros."""
    find = data.find
    pos = find(_SHORT_START)
    while pos >= 0:
        start = pos + 3
        nxt = find(_SHORT_START, start)
        end = len(data) if nxt < 0 else nxt
        while end > start and data[end - 1] == 0:  # trailing_zero_8bits / 4-byte start code
            end -= 1
        if end > start:
            yield start, end
        pos = nxt


def _type(data: bytes, start: int, hevc: bool) -> int:
    header = data[start]
    return (header >> 1) & 0x3F if hevc else header & 0x1F


def nal_types(data: bytes, codec: str = "h264") -> list[int]:
    """NAL unit types of an Annex-B packet, in order (empty for data without start codes)."""
    hevc = normalize_codec(codec) == "hevc"
    return [_type(data, start, hevc) for start, _ in iter_nals(data)]


def is_keyframe(data: bytes, codec: str = "h264") -> bool:
    """True when the packet holds an IDR slice (H.264) or an IRAP picture (HEVC)."""
    hevc = normalize_codec(codec) == "hevc"
    for start, _ in iter_nals(data):
        t = _type(data, start, hevc)
        if (t in _HEVC_IRAP) if hevc else (t == _H264_IDR):
            return True
    return False


def is_disposable(data: bytes, codec: str = "h264") -> bool:
    """True when the packet's picture is never a reference: skipping it breaks no other frame.

    H.264: its slice has ``nal_ref_idc`` 0; HEVC: a sub-layer non-reference type (TRAIL_N,
    RADL_N, ...). Read from the first slice's header alone: all slices of a picture agree.
    """
    hevc = normalize_codec(codec) == "hevc"
    find, size = data.find, len(data) - 3
    pos = find(_SHORT_START)
    while 0 <= pos < size:
        header = data[pos + 3]
        t = _type(data, pos + 3, hevc)
        if t in (_HEVC_VCL if hevc else _H264_VCL):
            return t <= 14 and t % 2 == 0 if hevc else (header >> 5) & 3 == 0
        pos = find(_SHORT_START, pos + 3)
    return False


KEYFRAME, DISPOSABLE = 1, 2  # the flags of scan()


def scan(data: bytes, hevc: bool) -> int:
    """``KEYFRAME`` | ``DISPOSABLE`` of a packet, as :func:`is_keyframe` and
    :func:`is_disposable` say (the reference of the compiled ``comux._ext.nal.scan``)."""
    codec = "hevc" if hevc else "h264"
    return (KEYFRAME if is_keyframe(data, codec) else 0) | (
        DISPOSABLE if is_disposable(data, codec) else 0
    )


def has_parameter_sets(data: bytes, codec: str = "h264") -> bool:
    """True when the packet carries SPS and PPS (and VPS for HEVC) in band."""
    hevc = normalize_codec(codec) == "hevc"
    wanted = _HEVC_PARAMS if hevc else _H264_PARAMS
    return wanted <= {_type(data, start, hevc) for start, _ in iter_nals(data)}


def parameter_sets(data: bytes, codec: str = "h264") -> bytes:
    """The packet's parameter-set NAL units, each behind a 4-byte start code (b"" if none)."""
    hevc = normalize_codec(codec) == "hevc"
    wanted = _HEVC_PARAMS if hevc else _H264_PARAMS
    return b"".join(
        START_CODE + data[start:end]
        for start, end in iter_nals(data)
        if _type(data, start, hevc) in wanted
    )


def insert_parameter_sets(data: bytes, params: bytes, codec: str = "h264") -> bytes:
    """Splice ``params`` in front of the first slice, after any AUD/SEI, as decoders expect."""
    hevc = normalize_codec(codec) == "hevc"
    vcl = _HEVC_VCL if hevc else _H264_VCL
    for start, _ in iter_nals(data):
        if _type(data, start, hevc) in vcl:
            at = start - 3
            if at > 0 and data[at - 1] == 0:
                at -= 1
            return data[:at] + params + data[at:]
    return params + data
