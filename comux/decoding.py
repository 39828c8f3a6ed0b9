"""Where a Kafka message's packet becomes a frame: one PyAV codec context per camera."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

import av
from av.video.reformatter import VideoReformatter

from .annexb import is_keyframe
from .errors import ConfigError

__all__ = ["DecoderConfig", "CameraStats", "CameraDecoder", "PacketCache", "Message", "PixFmt"]

log = logging.getLogger("comux.decoding")

PixFmt = Literal["rgb24", "bgr24", "yuv420p", "gray"]
PIX_FMTS: tuple[str, ...] = ("rgb24", "bgr24", "yuv420p", "gray")
CODECS = {"h264": "h264", "avc": "h264", "hevc": "hevc", "h265": "hevc"}


class Message(Protocol):
    """The part of confluent_kafka.Message that decoding reads."""

    def value(self) -> bytes | None: ...
    def key(self) -> bytes | None: ...
    def offset(self) -> int: ...
    def topic(self) -> str: ...
    def partition(self) -> int: ...
    def headers(self) -> list[tuple[str, bytes]] | None: ...


@dataclass(frozen=True)
class DecoderConfig:
    """Settings of ``setup_decoders``: output size and format, codec and the per-camera rate cap."""

    rate: float | None = 10.0
    width: int = 1920
    height: int = 1080
    codec: str = "h264"
    pix_fmt: PixFmt = "rgb24"
    codec_threads: int = 1

    def __post_init__(self) -> None:
        if self.rate is not None and not self.rate > 0:
            raise ConfigError(f"rate must be > 0 frames per second or None, got {self.rate!r}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0 or value % 2:
                raise ConfigError(f"{name} must be a positive even int, got {value!r}")
        if self.codec.lower() not in CODECS:
            raise ConfigError(f"de_codec must be one of {sorted(CODECS)}, got {self.codec!r}")
        if self.pix_fmt not in PIX_FMTS:
            raise ConfigError(f"pix_fmt must be one of {PIX_FMTS}, got {self.pix_fmt!r}")

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one output frame."""
        if self.pix_fmt in ("rgb24", "bgr24"):
            return (self.height, self.width, 3)
        if self.pix_fmt == "gray":
            return (self.height, self.width)
        return (self.height * 3 // 2, self.width)


@dataclass
class CameraStats:
    """Counters of one camera; every frame or packet not delivered is counted somewhere here."""

    packets: int = 0
    frames: int = 0
    delivered: int = 0
    decode_errors: int = 0
    empty_packets: int = 0
    skipped_before_keyframe: int = 0
    lag_dropped: int = 0
    lag_unread: int = 0
    rate_limited: int = 0
    not_batched: int = 0
    last_error: str | None = None
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("started")
        return d


FrameCallback = Callable[[int, "av.VideoFrame | None", Message], None]


class CameraDecoder:
    """Decode one camera's packets in order and hand each frame, at the output size, to ``deliver``.

    The Kafka message rides through the decoder as the packet's ``opaque``, so a frame that the
    decoder returns late (B-frames) still carries the offset and the bytes of its own packet.
    """

    def __init__(
        self,
        cam_id: str,
        config: DecoderConfig,
        deliver: FrameCallback,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cam_id = cam_id
        self._clock = clock
        self.config = config
        self.stats = CameraStats()
        self._deliver = deliver
        self._codec_name = CODECS[config.codec.lower()]
        self._ctx = self._open()
        self._scaler = VideoReformatter()
        self._await_keyframe = True
        self._next_due = 0.0
        self.closed = False
        self.max_offset_diff: int | None = None  # set by the consumer; per camera via update
        self.skip_below = -1
        self._synced_to = -1
        self.last_offset = -1
        self.gop = 0
        self._last_key_offset = -1

    def _open(self) -> av.VideoCodecContext:
        ctx = cast(av.VideoCodecContext, av.CodecContext.create(self._codec_name, "r"))
        ctx.thread_count = self.config.codec_threads
        ctx.copy_opaque = True
        return ctx

    def set_rate(self, rate: float | None) -> None:
        self.config = dataclasses.replace(self.config, rate=rate)

    def decode(self, msg: Message) -> None:
        """Decode one message; count, never raise, on bad input."""
        offset = msg.offset()
        self.stats.packets += 1
        if offset < self.skip_below:
            self.stats.lag_dropped += 1
            return
        if self._synced_to != self.skip_below:
            # The consumer jumped ahead: the old reference frames are of no use now.
            self._synced_to = self.skip_below
            self._await_keyframe = True
            self._ctx = self._open()
        self.last_offset = offset
        data = msg.value()
        if not data:
            # An empty packet would put the codec into drain mode; it is an error, not a flush.
            self.stats.empty_packets += 1
            self._fail(msg, "empty packet")
            return
        key, pts = self._read_headers(msg, data)
        if key:
            if self._last_key_offset >= 0:
                self.gop = offset - self._last_key_offset
            self._last_key_offset = offset
        if self._await_keyframe:
            if not key:
                self.stats.skipped_before_keyframe += 1
                return
            self._await_keyframe = False
        packet = av.Packet(data)
        packet.opaque = msg
        packet.pts = pts  # the decoder carries it to the frame, reordered with it
        try:
            frames = self._ctx.decode(packet)
        except av.FFmpegError as exc:
            self._fail(msg, f"{type(exc).__name__}: {exc}")
            return
        for frame in frames:
            self._frame(frame)

    def _read_headers(self, msg: Message, data: bytes) -> tuple[bool, int | None]:
        """Keyframe flag and pts from the headers; the bitstream tells the flag when absent."""
        key: bool | None = None
        pts: int | None = None
        for name, value in msg.headers() or ():
            if name == "keyframe":
                key = value in (b"1", b"true", b"True")
            elif name == "pts":
                try:
                    pts = int(value)
                except (TypeError, ValueError):
                    pass
        if key is None:
            key = is_keyframe(data, self._codec_name)
        return key, pts

    def _frame(self, frame: av.VideoFrame) -> None:
        msg = cast(Message, frame.opaque)
        self.stats.frames += 1
        if frame.is_corrupt:
            self._fail(msg, "corrupt frame (missing or damaged data)")
            return
        rate = self.config.rate
        if rate is not None:
            now = self._clock()
            if now < self._next_due:
                self.stats.rate_limited += 1
                return
            # Keep a steady cadence but never bank credit for frames that did not come.
            self._next_due = max(self._next_due + 1.0 / rate, now - 0.5 / rate)
        if frame.width != self.config.width or frame.height != self.config.height:
            # Scale only; the batch writer converts the colours straight into the slot.
            frame = self._scaler.reformat(
                frame,
                width=self.config.width,
                height=self.config.height,
                format="yuv420p",
                threads=1,
            )
        self.stats.delivered += 1
        self._deliver(msg.offset(), frame, msg)

    def _fail(self, msg: Message, reason: str) -> None:
        self.stats.decode_errors += 1
        self.stats.last_error = reason
        self._await_keyframe = True
        log.warning("camera %s: offset %d: %s", self.cam_id, msg.offset(), reason)
        self._deliver(msg.offset(), None, msg)


class PacketCache:
    """The last few delivered messages of a camera, so ``send`` can find the original packet."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._items: OrderedDict[int, Message] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, offset: int, msg: Message) -> None:
        with self._lock:
            self._items[offset] = msg
            if len(self._items) > self._size:
                self._items.popitem(last=False)

    def get(self, offset: int) -> Message | None:
        with self._lock:
            return self._items.get(offset)
