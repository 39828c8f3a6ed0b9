"""Where a decoded frame lands: straight into its camera's slot of a preallocated batch buffer.

A pool holds K buffers of shape (capacity, H, W, C). One of them is *filling*: each camera's
decoder thread converts its newest frame directly into its slot there and pushes the frame's
record (Kafka offset, pts, time) into the camera's lock-free ring. ``seal`` switches the
filling buffer, drains every ring and hands the old buffer out as a :class:`Batch`, which
owns it until released. A camera's lock is held only while its decoder writes and while a
seal switches buffers, so a buffer is never written once it belongs to a Batch.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import av
import numpy as np

from ._ext.ring import FLAG_CORRUPT, SpscRing
from .errors import BatchReleasedError, ComuxTimeoutError, ConfigError, UnknownCameraError

__all__ = [
    "Batch",
    "BatchPool",
    "Allocator",
    "FrameWriter",
    "Policy",
    "Entry",
    "frame_writer",
    "pyav_writer",
]

Entry = tuple[str, int, "np.ndarray | None"]
Policy = Literal["latest", "fifo"]
Allocator = Callable[[tuple[int, ...]], Any]
FrameWriter = Callable[[Any, np.ndarray], None]
"""Write a decoded frame (or an array) into a slot; the slot's shape is the output shape."""

_RING_CAPACITY = 64


def numpy_allocator(shape: tuple[int, ...]) -> np.ndarray:
    return np.empty(shape, np.uint8)


def _as_array(buffer: Any) -> np.ndarray:
    """A uint8 C-contiguous ndarray sharing ``buffer``'s memory (numpy, torch CPU, DLPack)."""
    if isinstance(buffer, np.ndarray):
        array = buffer
    elif hasattr(buffer, "numpy"):
        array = buffer.numpy()  # torch CPU tensors, pinned ones included, share memory this way
    else:
        array = np.from_dlpack(buffer)
    if array.dtype != np.uint8 or not array.flags.c_contiguous:
        raise ConfigError("allocator must return C-contiguous uint8 memory")
    return array


class _Buffer:
    """One pool buffer and the per-slot metadata the seal fills in."""

    __slots__ = ("id", "owner", "frames", "indices", "pts", "timestamps", "valid", "held")

    def __init__(self, ident: int, owner: Any, frames: np.ndarray) -> None:
        self.id = ident
        self.owner = owner  # what the allocator returned, kept alive with the view
        self.frames = frames
        capacity = frames.shape[0]
        self.indices = np.full(capacity, -1, np.int64)
        self.pts = np.full(capacity, -1, np.int64)
        self.timestamps = np.zeros(capacity, np.float64)
        self.valid = np.zeros(capacity, bool)
        self.held = False


@dataclass(eq=False)
class _Camera:
    cam_id: str
    slot: int
    policy: Policy
    ring: SpscRing = field(default_factory=lambda: SpscRing(_RING_CAPACITY))
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_written: int = -1  # id of the buffer holding this camera's newest frame
    pending: deque[tuple[Any, int, int | None]] = field(default_factory=deque)  # fifo only
    paused: bool = False
    started: bool = False
    replaced: int = 0
    stale: int = 0
    overflow: int = 0


class Batch:
    """The newest frame of every camera as one (N, H, W, C) array, plus per-slot metadata.

    Iterating yields ``(cam_id, index, frame or None)`` as the original API did. The memory
    belongs to the pool: :meth:`release` (or leaving a ``with`` block) gives it back, after
    which every accessor raises :class:`BatchReleasedError`. :meth:`copy` detaches.
    """

    __slots__ = ("cam_ids", "_buffer", "_pool", "_n", "_released")

    def __init__(self, cam_ids: list[str], buffer: _Buffer, pool: BatchPool | None) -> None:
        self.cam_ids = cam_ids
        self._buffer = buffer
        self._pool = pool
        self._n = len(cam_ids)
        self._released = False

    def _live(self) -> _Buffer:
        if self._released:
            raise BatchReleasedError("this Batch was released: its memory may hold newer frames")
        return self._buffer

    @property
    def frames(self) -> np.ndarray:
        """(N, H, W, C) uint8, C-contiguous; invalid slots hold stale pixels (see ``valid``)."""
        return self._live().frames[: self._n]

    @property
    def indices(self) -> np.ndarray:
        """Kafka offset of each slot's packet, -1 where the slot is empty."""
        return self._live().indices[: self._n]

    @property
    def valid(self) -> np.ndarray:
        return self._live().valid[: self._n]

    @property
    def timestamps(self) -> np.ndarray:
        """``time.time()`` when each slot's frame was written."""
        return self._live().timestamps[: self._n]

    @property
    def pts(self) -> np.ndarray:
        return self._live().pts[: self._n]

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Entry]:
        buf = self._live()
        for i, cam_id in enumerate(self.cam_ids):
            frame = buf.frames[i] if buf.valid[i] else None
            yield cam_id, int(buf.indices[i]), frame

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self.frames.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self.frames.__dlpack_device__()

    def copy(self) -> Batch:
        """A detached copy that owns its memory and needs no release."""
        buf = self._live()
        n = self._n
        clone = _Buffer(-1, None, buf.frames[:n].copy())
        for name in ("indices", "pts", "timestamps", "valid"):
            getattr(clone, name)[:] = getattr(buf, name)[:n]
        return Batch(list(self.cam_ids), clone, None)

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        """Give the buffer back to the pool; releasing twice is harmless."""
        if self._released:
            return
        self._released = True
        if self._pool is not None:
            self._pool._give_back(self._buffer)

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else f"{int(self.valid.sum())}/{self._n} valid"
        return f"<Batch {self._n} cameras, {state}>"


class BatchPool:
    """K preallocated batch buffers, the cameras' slots in them, and the batching policy.

    :param frame_shape: shape of one output frame, e.g. (H, W, 3).
    :param buffers: K; a Batch held by the caller keeps one buffer, one more is filling.
    :param capacity: initial slot count; grows (new buffers, held ones untouched) as cameras come.
    :param max_wait: release a batch this many seconds after its first frame even if some
        cameras have none yet (None: wait for every camera, or the caller's timeout).
    :param max_staleness: frames older than this many seconds leave their slot empty (counted).
    :param repeat_last: fill an empty slot with the camera's previous frame (a copy), marked valid.
    :param allocator: ``f(shape) -> uint8 memory`` (numpy, torch, anything DLPack), for example
        pinned memory: ``lambda s: torch.empty(s, dtype=torch.uint8, pin_memory=True)``.
    :param fifo_depth: frames a ``"fifo"`` camera may queue before ``on_backpressure(cam_id,
        True)`` asks to pause its partition; ``on_backpressure(cam_id, False)`` resumes it once
        half have gone. Frames past four times the depth (already fetched) are dropped, counted.
    """

    def __init__(
        self,
        frame_shape: tuple[int, ...],
        *,
        buffers: int = 3,
        capacity: int = 4,
        max_wait: float | None = None,
        max_staleness: float | None = None,
        repeat_last: bool = False,
        allocator: Allocator | None = None,
        writer: FrameWriter | None = None,
        fifo_depth: int = 8,
        on_backpressure: Callable[[str, bool], None] | None = None,
    ) -> None:
        if fifo_depth < 1:
            raise ConfigError(f"fifo_depth must be >= 1, got {fifo_depth}")
        if buffers < 2:
            raise ConfigError(f"buffers must be >= 2 (one filling, one handed out), got {buffers}")
        for name, value in (("max_wait", max_wait), ("max_staleness", max_staleness)):
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0 seconds or None, got {value!r}")
        self.frame_shape = tuple(frame_shape)
        self.max_wait = max_wait
        self.max_staleness = max_staleness
        self.repeat_last = repeat_last
        self._allocator = allocator or numpy_allocator
        self._writer = writer
        self.fifo_depth = fifo_depth
        self.on_backpressure = on_backpressure
        self._count = buffers
        self._cond = threading.Condition()
        self._seal_lock = threading.Lock()
        self._cameras: dict[str, _Camera] = {}
        self._order: list[_Camera] = []  # slot order
        self._next_id = 0
        self._capacity = 0
        self._buffers: list[_Buffer] = []
        self._grow(max(1, capacity))
        self._filling = self._buffers[0]
        self._first_frame_at: float | None = None
        self.batches = 0
        self.bytes_copied = 0

    # -- memory ------------------------------------------------------------------------------

    def _allocate(self) -> _Buffer:
        shape = (self._capacity, *self.frame_shape)
        owner = self._allocator(shape)
        frames = _as_array(owner)
        if frames.shape != shape:
            raise ConfigError(f"allocator returned shape {frames.shape}, expected {shape}")
        self._next_id += 1
        return _Buffer(self._next_id, owner, frames)

    def _grow(self, capacity: int) -> None:
        """Replace the free buffers with bigger ones; held ones are replaced on release."""
        self._capacity = capacity
        kept = [b for b in self._buffers if b.held]
        self._buffers = kept + [self._allocate() for _ in range(self._count - len(kept))]

    def _give_back(self, buffer: _Buffer) -> None:
        with self._cond:
            buffer.held = False
            if buffer.frames.shape[0] != self._capacity and buffer in self._buffers:
                self._buffers.remove(buffer)
                self._buffers.append(self._allocate())
            self._cond.notify_all()

    # -- cameras -----------------------------------------------------------------------------

    def _all_locks(self) -> list[threading.Lock]:
        return [cam.lock for cam in self._order]

    def add(self, cam_id: str, policy: Policy = "latest") -> None:
        """Give ``cam_id`` the next slot; the next batch has one more camera."""
        if policy not in ("latest", "fifo"):
            raise ConfigError(f"policy must be 'latest' or 'fifo', got {policy!r}")
        with self._seal_lock, self._cond:
            if cam_id in self._cameras:
                self._cameras[cam_id].policy = policy
                return
            locks = self._all_locks()
            for lock in locks:
                lock.acquire()
            try:
                if len(self._order) >= self._capacity:
                    old = self._filling
                    self._grow(max(2 * self._capacity, len(self._order) + 1))
                    self._filling = self._free_buffer()
                    self._move_written(old, self._filling)
                cam = _Camera(cam_id, len(self._order), policy)
                self._cameras[cam_id] = cam
                self._order.append(cam)
            finally:
                for lock in locks:
                    lock.release()

    def remove(self, cam_id: str) -> None:
        """Drop ``cam_id``'s slot; the last camera moves into it so slots stay dense."""
        with self._seal_lock, self._cond:
            cam = self._cameras.get(cam_id)
            if cam is None:
                return
            locks = self._all_locks()
            for lock in locks:
                lock.acquire()
            try:
                del self._cameras[cam_id]
                last = self._order.pop()
                if last is not cam:
                    if last.last_written == self._filling.id:
                        self._filling.frames[cam.slot] = self._filling.frames[last.slot]
                        self.bytes_copied += self._filling.frames[0].nbytes
                    last.slot = cam.slot
                    self._order[cam.slot] = last
            finally:
                for lock in locks:
                    lock.release()
            self._cond.notify_all()

    def _move_written(self, old: _Buffer, new: _Buffer) -> None:
        """After growing: carry frames already written into the old filling buffer across."""
        for cam in self._order:
            if cam.last_written == old.id:
                new.frames[cam.slot] = old.frames[cam.slot]
                cam.last_written = new.id
                self.bytes_copied += old.frames[0].nbytes

    def cameras(self) -> list[str]:
        return [cam.cam_id for cam in self._order]

    def __contains__(self, cam_id: str) -> bool:
        return cam_id in self._cameras

    # -- writing (decoder threads) -----------------------------------------------------------

    def write(self, cam_id: str, frame: Any, index: int, pts: int | None = None) -> bool:
        """Write ``frame`` into the camera's slot of the filling buffer; False if it is gone.

        ``frame`` is whatever the pool's writer takes (a PyAV frame), or None for a packet that
        failed to decode: the slot is then left empty and the record says so. A ``"fifo"``
        camera whose slot is taken queues the frame for the next batch instead.
        """
        cam = self._cameras.get(cam_id)
        if cam is None:
            return False
        pause = False
        with cam.lock:
            if self._cameras.get(cam_id) is not cam:
                return False
            # Only a camera that had nothing waiting can make a batch ready: wake the sealer
            # for those, not for every newer frame replacing an older one.
            fresh = len(cam.ring) == 0
            if cam.policy == "fifo" and (cam.pending or not fresh):
                if len(cam.pending) >= 4 * self.fifo_depth:
                    cam.pending.popleft()
                    cam.overflow += 1
                cam.pending.append((frame, index, pts))
                pause = len(cam.pending) >= self.fifo_depth and not cam.paused
                cam.paused = cam.paused or pause
            else:
                self._write_locked(cam, frame, index, pts)
        if pause and self.on_backpressure is not None:
            self.on_backpressure(cam_id, True)
        if fresh:
            with self._cond:
                if self._first_frame_at is None:
                    self._first_frame_at = time.monotonic()
                self._cond.notify_all()
        return True

    def _write_locked(self, cam: _Camera, frame: Any, index: int, pts: int | None) -> None:
        buf = self._filling
        if frame is not None:
            slot = buf.frames[cam.slot]
            if self._writer is not None:
                self._writer(frame, slot)
            else:
                np.copyto(slot, frame)
            cam.last_written = buf.id
        cam.started = True
        flags = 0 if frame is not None else FLAG_CORRUPT
        record = (index, -1 if pts is None else pts, time.time(), buf.id, flags)
        if not cam.ring.push(*record):
            # Only one buffer's records are ever in a ring: the older ones are superseded.
            cam.replaced += len(cam.ring)
            while cam.ring.pop() is not None:
                pass
            cam.ring.push(*record)

    # -- sealing (the model's thread) --------------------------------------------------------

    def _ready(self) -> bool:
        # A camera counts once it has sent its first frame: one just added must not stall
        # the others' batches while it waits for a keyframe.
        live = [cam for cam in self._order if cam.started]
        fresh = sum(1 for cam in live if len(cam.ring))
        if live and fresh == len(live):
            return True
        if fresh and self.max_wait is not None and self._first_frame_at is not None:
            return time.monotonic() - self._first_frame_at >= self.max_wait
        return False

    def _free_buffer(self) -> _Buffer:
        for buf in self._buffers:
            if not buf.held and buf is not self._filling:
                return buf
        raise ComuxTimeoutError("no free batch buffer")  # the caller waits for one first

    def seal(self, timeout: float | None = None) -> Batch | None:
        """Wait for a batch by the policy, or ``timeout``; None if no camera had a frame."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._seal_lock:
            with self._cond:
                while not self._ready():
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    wait = remaining
                    if self.max_wait is not None and self._first_frame_at is not None:
                        due = self._first_frame_at + self.max_wait - time.monotonic()
                        wait = due if wait is None else min(wait, due)
                    self._cond.wait(None if wait is None else max(wait, 0.0005))
                if not self._any_fresh():
                    return None
                while not any(not b.held and b is not self._filling for b in self._buffers):
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise ComuxTimeoutError(
                            f"all {self._count} batch buffers are held: release() batches "
                            "sooner or give the pool more buffers"
                        )
                    self._cond.wait(remaining)
                new = self._free_buffer()
            locks = self._all_locks()
            for lock in locks:
                lock.acquire()
            try:
                old = self._filling
                self._filling = new
                cam_ids = [cam.cam_id for cam in self._order]
                self._drain(old)
                old.held = True
                resumed = self._write_pending()
                with self._cond:
                    self._first_frame_at = time.monotonic() if self._any_fresh() else None
            finally:
                for lock in locks:
                    lock.release()
            if self.on_backpressure is not None:
                for cam_id in resumed:
                    self.on_backpressure(cam_id, False)
            self.batches += 1
            return Batch(cam_ids, old, self)

    def _any_fresh(self) -> bool:
        return any(len(cam.ring) for cam in self._order)

    def _write_pending(self) -> list[str]:
        """Move each fifo camera's oldest queued frame into the new filling buffer."""
        resumed = []
        for cam in self._order:
            if not cam.pending:
                continue
            self._write_locked(cam, *cam.pending.popleft())
            if cam.paused and len(cam.pending) <= self.fifo_depth // 2:
                cam.paused = False
                resumed.append(cam.cam_id)
        return resumed

    def _drain(self, buf: _Buffer) -> None:
        now = time.time()
        for cam in self._order:
            i = cam.slot
            latest = cam.ring.pop_latest()
            buf.valid[i] = False
            buf.indices[i] = -1
            if latest is None:
                if self.repeat_last and cam.last_written not in (-1, buf.id):
                    self._repeat(cam, buf)
                continue
            (index, pts, stamp, _buf_id, flags), dropped = latest
            cam.replaced += dropped
            buf.indices[i] = index
            buf.pts[i] = pts
            buf.timestamps[i] = stamp
            if flags & FLAG_CORRUPT:
                continue  # decode failure: index kept, no frame
            if self.max_staleness is not None and now - stamp > self.max_staleness:
                cam.stale += 1
                continue
            buf.valid[i] = True

    def _repeat(self, cam: _Camera, buf: _Buffer) -> None:
        source = next((b for b in self._buffers if b.id == cam.last_written), None)
        if source is None:
            return
        buf.frames[cam.slot] = source.frames[cam.slot]
        buf.valid[cam.slot] = True
        buf.indices[cam.slot] = source.indices[cam.slot]
        buf.timestamps[cam.slot] = source.timestamps[cam.slot]
        self.bytes_copied += buf.frames[0].nbytes

    def take(self, cam_id: str, timeout: float | None = None) -> Entry | None:
        """Copy out ``cam_id``'s newest frame, leaving its slot of the next batch empty."""
        cam = self._cameras.get(cam_id)
        if cam is None:
            raise UnknownCameraError(cam_id)
        with self._cond:
            if not self._cond.wait_for(
                lambda: self._cameras.get(cam_id) is not cam or len(cam.ring) > 0, timeout
            ):
                return None
        with cam.lock:
            latest = cam.ring.pop_latest()
            if latest is None or self._cameras.get(cam_id) is not cam:
                return None
            (index, _pts, _stamp, _buf, flags), dropped = latest
            cam.replaced += dropped
            if flags & FLAG_CORRUPT:
                return cam_id, index, None
            frame = self._filling.frames[cam.slot].copy()
            cam.last_written = -1
        self.bytes_copied += frame.nbytes
        return cam_id, index, frame

    def counters(self, cam_id: str) -> dict[str, int]:
        cam = self._cameras.get(cam_id)
        if cam is None:
            raise UnknownCameraError(cam_id)
        return {
            "replaced": cam.replaced,
            "stale": cam.stale,
            "queued": len(cam.pending),
            "overflow": cam.overflow,
        }


def pyav_writer(pix_fmt: str) -> FrameWriter:
    """The pure-Python reference writer: swscale through PyAV, then one copy into the slot."""

    def write(frame: Any, out: np.ndarray) -> None:
        if isinstance(frame, av.VideoFrame):
            frame = frame.to_ndarray(format=pix_fmt)
        np.copyto(out, frame)

    return write


def frame_writer(pix_fmt: str) -> FrameWriter:
    """Convert decoded frames straight into their slot with the compiled kernels.

    What the kernels do not cover (10-bit, 4:2:2, odd nv12 sizes, ...) goes through swscale and
    one copy, decided per frame before any pixel is written.
    """
    from ._ext.convert import SUPPORTED_INPUTS, write_frame

    fallback = pyav_writer(pix_fmt)

    def write(frame: Any, out: np.ndarray) -> None:
        if isinstance(frame, av.VideoFrame) and frame.format.name in SUPPORTED_INPUTS:
            try:
                write_frame(frame, out, pix_fmt)  # type: ignore[arg-type]
                return
            except ConfigError:  # refused before writing anything
                pass
        fallback(frame, out)

    return write
