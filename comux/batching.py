"""Where a decoded frame lands: straight into its camera's row of a preallocated batch buffer.

A pool holds K buffers of shape (capacity, H, W, C). The buffers not held by the caller are
*open*, each numbered with the sequence number of the batch it will become; the lowest is the
*filling* one, sealed next. Each camera owns one row (its slot) in every buffer, so its rows
across the open buffers form a ring: the camera's decoder thread produces into it and the
sealer consumes from it. A ``"latest"`` camera writes its newest frame into its row of the
filling buffer, replacing an older one; a ``"fifo"`` camera writes each frame into its row of
the next open buffer, so queued frames are converted by the decoders, never by the sealer.

The hand-off takes no lock and lives in the compiled core (``_ext/ring.pyx``, protocol in
``ring.h``): a writer claims the row of the buffer it is about to write and then checks that
the buffer is still open under the same number; the sealer closes a buffer first and then waits
for any writer that claimed it. C atomics order both sides, so a buffer is never written once it
belongs to a Batch, with or without the GIL. Adding, removing or moving a camera freezes only
the rows it touches, for one row copy. Decoders take the sealer's condition only to wake it:
with a batch's first frame and with the frame the sealer waits for (each buffer counts its
written rows; the sealer says how many it waits for).

The rows are the ring: a separate ring of frame records beside them would only say what the
rows' own metadata already says, and under ``"latest"`` a record cannot be replaced in place by
its producer, so keeping it would need the lock this design does without.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import av
import numpy as np

from .backend import BACKEND, BACKENDS, Backend
from .errors import BatchReleasedError, ComuxTimeoutError, ConfigError, UnknownCameraError

if TYPE_CHECKING or BACKEND == "reference":
    from . import ring as _ring
else:
    from ._ext import ring as _ring

__all__ = [
    "Allocator",
    "Batch",
    "BatchPool",
    "CameraRows",
    "Entry",
    "FrameWriter",
    "Policy",
    "Publish",
    "compiled_writer",
    "frame_writer",
    "pyav_writer",
]

log = logging.getLogger("comux.batching")

Entry = tuple[str, int, "np.ndarray | None"]
Policy = Literal["latest", "fifo"]
Publish = Literal["written", "full", "gone"]
"""What became of a frame handed to :meth:`BatchPool.publish`."""
Allocator = Callable[[tuple[int, ...]], Any]
FrameWriter = Callable[[Any, np.ndarray], None]
"""Write a decoded frame (or an array) into a slot; the slot's shape is the output shape."""

POLICIES: tuple[str, ...] = ("latest", "fifo")
_STALL_MIN, _STALL_MAX = 0.05, 1.0  # bounds of the learned stall timeout, seconds
_STALL_INTERVALS = 3  # a camera is silent after this many of its frame intervals


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


class _Buffer(_ring.Buffer):
    """One pool buffer and its per-row metadata, written by each row's own camera."""

    __slots__ = ()

    def reset(self) -> None:
        self.indices.fill(-1)
        self.pts.fill(-1)
        self.valid.fill(False)
        self.written.fill(False)
        self.corrupt.fill(False)

    def copy_row(self, src: int, dst: int, into: _Buffer | None = None) -> None:
        out = self if into is None else into
        if self.written[src]:
            out.frames[dst] = self.frames[src]
        for name in ("indices", "pts", "timestamps", "written", "corrupt"):
            getattr(out, name)[dst] = getattr(self, name)[src]


class CameraRows(_ring.Rows):
    """One camera's rows in the pool's buffers and what the batches did with its frames.

    Its side of the hand-off (slot, claim, next batch) is the ring's :class:`Rows`. The decoder
    thread of the camera is the only writer of the frame clock; the pool's other threads only
    read it.
    """

    def __init__(self, cam_id: str, slot: int, policy: Policy) -> None:
        self.cam_id = cam_id
        self.slot = slot  # -1 once removed
        self.policy = policy
        self.blocked = False  # fifo: waits for a buffer to open
        self.on_room: Callable[[], None] | None = None
        self.on_replaced: Callable[[int], None] | None = None  # gets the replaced frame's index
        self.last_frame_at: float | None = None  # monotonic; None until the first frame
        self.interval: float | None = None  # learned seconds between frames
        self.holding = True  # a live camera holds batches back until it falls quiet
        self.silent = False  # quiet for several of its own frame intervals: counted
        self.last_valid: np.ndarray | None = None  # repeat_last only
        self.last_valid_meta: tuple[int, int, float] = (-1, -1, 0.0)
        self.replaced = 0
        self.stale = 0
        self.stalls = 0
        self.stalled_seconds = 0.0
        self.in_batches = 0
        self.invalid_in_batches = 0

    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        self._policy: Policy = policy
        self.fifo = policy == "fifo"

    def carry_counters(self, old: CameraRows) -> None:
        """Take over the counts of the rows this camera had before it left the batches."""
        self.replaced, self.stale = old.replaced, old.stale
        self.stalls, self.stalled_seconds = old.stalls, old.stalled_seconds
        self.in_batches, self.invalid_in_batches = old.in_batches, old.invalid_in_batches

    def counters(self) -> dict[str, Any]:
        stalled = self.stalled_seconds
        if self.silent and self.last_frame_at is not None:
            stalled += time.monotonic() - self.last_frame_at
        return {
            "replaced": self.replaced,
            "stale": self.stale,
            "stalls": self.stalls,
            "stalled_seconds": round(stalled, 3),
            "in_batches": self.in_batches,
            "invalid_in_batches": self.invalid_in_batches,
        }


class Batch:
    """The newest frame of every camera as one (N, H, W, C) array, plus per-slot metadata.

    Iterating yields ``(cam_id, index, frame or None)`` as the original API did. The memory
    belongs to the pool: :meth:`release` (or leaving a ``with`` block) gives it back, after
    which every accessor raises :class:`BatchReleasedError`. :meth:`copy` detaches.
    """

    __slots__ = ("_buffer", "_n", "_pool", "_released", "cam_ids", "on_ack")

    def __init__(self, cam_ids: list[str], buffer: _Buffer, pool: BatchPool | None) -> None:
        self.cam_ids = cam_ids
        self._buffer = buffer
        self._pool = pool
        self._n = len(cam_ids)
        self._released = False
        self.on_ack: Callable[[], None] | None = None

    def ack(self) -> None:
        """Say the model is done with this batch: once its results are delivered, its offsets
        may be committed. The next ``get_batch`` does it too; acking twice is harmless."""
        on_ack, self.on_ack = self.on_ack, None
        if on_ack is not None:
            on_ack()

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
    """K preallocated batch buffers, the cameras' rows in them, and the batching policy.

    :param frame_shape: shape of one output frame, e.g. (H, W, 3).
    :param buffers: K; each Batch held by the caller keeps one, the rest are open for frames.
    :param capacity: initial row count; grows (new buffers, held ones untouched) as cameras come.
    :param max_wait: release a batch this many seconds after its first frame even if some
        cameras have none yet (None: wait for every live camera, or the caller's timeout).
    :param max_staleness: frames older than this many seconds leave their slot empty (counted).
    :param repeat_last: fill an empty slot with the camera's previous frame, marked valid (one
        extra row copy per frame handed out).
    :param allocator: ``f(shape) -> uint8 memory`` (numpy, torch, anything DLPack), for example
        pinned memory: ``lambda s: torch.empty(s, dtype=torch.uint8, pin_memory=True)``.
    :param stall_timeout: a camera with no new frame for this many seconds stops holding
        batches back until its next frame (None: three of its own frame intervals, 0.05-1 s).
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
        stall_timeout: float | None = None,
    ) -> None:
        if not isinstance(buffers, int) or buffers < 2:
            raise ConfigError(f"buffers must be >= 2 (one filling, one handed out), got {buffers}")
        for name, value in (
            ("max_wait", max_wait),
            ("max_staleness", max_staleness),
            ("stall_timeout", stall_timeout),
        ):
            if value is not None and (not isinstance(value, int | float) or not value >= 0):
                raise ConfigError(f"{name} must be >= 0 seconds or None, got {value!r}")
        self.frame_shape = tuple(frame_shape)
        self.max_wait = max_wait
        self.max_staleness = max_staleness
        self.repeat_last = repeat_last
        self.stall_timeout = stall_timeout
        self._allocator = allocator or numpy_allocator
        self._writer: FrameWriter = writer or _copy_into
        self._count = buffers
        self._ring = _ring.Ring(buffers)
        self._cond = threading.Condition()  # wakes the sealer; guards the camera list
        self._consume_lock = threading.Lock()  # one consumer (seal or take) at a time
        self._struct_lock = threading.Lock()  # camera set, buffer set, the sealer's switch
        self._rows: dict[str, CameraRows] = {}
        self._order: list[CameraRows] = []  # slot order
        self._next_id = 0
        self._capacity = max(1, capacity)
        self._buffers = [self._allocate() for _ in range(buffers)]
        self._open: dict[int, _Buffer] = {}
        for buf in self._buffers:
            self._open_buffer(buf)
        self._first_frame_at: float | None = None
        self._closed = False
        self._last_take: float | None = None
        self._take_gaps: deque[float] = deque(maxlen=8)
        self._take_gap: float | None = None  # their median, once there are three
        self.batches = 0
        self.bytes_copied = 0

    @property
    def _filling_seq(self) -> int:
        return self._ring.filling_seq

    def close(self) -> None:
        """Wake a waiting :meth:`seal`, which returns None from now on."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- memory ------------------------------------------------------------------------------

    def _allocate(self) -> _Buffer:
        shape = (self._capacity, *self.frame_shape)
        owner = self._allocator(shape)
        frames = _as_array(owner)
        if frames.shape != shape:
            raise ConfigError(f"allocator returned shape {frames.shape}, expected {shape}")
        self._next_id += 1
        return _Buffer(self._next_id, owner, frames)

    def _open_buffer(self, buf: _Buffer) -> None:
        """Number ``buf`` as the next batch and let writers in (its rows are clean)."""
        buf.reset()
        with self._cond:
            self._open[self._ring.open(buf)] = buf
            self._cond.notify_all()

    def _give_back(self, buffer: _Buffer) -> None:
        with self._struct_lock:
            buffer.held = False
            if buffer.frames.shape[0] != self._capacity:
                self._buffers.remove(buffer)  # the pool grew while it was held
                buffer = self._allocate()
                self._buffers.append(buffer)
            self._open_buffer(buffer)
            waiting = [rows for rows in self._order if rows.blocked]
        for rows in waiting:
            rows.blocked = False
            if rows.on_room is not None:
                rows.on_room()

    def _grow(self, capacity: int) -> None:
        """Move the open buffers into bigger ones; held ones are replaced on release."""
        old_capacity, self._capacity = self._capacity, capacity
        fresh = {seq: self._allocate() for seq in self._open}
        ring = self._ring
        ring.frozen = True
        try:
            for rows in self._order:
                ring.wait_idle(rows)
            for seq, buf in self._open.items():
                new = fresh[seq]
                for slot in range(min(old_capacity, len(self._order))):
                    buf.copy_row(slot, slot, into=new)
                    self.bytes_copied += buf.frames[0].nbytes if buf.written[slot] else 0
                new.filled = buf.filled
                ring.replace(buf, new)
            with self._cond:
                self._buffers = [b for b in self._buffers if b.held] + list(fresh.values())
                self._open = fresh
        finally:
            ring.frozen = False

    # -- cameras -----------------------------------------------------------------------------

    def add(self, cam_id: str, policy: Policy = "latest") -> CameraRows:
        """Give ``cam_id`` the next row (or change its policy); the next batch has it too."""
        if policy not in POLICIES:
            raise ConfigError(f"policy must be 'latest' or 'fifo', got {policy!r}")
        with self._struct_lock:
            rows = self._rows.get(cam_id)
            if rows is not None:
                rows.policy = policy
                return rows
            if len(self._order) >= self._capacity:
                self._grow(max(2 * self._capacity, len(self._order) + 1))
            rows = CameraRows(cam_id, len(self._order), policy)
            rows.next_seq = self._filling_seq
            with self._cond:
                self._rows[cam_id] = rows
                self._order.append(rows)
                self._cond.notify_all()
            return rows

    def remove(self, cam_id: str) -> None:
        """Drop ``cam_id``'s row; the last camera moves into it so rows stay dense."""
        with self._struct_lock:
            rows = self._rows.get(cam_id)
            if rows is None:
                return
            last = self._order[-1]
            rows.frozen = last.frozen = True
            try:
                self._ring.wait_idle(rows)
                self._ring.wait_idle(last)
                for buf in self._open.values():
                    if buf.written[rows.slot]:
                        buf.unfill()
                    if last is not rows:
                        buf.copy_row(last.slot, rows.slot)
                        self.bytes_copied += buf.frames[0].nbytes if buf.written[last.slot] else 0
                    buf.written[last.slot] = False
                with self._cond:
                    del self._rows[cam_id]
                    self._order.pop()
                    if last is not rows:
                        last.slot = rows.slot
                        self._order[rows.slot] = last
                    rows.slot = -1
                    self._cond.notify_all()
            finally:
                rows.frozen = last.frozen = False

    def rows(self, cam_id: str) -> CameraRows:
        rows = self._rows.get(cam_id)
        if rows is None:
            raise UnknownCameraError(cam_id)
        return rows

    def cameras(self) -> list[str]:
        return [rows.cam_id for rows in self._order]

    def __contains__(self, cam_id: str) -> bool:
        return cam_id in self._rows

    def wait_joined(self, cam_id: str, timeout: float | None) -> bool:
        """Wait until ``cam_id`` has rows (its camera joins once its partition is assigned)."""
        with self._cond:
            return self._cond.wait_for(lambda: cam_id in self._rows, timeout)

    # -- writing (decoder threads) -----------------------------------------------------------

    def write(self, cam_id: str, frame: Any, index: int, pts: int | None = None) -> bool:
        """Write ``frame`` into the camera's row; False if the camera is gone or has no room."""
        rows = self._rows.get(cam_id)
        return rows is not None and self.publish(rows, frame, index, pts) == "written"

    def publish(
        self,
        rows: CameraRows,
        frame: Any,
        index: int,
        pts: int | None = None,
        *,
        burst: bool = False,
    ) -> Publish:
        """Write one frame (None: a packet that failed, the row keeps only its index).

        ``"full"``: a fifo camera's rows are all taken; keep the frame, set ``rows.blocked``
        and publish again (``rows.on_room`` is called when a buffer opens).

        A ``"latest"`` camera replaces its newest frame, unless the frame came in a ``burst``
        with the one in the filling buffer (B-frames leave the decoder together) while the model
        waits in :meth:`seal`: then it goes to the next buffer, so a model that keeps up gets
        more than the last of each burst.
        """
        status = self._ring.publish(
            rows, frame, index, -1 if pts is None else pts, burst, self._writer
        )
        if status == _ring.FULL:
            return "full"
        if status == _ring.GONE:
            return "gone"
        if status == _ring.REPLACED:
            rows.replaced += 1
            if rows.on_replaced is not None:
                rows.on_replaced(rows.replaced_index)
        self._tick(rows, wake=status == _ring.WRITTEN_WAKE)
        return "written"

    def _tick(self, rows: CameraRows, wake: bool) -> None:
        """Learn the camera's frame interval; wake the sealer when a batch may be ready."""
        now = time.monotonic()
        last, rows.last_frame_at = rows.last_frame_at, now
        if last is not None:
            gap = min(now - last, 2 * _STALL_MAX)
            # A decaying maximum: B-frame bursts alternate short and long gaps.
            rows.interval = gap if rows.interval is None else max(gap, 0.9 * rows.interval)
        if not wake and rows.holding and not rows.silent:
            return
        with self._cond:
            if rows.silent and last is not None:
                rows.stalled_seconds += now - last
                log.info(
                    "camera %s is back after %.2f s",
                    rows.cam_id,
                    now - last,
                    extra={"cam_id": rows.cam_id},
                )
            rows.holding, rows.silent = True, False
            if self._first_frame_at is None:
                self._first_frame_at = now
            self._cond.notify_all()

    def stall_limit(self, rows: CameraRows) -> float:
        """Seconds without a frame after which ``rows`` stops holding batches back."""
        if self.stall_timeout is not None:
            return self.stall_timeout
        if rows.interval is None:
            return _STALL_MAX
        return min(_STALL_MAX, max(_STALL_MIN, _STALL_INTERVALS * rows.interval))

    def silence_limit(self, rows: CameraRows) -> float:
        """Seconds without a frame after which ``rows`` counts as silent (logged, counted).

        Past the stall limit as long as its own frames come further apart than a second
        (a low ``rate``): such a camera stops holding batches back between its frames
        without being called silent each time.
        """
        if self.stall_timeout is not None or rows.interval is None:
            return self.stall_limit(rows)
        return max(self.stall_limit(rows), _STALL_INTERVALS * rows.interval)

    # -- sealing (the model's thread) --------------------------------------------------------

    def _ready(self, now: float) -> tuple[bool, float | None]:
        """Whether the filling buffer should be sealed, else how long until that may change.

        Also tells the writers how many written rows to wake the sealer at: those written now
        and those of the cameras it waits for.
        """
        buf = self._open[self._filling_seq]
        written = False
        awaited = 0
        wait: float | None = None
        for rows in self._order:
            if buf.written[rows.slot]:
                written = True
                awaited += 1
                continue
            if rows.last_frame_at is None:
                continue  # not started: a camera holds batches back from its first frame
            quiet = now - rows.last_frame_at
            if not rows.silent and quiet >= self.silence_limit(rows):
                rows.silent, rows.holding = True, False
                rows.stalls += 1
                log.warning(
                    "camera %s went silent: no frame for %.2f s",
                    rows.cam_id,
                    quiet,
                    extra={"cam_id": rows.cam_id},
                )
            if rows.holding:
                due = self.stall_limit(rows) - quiet
                if due > 0:
                    wait = due if wait is None else min(wait, due)
                    awaited += 1
                else:
                    rows.holding = False
        self._ring.wake_at = awaited
        if not written or wait is None:
            return written, None
        if self.max_wait is not None and self._first_frame_at is not None:
            left = self._first_frame_at + self.max_wait - now
            if left <= 0:
                return True, None
            wait = min(wait, left)
        return False, wait

    def seal(self, timeout: float | None = None) -> Batch | None:
        """Wait for a batch by the policy, or ``timeout``; None if no camera had a frame."""
        deadline = None if timeout is None else time.monotonic() + timeout
        looked_at = -1
        with self._consume_lock:
            with self._cond:
                while True:
                    if self._closed:
                        return None
                    now = time.monotonic()
                    ready, wait = self._ready(now)
                    if ready:
                        break
                    if deadline is not None:
                        if deadline <= now:
                            break
                        wait = deadline - now if wait is None else min(wait, deadline - now)
                    filled = self._open[self._filling_seq].filled
                    if filled >= self._ring.wake_at > 0 and filled != looked_at:
                        looked_at = filled  # written after _ready looked, by a writer that
                        continue  # saw the old wake_at and so did not wake us
                    self._ring.model_waiting = True
                    try:
                        self._cond.wait(None if wait is None else max(wait, 0.0005))
                    finally:
                        self._ring.model_waiting = False
                if not ready and not self._open[self._filling_seq].written.any():
                    return None
                while self._filling_seq + 1 not in self._open:
                    if self._closed:
                        return None
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise ComuxTimeoutError(
                            f"all {self._count} batch buffers are held: release() batches "
                            "sooner or give the pool more buffers"
                        )
                    self._cond.wait(remaining)
            with self._struct_lock:
                with self._cond:
                    old = self._open.pop(self._filling_seq)
                    self._ring.seal()
                self._ring.wait_writers(self._order, old)
                self._ring.collect(self._order)
                cam_ids = [rows.cam_id for rows in self._order]
                self._finish(old)
                old.held = True
                new = self._open[self._filling_seq]
                with self._cond:
                    self._first_frame_at = time.monotonic() if new.written.any() else None
            self.batches += 1
            self._learn_take(time.monotonic())
            return Batch(cam_ids, old, self)

    @property
    def waiting_since(self) -> float | None:
        """When the first frame of the batch now filling arrived (monotonic); None: no frame."""
        return self._first_frame_at

    def _learn_take(self, now: float) -> None:
        last, self._last_take = self._last_take, now
        if last is not None:
            self._take_gaps.append(now - last)
            if len(self._take_gaps) >= 3:
                self._take_gap = statistics.median(self._take_gaps)

    def next_take(self) -> tuple[float, float] | None:
        """When the model is expected to take its next batch, and its usual interval (monotonic).

        From the median of the last few intervals between batches; None until there are some.
        """
        last, gap = self._last_take, self._take_gap
        if last is None or gap is None:
            return None
        return last + gap, gap

    def _finish(self, buf: _Buffer) -> None:
        """Decide each slot's validity; count what the batch hands out."""
        now = time.time()
        for rows in self._order:
            i = rows.slot
            ok = bool(buf.written[i] and not buf.corrupt[i])
            if (
                ok
                and self.max_staleness is not None
                and now - buf.timestamps[i] > self.max_staleness
            ):
                rows.stale += 1
                ok = False
            buf.valid[i] = ok
            if ok:
                rows.in_batches += 1
                if self.repeat_last:
                    if rows.last_valid is None:
                        rows.last_valid = np.empty_like(buf.frames[i])
                    np.copyto(rows.last_valid, buf.frames[i])
                    rows.last_valid_meta = (
                        int(buf.indices[i]),
                        int(buf.pts[i]),
                        float(buf.timestamps[i]),
                    )
                    self.bytes_copied += buf.frames[i].nbytes
            elif buf.written[i]:
                rows.invalid_in_batches += 1
            elif self.repeat_last and rows.last_valid is not None:
                buf.frames[i] = rows.last_valid
                buf.indices[i], buf.pts[i], buf.timestamps[i] = rows.last_valid_meta
                buf.valid[i] = True
                self.bytes_copied += buf.frames[i].nbytes
            else:
                # Empty: not the index a taken frame or a removed camera left in the row.
                buf.indices[i] = buf.pts[i] = -1

    def take(self, cam_id: str, timeout: float | None = None) -> Entry | None:
        """Copy out ``cam_id``'s next frame, leaving its slot of the next batch empty."""
        rows = self.rows(cam_id)
        with self._cond:
            if not self._cond.wait_for(
                lambda: rows.slot < 0 or bool(self._open[self._filling_seq].written[rows.slot]),
                timeout,
            ):
                return None
        with self._consume_lock, self._struct_lock:
            slot = rows.slot
            if slot < 0:
                return None
            rows.frozen = True
            try:
                self._ring.wait_idle(rows)
                buf = self._open[self._filling_seq]
                if not buf.written[slot]:
                    return None
                index = int(buf.indices[slot])
                frame = None if buf.corrupt[slot] else buf.frames[slot].copy()
                self._close_gap(rows, slot)
                woken, rows.blocked = rows.blocked, False
            finally:
                rows.frozen = False
        if woken and rows.on_room is not None:
            rows.on_room()
        if frame is None:
            return cam_id, index, None
        self.bytes_copied += frame.nbytes
        return cam_id, index, frame

    def _close_gap(self, rows: CameraRows, slot: int) -> None:
        """Move the camera's later frames one buffer down, over the frame just taken.

        Its frames stay in consecutive buffers from the filling one, so the next take or seal
        finds them (a gap would hide them for good), and a full fifo camera gets a row back.
        Call with the rows frozen and the consume and struct locks held.
        """
        seq = self._filling_seq
        buf = self._open[seq]
        while (later := self._open.get(seq + 1)) is not None and later.written[slot]:
            later.copy_row(slot, slot, into=buf)
            self.bytes_copied += buf.frames[slot].nbytes
            buf, seq = later, seq + 1
        buf.written[slot] = False
        buf.unfill()
        rows.next_seq = seq  # the row just emptied: fifo writes there, latest one before

    def counters(self, cam_id: str) -> dict[str, Any]:
        return self.rows(cam_id).counters()


def _copy_into(frame: Any, out: np.ndarray) -> None:
    np.copyto(out, frame)


def pyav_writer(pix_fmt: str) -> FrameWriter:
    """The pure-Python reference writer: swscale through PyAV, then one copy into the slot."""

    def write(frame: Any, out: np.ndarray) -> None:
        if isinstance(frame, av.VideoFrame):
            frame = frame.to_ndarray(format=pix_fmt)
        np.copyto(out, frame)

    return write


def compiled_writer(pix_fmt: str) -> FrameWriter:
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


def frame_writer(pix_fmt: str, *, backend: Backend | None = None) -> FrameWriter:
    """The frame writer of ``backend``: :func:`compiled_writer` or :func:`pyav_writer`.

    :param pix_fmt: the slot's pixel format: "rgb24", "bgr24", "gray" or "yuv420p".
    :param backend: "compiled" or "reference"; None: the one ``COMUX_BACKEND`` chose
        (:data:`comux.backend.BACKEND`).

    Example::

        pool = BatchPool((240, 320, 3), writer=frame_writer("rgb24"))
    """
    chosen = BACKEND if backend is None else backend
    if chosen == "compiled":
        return compiled_writer(pix_fmt)
    if chosen == "reference":
        return pyav_writer(pix_fmt)
    raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {chosen!r}")
