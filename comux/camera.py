"""One camera: its queue of packets, its decoder, its rows in the batches and its counters.

Data flows one way. The poll thread appends each run of messages to the camera's queue
(:meth:`Camera.offer_run`); a decode thread, one at a time, decodes them (:meth:`Camera.run`)
straight into the camera's rows of the batch buffers; the sealer hands the rows out.
Backpressure runs the other way without dropping anything: a full queue pauses the camera's
partition, and a fifo camera whose rows are all taken keeps its decoded frames and stops
decoding until a buffer opens.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import av

from .batching import BatchPool, CameraRows, Policy
from .decoding import CameraDecoder, DecoderConfig, Message, PacketCache
from .offsets import OffsetLedger

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["Camera", "Scheduler"]

log = logging.getLogger("comux.camera")

_BURST = 8  # packets decoded per turn, so cameras take turns at the decode threads
_RESET: Any = object()  # in the inbox: the partition was revoked; what follows is a new start
IDLE, QUEUED, RUNNING, AGAIN = range(4)  # a camera's turn: see consuming.DecodePool
REPLAY_SILENCE, LIVE_SILENCE = 0.2, 1.0  # see Camera.silent_for


class Scheduler(Protocol):
    """The decode threads: they give a camera a turn at :meth:`Camera.run`."""

    def schedule(self, camera: Camera) -> None: ...


class Camera:
    """Everything comux keeps for one camera, owned by one object.

    :param depth: packets that may wait for the decoder before the partition is paused.
    :param max_bytes: the same bound in bytes, whichever comes first.
    """

    def __init__(
        self,
        cam_id: str,
        topic: str,
        config: DecoderConfig,
        pool: BatchPool,
        *,
        policy: Policy,
        depth: int,
        max_bytes: int,
    ) -> None:
        self.cam_id = cam_id
        self.topic = topic
        self.policy: Policy = policy
        self.depth = depth
        self.max_bytes = max_bytes
        self.inbox_bytes = 0
        self.pool = pool
        self.decoder = CameraDecoder(cam_id, config, self._deliver)
        self.cache = PacketCache()
        self.ledger = OffsetLedger()
        self.inbox: deque[Message] = deque()
        self._held: deque[tuple[av.VideoFrame | None, int, int | None]] = deque()
        self.scheduler: Scheduler | None = None
        self.thread: Any = None  # the decode thread of its last turn
        self.turn = IDLE
        self.fetch_paused = False  # by backpressure, set by the poll thread
        self.user_paused = False
        self.armed = False  # max_offset_diff applies (from the start, or once caught up)
        self.assigned = False  # its partition is assigned to this process
        # Set first thing on revocation: under exactly-once, results sent from then on belong
        # to the next owner, which reads the frame again (``revoked_sends`` counts them).
        self.leaving = False
        self.revoked_sends = 0
        self._resetting = False  # revoked: the ledger is stale until the decoder has reset
        self.on_fetch: Callable[[Camera], None] | None = None  # asks the poll thread to resume
        self.last_packet_at = time.monotonic()
        self.arrival_gap = 1.0  # seconds between packets, smoothed
        self.flush_due = False  # its topic ended: hand out what the decoder holds back
        self.end_offset = -1  # its partition's end as the last fetch saw it (poll thread)
        self.decode_seconds = 0.0  # time in the decoder, conversion into the rows included
        self.closed = False
        # Out of the batches until its partition is assigned to this process: a camera that
        # another worker of the group reads never takes a slot here.
        self.rows = CameraRows(cam_id, -1, policy)

    def __repr__(self) -> str:
        return f"<Camera {self.cam_id!r} {self.policy} queued={len(self.inbox)}>"

    def _join(self) -> CameraRows:
        rows = self.pool.add(self.cam_id, self.policy)
        if rows is not self.rows:
            rows.carry_counters(self.rows)  # they run on across a pause or a rebalance
        rows.on_room = self.wake
        rows.on_replaced = self.ledger.drop
        self.decoder.demand = self.pool.next_take if self.policy == "latest" else None
        return rows

    def wake(self) -> None:
        """Give the camera a turn at the decode threads."""
        if self.scheduler is not None:
            self.scheduler.schedule(self)

    # -- settings ----------------------------------------------------------------------------

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        if self.rows.slot >= 0:  # a paused camera takes it when it joins again
            self.rows = self._join()

    def leave_batches(self) -> None:
        """Take the row out of the batches (pause); frames decoded meanwhile are counted."""
        self.pool.remove(self.cam_id)
        self.ledger.drop_unsent()

    @property
    def committable(self) -> bool:
        """Whether its ledger speaks for its partition now."""
        return self.assigned and not self._resetting and not self.closed

    def revoked(self) -> None:
        """Its partition went to another process (poll thread): leave the batches, start afresh.

        The decode thread resets the decoder and the ledger when it reaches the marker, so that
        packets of a later assignment are never decoded against the old references.
        """
        self._resetting = True
        if self.rows.slot >= 0:
            self.pool.remove(self.cam_id)
        self.inbox.append(_RESET)
        self.wake()

    def join_batches(self) -> None:
        self.rows = self._join()
        self.wake()

    def close(self) -> None:
        self.closed = True
        self.pool.remove(self.cam_id)
        self.decoder.closed = True

    # -- poll thread -------------------------------------------------------------------------

    def offer_run(self, msgs: list[Message]) -> bool:
        """Queue consecutive messages of its topic, one wake-up for all; True: pause it."""
        self.inbox.extend(msgs)
        self.inbox_bytes += sum(len(msg.value() or b"") for msg in msgs)
        now = time.monotonic()
        # The smoothed gap as if each had come alone: the first after the wait, the rest at once.
        gap = 0.9 * self.arrival_gap + 0.1 * (now - self.last_packet_at)
        self.arrival_gap = gap * 0.9 ** (len(msgs) - 1)
        self.last_packet_at = now
        if self.scheduler is not None:
            self.scheduler.schedule(self)
        return len(self.inbox) >= self.depth or self.inbox_bytes >= self.max_bytes

    def silent_for(self) -> float:
        """Seconds without a packet after which its stream counts as stopped.

        A backlog read faster than real time has ended when packets stop for a moment; a live
        camera gets a second, since a network hiccup must not cost it a GOP.
        """
        interval = self.decoder.frame_interval
        if interval and self.arrival_gap < interval / 2:
            return min(REPLAY_SILENCE, max(0.02, 3 * interval))
        return LIVE_SILENCE

    # -- decode worker -----------------------------------------------------------------------

    def run(self) -> None:
        """Decode a few queued packets; stop early while a fifo camera has no free row."""
        if self.closed:
            self.inbox.clear()
            self.inbox_bytes = 0
            self._held.clear()
            return
        if not self._publish_held():
            return
        for _ in range(_BURST):
            try:
                msg = self.inbox.popleft()
            except IndexError:
                break
            if msg is _RESET:
                self._reset()
                continue
            self.inbox_bytes -= len(msg.value() or b"")
            began = time.perf_counter()
            self.decoder.decode(msg)
            self.decode_seconds += time.perf_counter() - began
            self.ledger.decoded(self.decoder.frontier(), self.decoder.last_key_offset)
            if self._held:
                break
        if self.flush_due and not self.inbox and not self._held:
            self.flush_due = False
            self.decoder.flush()
        if self.fetch_paused and self.on_fetch and self._has_room():
            self.on_fetch(self)
        if self.inbox and not self._held:
            self.wake()

    def _reset(self) -> None:
        self._held.clear()
        self.decoder.restart()
        self.ledger.reset()
        self._resetting = _RESET in self.inbox

    def _has_room(self) -> bool:
        # Resume at half: refetching after a pause takes a few fetch round trips, which the
        # other half covers, so the decoder never starves on a backlog.
        return len(self.inbox) <= self.depth // 2 and self.inbox_bytes <= self.max_bytes // 2

    def _deliver(self, index: int, frame: av.VideoFrame | None, msg: Message) -> None:
        self.cache.put(index, msg)
        self.ledger.hold(index)
        item = (frame, index, None if frame is None else frame.pts)
        if self._held or not self._publish(item):
            self._held.append(item)

    def _publish(self, item: tuple[av.VideoFrame | None, int, int | None]) -> bool:
        """Hand one frame to the batches; False when it has to wait for a free row."""
        rows = self.rows
        interval, last = self.decoder.frame_interval, rows.last_frame_at
        # Sooner after the previous frame than half the capture interval: the same burst.
        burst = bool(interval and last is not None and time.monotonic() - last < interval / 2)
        result = self.pool.publish(rows, *item, burst=burst)
        if result == "full":
            rows.blocked = True  # set before looking again, so an opening buffer wakes us
            result = self.pool.publish(rows, *item, burst=burst)
            if result == "full":
                return False
            rows.blocked = False
        if result == "gone":
            self.decoder.stats.not_batched += 1  # paused or deleted while it decoded
            self.ledger.drop(item[1])
        return True

    def _publish_held(self) -> bool:
        while self._held:
            if not self._publish(self._held[0]):
                return False
            self._held.popleft()
        return True

    # -- numbers -----------------------------------------------------------------------------

    def stats(self) -> Mapping[str, Any]:
        counters: dict[str, Any] = dict(self.decoder.stats.as_dict())
        counters.update(self.rows.counters())
        decoded = counters["frames"]
        counters["batched_fraction"] = (
            round(counters["in_batches"] / decoded, 4) if decoded else None
        )
        counters["queued"] = len(self.inbox) + len(self._held)
        counters["fetch_paused"] = self.fetch_paused
        ledger = self.ledger
        counters["committed"] = ledger.committed  # the next offset to read after a restart
        counters["awaiting_delivery"] = len(ledger)  # frames not done yet: in batches or sent
        counters["delivery_failed"] = ledger.delivery_failed
        counters["untracked_sends"] = ledger.untracked_sends
        counters["revoked_sends"] = self.revoked_sends
        counters["decode_seconds"] = round(self.decode_seconds, 6)
        counters.update(self.lag())
        counters["assigned"] = self.assigned
        counters["paused"] = self.user_paused
        counters["silent"] = self.rows.silent
        return counters

    def lag(self) -> dict[str, Any]:
        """How far behind the end of its topic the camera is (None: not known yet).

        ``lag_messages``: the partition's end, as the last fetch saw it, minus the last offset
        given to the decoder; ``lag_seconds``: that many messages at the camera's learned frame
        interval (its own clock, so no clock sync is needed); ``commit_lag``: messages a restart
        from the committed offset would read again.
        """
        end, last, committed = self.end_offset, self.decoder.last_offset, self.ledger.committed
        behind = max(0, end - 1 - last) if end >= 0 and last >= 0 else None
        interval = self.decoder.frame_interval
        seconds = None
        if behind is not None and (interval or not behind):
            seconds = round(behind * (interval or 0.0), 3)
        return {
            "end_offset": end,
            "lag_messages": behind,
            "lag_seconds": seconds,
            "commit_lag": max(0, end - committed) if end >= 0 and committed >= 0 else None,
        }
