"""Where encoded packets come from: a synthetic test pattern or a video file.

Every packet is Annex-B with the parameter sets in band before every keyframe, so a
consumer can join a camera's topic at any keyframe without out-of-band extradata.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import av.bitstream
import numpy as np

from .annexb import insert_parameter_sets, is_keyframe, normalize_codec, parameter_sets
from .errors import ConfigError

__all__ = [
    "FRAME_NUMBER_BITS",
    "EncodedPacket",
    "file_packets",
    "pattern_frame",
    "read_frame_number",
    "synthetic_packets",
]

FRAME_NUMBER_BITS = 16
_MP4_TO_ANNEXB = {"h264": "h264_mp4toannexb", "hevc": "hevc_mp4toannexb"}


@dataclass(frozen=True, slots=True)
class EncodedPacket:
    """One encoded video packet, as published in one Kafka message."""

    data: bytes
    pts: int | None
    time_base: Fraction
    keyframe: bool
    codec: str
    width: int
    height: int

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka message headers; ``pts`` is left out when unknown (raw Annex-B files)."""
        out: list[tuple[str, bytes]] = []
        if self.pts is not None:
            out.append(("pts", str(self.pts).encode()))
        tb = self.time_base
        out += [
            ("time_base", f"{tb.numerator}/{tb.denominator}".encode()),
            ("keyframe", b"1" if self.keyframe else b"0"),
            ("codec", self.codec.encode()),
            ("width", str(self.width).encode()),
            ("height", str(self.height).encode()),
        ]
        return out


def _check_size(width: int, height: int) -> None:
    if not (isinstance(width, int) and isinstance(height, int)) or width < 16 or height < 16:
        raise ConfigError(f"frame size must be at least 16x16, got {width}x{height}")
    if width % 2 or height % 2:
        raise ConfigError(f"yuv420p needs an even frame size, got {width}x{height}")


def pattern_frame(width: int, height: int, index: int, seed: int = 0) -> np.ndarray:
    """Frame ``index`` of the pattern as a yuv420p array of shape (height * 3 // 2, width).

    A moving luma gradient, a moving box and, in a top band, ``index`` as 16 black/white
    bars (most significant bit left) so a decoded frame tells which frame it was
    (``index`` modulo 2**16; the bars need a width of at least 64 to be read back).
    """
    _check_size(width, height)
    rng = np.random.default_rng(seed)
    phase, dx, dy = (int(v) for v in rng.integers(0, 256, 3))
    box_luma = int(rng.integers(60, 200))
    t = index + phase
    out = np.empty((height * 3 // 2, width), np.uint8)
    flat = out.reshape(-1)
    luma = out[:height]
    # a diagonal gradient: every row pair is the same ramp shifted by one pixel
    ramp = ((np.arange(width + height // 2) + 3 * t) % 200 + 28).astype(np.uint8)
    rows = np.lib.stride_tricks.sliding_window_view(ramp, width)[: height // 2]
    luma[0::2] = rows
    luma[1::2] = rows
    # the box bounces around the frame below the bars
    band = _band_height(height)
    bw, bh = max(8, width // 8), max(8, height // 8)
    span_x, span_y = width - bw, max(1, height - band - bh)
    bx = _bounce(dx + 7 * index, span_x)
    by = band + _bounce(dy + 5 * index, span_y)
    luma[by : by + bh, bx : bx + bw] = box_luma
    luma[:band] = 16
    bar = width // FRAME_NUMBER_BITS
    for bit in range(FRAME_NUMBER_BITS):
        if (index >> (FRAME_NUMBER_BITS - 1 - bit)) & 1:
            luma[:band, bit * bar : (bit + 1) * bar] = 235
    cw, ch = width // 2, height // 2
    u = flat[width * height : width * height + cw * ch].reshape(ch, cw)
    v = flat[width * height + cw * ch :].reshape(ch, cw)
    u[:] = ((np.arange(cw) + 2 * t) % 128 + 64).astype(np.uint8)[None, :]
    v[:] = ((np.arange(ch) + t) % 128 + 64).astype(np.uint8)[:, None]
    u[: band // 2 + 1] = 128  # keep the bars grey so RGB/BGR/gray decodes read the same
    v[: band // 2 + 1] = 128
    return out


def _band_height(height: int) -> int:
    return max(8, height // 24) & ~1


def _bounce(pos: int, span: int) -> int:
    pos %= 2 * span
    return pos if pos < span else 2 * span - pos


def read_frame_number(image: np.ndarray) -> int:
    """Read the frame index back from a decoded pattern frame (HxW gray or HxWxC)."""
    img = np.asarray(image)
    height, width = img.shape[:2]
    band = _band_height(height)
    bar = width // FRAME_NUMBER_BITS
    strip = img[band // 4 : band - band // 4, : bar * FRAME_NUMBER_BITS].astype(np.float32)
    if strip.ndim == 3:
        strip = strip.mean(axis=2)
    levels = strip.reshape(strip.shape[0], FRAME_NUMBER_BITS, bar)[:, :, bar // 4 : bar - bar // 4]
    bits = levels.mean(axis=(0, 2)) > 128
    return int("".join("1" if b else "0" for b in bits), 2)


def synthetic_packets(
    width: int,
    height: int,
    frames: int,
    *,
    fps: int = 25,
    gop: int | None = 25,
    bframes: int = 2,
    seed: int = 0,
) -> Iterator[EncodedPacket]:
    """Encode ``frames`` frames of :func:`pattern_frame` with libx264, in decode order.

    Deterministic for a given seed. ``bframes`` > 0 makes the decoder hold frames back,
    as real cameras' streams often do; ``gop`` is the fixed keyframe interval. ``gop=None``
    encodes as libx264 does by default instead: B-frames with b-pyramid, adaptive B-frame
    placement, and keyframes where the scene changes (the pattern cuts to another scene every
    40 to 120 frames) or after 250 frames. Bad arguments raise ConfigError at the call, not on
    first iteration.
    """
    _check_size(width, height)
    if frames < 0 or fps <= 0 or (gop is not None and gop <= 0) or not 0 <= bframes <= 16:
        raise ConfigError(
            f"need frames >= 0, fps > 0, gop > 0, 0 <= bframes <= 16; "
            f"got {frames=}, {fps=}, {gop=}, {bframes=}"
        )
    return _encode(width, height, frames, fps, gop, bframes, seed)


def _scene_frame(width: int, height: int, index: int, seed: int) -> np.ndarray:
    """Frame ``index`` of a pattern that cuts to another scene every 40 to 120 frames."""
    start, scene = 0, 0
    while index >= start + (length := 40 + (scene * 37 + seed) % 81):
        start, scene = start + length, scene + 1
    out = pattern_frame(width, height, index, seed + 1000 * scene)
    if scene % 2:  # a cut as an encoder sees one: everything below the bars changes
        band = _band_height(height)
        out[band:] = 255 - out[band:]
    return out


def _encode(
    width: int, height: int, frames: int, fps: int, gop: int | None, bframes: int, seed: int
) -> Iterator[EncodedPacket]:
    time_base = Fraction(1, fps)
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = time_base
    ctx.framerate = Fraction(fps)
    # No GLOBAL_HEADER flag: x264 then writes Annex-B, and repeat-headers puts SPS/PPS
    # before every IDR. Options go in x264-params because the preset would reset them.
    if gop is None:  # superfast keeps x264's defaults for B-frames, b-pyramid and scenecut
        ctx.options = {
            "preset": "superfast",
            "x264-params": f"repeat-headers=1:bframes={bframes}:log-level=error",
        }
    else:
        ctx.options = {
            "preset": "ultrafast",
            "x264-params": (
                f"keyint={gop}:min-keyint={gop}:scenecut=0:repeat-headers=1:bframes={bframes}"
                ":log-level=error"
            ),
        }
    ctx.open()
    params = b""

    def wrap(packet: av.Packet[Any]) -> EncodedPacket:
        nonlocal params
        data = bytes(packet)
        key = is_keyframe(data, "h264")
        if key:
            data, params = _repeat_parameter_sets(data, "h264", params)
        return EncodedPacket(data, packet.pts, time_base, key, "h264", width, height)

    # PyAV codec contexts have no close(): the encoder is freed with ``ctx``.
    for index in range(frames):
        make = pattern_frame if gop is not None else _scene_frame
        frame = av.VideoFrame.from_ndarray(make(width, height, index, seed), format="yuv420p")
        frame.pts = index
        frame.time_base = time_base
        for packet in ctx.encode(frame):
            yield wrap(packet)
    for packet in ctx.encode(None):
        yield wrap(packet)


def _repeat_parameter_sets(data: bytes, codec: str, last: bytes) -> tuple[bytes, bytes]:
    """Give a keyframe the last parameter sets seen when it has none of its own.

    Raw streams often carry SPS/PPS once at the start; a consumer joining later needs them.
    Returns the (possibly patched) keyframe and the parameter sets to remember.
    """
    own = parameter_sets(data, codec)
    if own:
        return data, own
    if last:
        return insert_parameter_sets(data, last, codec), last
    return data, last


def file_packets(path: str | os.PathLike[str]) -> Iterator[EncodedPacket]:
    """Demux the first video stream of a file (MP4, MKV, raw .h264/.h265) as Annex-B packets.

    Raises ConfigError now, not on first iteration, when the file has no video stream,
    is not a media file, or holds a codec other than H.264/HEVC.
    """
    try:
        container = av.open(os.fspath(path))
    except av.error.InvalidDataError as exc:
        raise ConfigError(f"{os.fspath(path)!r} is not a media file FFmpeg can read") from exc
    try:
        if not container.streams.video:
            raise ConfigError(f"{os.fspath(path)!r} has no video stream")
        stream = container.streams.video[0]
        name = stream.codec_context.name
        try:
            codec = normalize_codec(name)
        except ConfigError:
            raise ConfigError(
                f"{os.fspath(path)!r}: video codec {name!r} is not supported (only h264/hevc)"
            ) from None
    except BaseException:
        container.close()
        raise
    return _file_packets(container, stream, codec)


def _file_packets(
    container: av.container.InputContainer, stream: av.VideoStream, codec: str
) -> Iterator[EncodedPacket]:
    extradata = stream.codec_context.extradata or b""
    # avcC/hvcC extradata (MP4, MKV) means length-prefixed packets: convert them.
    length_prefixed = bool(extradata) and not extradata.startswith(
        (b"\x00\x00\x01", b"\x00\x00\x00\x01")
    )
    bsf = (
        av.bitstream.BitStreamFilterContext(_MP4_TO_ANNEXB[codec], stream)
        if length_prefixed
        else None
    )
    time_base = stream.time_base or Fraction(1, 90000)
    width, height = stream.codec_context.width, stream.codec_context.height
    params = parameter_sets(extradata, codec) if not length_prefixed else b""

    def wrap(packet: av.Packet[Any]) -> EncodedPacket:
        nonlocal params
        data = bytes(packet)
        key = is_keyframe(data, codec)
        if key:
            data, params = _repeat_parameter_sets(data, codec, params)
        return EncodedPacket(data, packet.pts, time_base, key, codec, width, height)

    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the demuxer's flush packet
                continue
            for out in bsf.filter(packet) if bsf else (packet,):
                if out.size:
                    yield wrap(out)
        if bsf is not None:
            for out in bsf.filter(None):
                if out.size:
                    yield wrap(out)
    finally:
        container.close()
