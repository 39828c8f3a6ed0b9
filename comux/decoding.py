"""Where a Kafka message's packet becomes a frame: one PyAV codec context per camera."""

from __future__ import annotations

import bisect
import dataclasses
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import av
from av.video.reformatter import VideoReformatter

from .annexb import CODECS, DISPOSABLE, KEYFRAME, normalize_codec
from .backend import BACKEND
from .errors import ConfigError

if TYPE_CHECKING or BACKEND == "reference":
    from .annexb import scan
else:
    from ._ext.nal import scan

__all__ = ["CameraDecoder", "CameraStats", "DecoderConfig", "Message", "PacketCache", "PixFmt"]

log = logging.getLogger("comux.decoding")

PixFmt = Literal["rgb24", "bgr24", "yuv420p", "gray"]
PIX_FMTS: tuple[str, ...] = ("rgb24", "bgr24", "yuv420p", "gray")


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
        try:
            normalize_codec(self.codec)
        except (ConfigError, AttributeError):
            raise ConfigError(
                f"de_codec must be one of {sorted(CODECS)}, got {self.codec!r}"
            ) from None
        if self.pix_fmt not in PIX_FMTS:
            raise ConfigError(f"pix_fmt must be one of {PIX_FMTS}, got {self.pix_fmt!r}")

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one output frame.

        The compiled kernels check their output against ``comux._ext.convert.out_shape``, the
        same rule: they cannot import this module, and the reference backend cannot import
        them (tests/unit/test_decoding.py holds the two together).
        """
        if self.pix_fmt in ("rgb24", "bgr24"):
            return (self.height, self.width, 3)
        if self.pix_fmt == "gray":
            return (self.height, self.width)
        return (self.height * 3 // 2, self.width)


@dataclass
class CameraStats:
    """Counters of one camera; every frame or packet not delivered is counted somewhere here.

    ``invalid_after_error`` frames were decoded but are handed on as None: the decoder still
    held them when a packet failed, so they may reference broken pictures.
    ``keyframe_mismatch`` counts packets whose ``keyframe`` header disagrees with the bitstream
    (or is not a boolean); the bitstream wins.
    """

    packets: int = 0
    frames: int = 0
    delivered: int = 0
    decode_errors: int = 0
    invalid_after_error: int = 0
    empty_packets: int = 0
    skipped_before_keyframe: int = 0
    skipped_not_due: int = 0
    skipped_to_keyframe: int = 0
    keyframe_late: int = 0
    keyframe_mismatch: int = 0
    lag_dropped: int = 0
    lag_unread: int = 0
    rate_limited: int = 0
    already_done: int = 0
    not_batched: int = 0
    last_error: str | None = None
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("started")
        return d


FrameCallback = Callable[[int, "av.VideoFrame | None", Message], None]

# Header values gateways use for the keyframe hint; anything else is malformed.
_KEYFRAME_HINTS = {b"1": True, b"true": True, b"0": False, b"false": False}
_INTERVAL_SAMPLES = 16
_PTS_LIMIT = 2**63 - 1
# A capture clock that goes back further than this means the camera restarted.
_RESTART_S = 1.0
_REORDER_LIMIT = 32  # packets: 16 reference frames (H.264 DPB) plus frame-thread delay


def _time_base(value: bytes) -> tuple[int, int] | None:
    """``b"1/25"`` (or ``b"0.04"``) as (numerator, denominator); None when unusable."""
    try:
        tb = Fraction(value.decode("ascii").strip())
    except (ValueError, ZeroDivisionError, UnicodeDecodeError):
        return None
    return (tb.numerator, tb.denominator) if tb > 0 else None


class CameraDecoder:
    """Decode one camera's packets in order and hand each frame, at the output size, to ``deliver``.

    The Kafka message rides through the decoder as the packet's ``opaque``, so a frame that the
    decoder returns late (B-frames) still carries the offset and the bytes of its own packet.

    Only intact frames are delivered: after any failure every frame up to the next keyframe
    (decided from the bitstream, the ``keyframe`` header is only a hint) is delivered as None.
    ``frame_interval`` is the camera's learned frame interval in seconds (None until known).
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
        self._codec_name = normalize_codec(config.codec)
        self._hevc = self._codec_name == "hevc"
        self._ctx = self._open()
        # Offsets of the packets in the decoder whose frames have not come out, oldest first.
        self._inside: OrderedDict[int, None] = OrderedDict()
        self._scaler = VideoReformatter()
        self._await_keyframe = True
        self.closed = False
        self.max_offset_diff: int | None = None  # set by the consumer; per camera via update
        self.skip_below = -1
        self._synced_to = -1
        # Set on assignment from the group's commit: frames before it had their results
        # delivered by the previous owner; decoded for their references, not handed out.
        self.done_below = -1
        self.last_offset = -1
        self.gop = 0
        self.last_key_offset = -1
        self._mismatch_logged = False
        self._time_base: tuple[int, int] | None = None
        self._time_base_raw: bytes | None = None
        self.frame_interval: float | None = None
        self._deltas: deque[float] = deque(maxlen=_INTERVAL_SAMPLES)
        self._sorted_deltas: list[float] = []  # the same, sorted: a median per frame is cheap
        self._last_t: float | None = None
        self._next_due: float | None = None
        self._last_key_t: float | None = None
        self.key_interval: float | None = None  # seconds between keyframes, once steady
        self._skip_to_key = False
        self._key_gap: float | None = None
        # When the model takes its next batch and its interval (``BatchPool.next_take``), for
        # a "latest" camera without a rate: frames that will only be replaced are not decoded.
        self.demand: Callable[[], tuple[float, float] | None] | None = None
        self._lags: deque[float] = deque(maxlen=_INTERVAL_SAMPLES * 4)

    def _open(self) -> av.VideoCodecContext:
        ctx = cast(av.VideoCodecContext, av.CodecContext.create(self._codec_name, "r"))
        ctx.thread_count = self.config.codec_threads
        ctx.copy_opaque = True
        return ctx

    def restart(self) -> None:
        """Forget the stream: the next packet may come from anywhere (a new assignment)."""
        self._ctx = self._open()
        self._inside.clear()
        self._await_keyframe = True
        self._skip_to_key = False
        self.last_offset = -1
        self.last_key_offset = -1
        self.skip_below = -1
        self._synced_to = -1
        self._next_due = None

    def set_rate(self, rate: float | None) -> None:
        self.config = dataclasses.replace(self.config, rate=rate)
        self._next_due = None  # a due time of the old rate could hold the new one back

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
            self._skip_to_key = False
            self._ctx = self._open()
            self._inside.clear()
        self.last_offset = offset
        data = msg.value()
        if not data:
            # An empty packet would put the codec into drain mode; it is an error, not a flush.
            self.stats.empty_packets += 1
            self._fail(msg, "empty packet")
            return
        flags = scan(data, self._hevc)
        key = bool(flags & KEYFRAME)
        hint, pts = self._read_headers(msg)
        if hint is not None and _KEYFRAME_HINTS.get(hint.strip().lower()) is not key:
            self._keyframe_mismatch(offset, hint, key)
        if key:
            if self.last_key_offset >= 0:
                self.gop = offset - self.last_key_offset
            self.last_key_offset = offset
        if self._await_keyframe:
            if not key:
                self.stats.skipped_before_keyframe += 1
                return
            self._await_keyframe = False
        seconds = None
        if pts is not None and self._time_base is not None:
            num, den = self._time_base
            seconds = pts * num / den
        if self._skip(flags, key, seconds):
            return
        packet = av.Packet(data)
        packet.opaque = (msg, seconds)
        packet.pts = pts  # the decoder carries it to the frame, reordered with it
        self._inside[offset] = None
        try:
            frames = self._ctx.decode(packet)
        except av.FFmpegError as exc:
            self._inside.pop(offset, None)
            self._fail(msg, f"{type(exc).__name__}: {exc}")
            return
        for frame in frames:
            self._frame(frame)

    def _skip(self, flags: int, key: bool, t: float | None) -> bool:
        """Whether to leave this packet undecoded: no frame that needs it will be delivered.

        Under ``rate``, a frame that is not due is only worth decoding when a due frame refers
        to it. A non-reference picture that is not due is skipped on its own; when no frame
        left before the next keyframe is due, the rest of the GOP is skipped and decoding
        starts again, clean, at that keyframe. Planning needs the capture time and a steady
        keyframe interval; without them every packet is decoded.
        """
        if key:
            self._learn_keyframe(t)
        if self._skip_to_key:
            if not key:
                if t is not None:
                    self._count_late_keyframe(t)
                self.stats.skipped_to_keyframe += 1
                return True
            self._skip_to_key = False
            for frame in self._empty():  # frames held for B-frames, then a clean start
                self._frame(frame)
        interval = self.frame_interval
        if t is None or interval is None:
            return False
        if self.demand is not None:
            self._lags.append(self._clock() - t)
        due = self._next_due if self.config.rate is not None else self._due_by_demand(interval)
        if due is None:
            return False
        slack = 1e-6 + 0.25 * interval
        if not key and flags & DISPOSABLE:
            if t < due - slack:
                self.stats.skipped_not_due += 1
                return True
            return False
        if self.key_interval is None or self._last_key_t is None:
            return False
        # The last frame before the next keyframe is captured one interval before it.
        if due - slack > self._last_key_t + self.key_interval - interval:
            self._skip_to_key = True
            self.stats.skipped_to_keyframe += 1
            return True
        return False

    def _due_by_demand(self, interval: float) -> float | None:
        """Without ``rate``: the capture time from which frames may still be the newest when the
        model takes its next batch; older ones would only be replaced.

        Only when the model is clearly slower than the camera; a quarter of its interval (and a
        frame) of margin keeps its jitter from costing it the newest frame.
        """
        take = self.demand() if self.demand is not None else None
        if take is None or not self._lags:
            return None
        at, gap = take
        if gap < 3 * interval:
            return None
        lag = min(self._lags)  # wall clock minus capture time, at its least: transit alone
        return at - lag - 0.25 * gap - interval

    def _learn_keyframe(self, t: float | None) -> None:
        """Learn the keyframe interval; only one seen twice in a row counts as steady."""
        last, self._last_key_t = self._last_key_t, t
        if t is None or last is None or t <= last:
            self.key_interval = None
            return
        gap = t - last
        steady = (
            self._key_gap is not None
            and abs(gap - self._key_gap) < 0.5 * (self.frame_interval or 0.0) + 1e-6
        )
        self._key_gap = gap
        self.key_interval = gap if steady else None

    def _count_late_keyframe(self, t: float) -> None:
        """Two intervals without the keyframe being skipped to: unlearn the interval, once.

        Frames up to that keyframe cannot be decoded any more (their references were skipped);
        from it on, every GOP is decoded until the interval is steady again.
        """
        if self.key_interval is None or self._last_key_t is None:
            return
        if t - self._last_key_t > 2 * self.key_interval:
            self.stats.keyframe_late += 1
            log.warning(
                "camera %s: no keyframe for %.1f s (every %.1f s before)",
                self.cam_id,
                t - self._last_key_t,
                self.key_interval,
                extra={"cam_id": self.cam_id},
            )
            self.key_interval = self._key_gap = None

    @property
    def holds_frames(self) -> bool:
        """Whether packets went in whose frames have not come out (B-frame delay)."""
        return bool(self._inside)

    def frontier(self) -> int:
        """The oldest offset that may still give a frame: the oldest packet in the decoder, else
        the one after the last packet decoded (-1 before any)."""
        for offset in self._inside:
            return offset
        return self.last_offset + 1 if self.last_offset >= 0 else -1

    def flush(self) -> None:
        """Hand out the frames held back for B-frames, once the stream has stopped.

        Its references go with them, so the next packet decodes from the next keyframe.
        """
        if self._await_keyframe or not self.holds_frames:
            return
        for frame in self._empty():
            self._frame(frame)
        self._await_keyframe = True

    def _read_headers(self, msg: Message) -> tuple[bytes | None, int | None]:
        """The raw keyframe hint and the pts; a time_base header is remembered for the camera."""
        hint: bytes | None = None
        pts: int | None = None
        for name, value in msg.headers() or ():
            if not isinstance(value, bytes):
                continue
            if name == "keyframe":
                hint = value
            elif name == "pts":
                try:
                    pts = int(value)
                except ValueError:
                    continue
                if not -_PTS_LIMIT < pts < _PTS_LIMIT:
                    pts = None  # FFmpeg's pts is an int64; AV_NOPTS_VALUE is its minimum
            elif name == "time_base" and value != self._time_base_raw:
                self._time_base_raw = value
                # A malformed value keeps the last good one: pts would jump otherwise.
                self._time_base = _time_base(value) or self._time_base
        return hint, pts

    def _keyframe_mismatch(self, offset: int, hint: bytes, key: bool) -> None:
        self.stats.keyframe_mismatch += 1
        if not self._mismatch_logged:
            # A gateway that gets the flag wrong gets it wrong on every packet: say it once.
            self._mismatch_logged = True
            log.warning(
                "camera %s: offset %d: keyframe header %r but the bitstream says %s; "
                "trusting the bitstream (logged once per camera)",
                self.cam_id,
                offset,
                hint[:16],
                "keyframe" if key else "no keyframe",
                extra={"cam_id": self.cam_id},
            )

    def _frame(self, frame: av.VideoFrame) -> None:
        self.stats.frames += 1
        if frame.opaque is None:
            if self._inside:
                self._inside.popitem(last=False)
            return  # the decoder made this frame up (a concealed reference): no packet, no slot
        msg, seconds = cast("tuple[Message, float | None]", frame.opaque)
        self._left(msg.offset())
        t = self._clock() if seconds is None else seconds
        self._observe(t)
        if msg.offset() < self.done_below:
            self.stats.already_done += 1
            return
        if self._await_keyframe:
            # Held by the decoder when a packet failed (see _fail): it may show broken pictures.
            self.stats.invalid_after_error += 1
            self._deliver(msg.offset(), None, msg)
            return
        if frame.is_corrupt:
            self._fail(msg, "corrupt frame (missing or damaged data)")
            return
        rate = self.config.rate
        if rate is not None and not self._due(t, rate, bool(frame.key_frame)):
            self.stats.rate_limited += 1
            return
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

    def _left(self, offset: int) -> None:
        """The frame of ``offset`` came out; packets far older never will (a decoder that
        swallowed one): a frame comes out at most a DPB's worth of packets late."""
        self._inside.pop(offset, None)
        while self._inside:
            oldest = next(iter(self._inside))
            if oldest >= offset - _REORDER_LIMIT:
                break
            del self._inside[oldest]

    def _observe(self, t: float) -> None:
        """Learn the frame interval from capture times; the median shrugs off gaps and jitter."""
        last, self._last_t = self._last_t, t
        if last is None:
            return
        delta = t - last
        if delta > 0:
            window, ordered = self._deltas, self._sorted_deltas
            if len(window) == window.maxlen:
                del ordered[bisect.bisect_left(ordered, window[0])]
            window.append(delta)
            bisect.insort(ordered, delta)
            half, odd = divmod(len(ordered), 2)
            self.frame_interval = ordered[half] if odd else (ordered[half - 1] + ordered[half]) / 2
        elif delta < -_RESTART_S:
            self._next_due = None  # the camera restarted: its old due time means nothing now

    def _due(self, t: float, rate: float, key: bool = False) -> bool:
        """Whether the frame captured at ``t`` is due under ``rate``, on the camera's clock.

        Due times step evenly by 1/rate, so the delivered frames are evenly spaced however the
        decoder bunches its output; a quarter frame of slack keeps pts jitter from skipping one.
        At most one delivery per GOP lands on its keyframe, the one frame of the GOP that needs
        no other to be decoded.
        """
        period = 1.0 / rate
        due = self._next_due
        if due is None or t - due > period:
            # The first frame, or one after a gap: never bank credit for frames that did not come.
            self._next_due = t + period
            return True
        interval = self.frame_interval or 0.0
        slack = 1e-6 + 0.25 * interval
        gop = self.key_interval
        if key and gop is not None and period >= gop - slack:
            if due - slack <= t + gop - interval:  # a delivery is due within this GOP
                self._next_due = t + period
                return True
        if t < due - slack:
            return False
        self._next_due = due + period
        return True

    def _fail(self, msg: Message, reason: str) -> None:
        self.stats.decode_errors += 1
        self.stats.last_error = reason
        log.warning(
            "camera %s: offset %d: %s",
            self.cam_id,
            msg.offset(),
            reason,
            extra={"cam_id": self.cam_id},
        )
        self._deliver(msg.offset(), None, msg)
        if not self._await_keyframe:
            self._await_keyframe = True
            for frame in self._empty():  # held frames come out invalid: see _frame
                self._frame(frame)

    def _empty(self) -> list[av.VideoFrame]:
        """Take out the frames the decoder still holds and reset its references.

        Flushing, unlike reopening, keeps the parameter sets: a camera that sends SPS/PPS only
        once still decodes from its next keyframe.
        """
        try:
            held = self._ctx.decode(None)
            self._ctx.flush_buffers()
        except av.FFmpegError:
            held = []
            self._ctx = self._open()
        self._inside.clear()
        return held


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
