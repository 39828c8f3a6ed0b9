"""Which of a camera's input offsets are done, so that a commit never passes an undelivered result.

A frame is done when the model has moved past its batch (the next ``get_batch``, or an ``ack``)
and every ``send`` made for it has a successful delivery report. A message that gave no frame
(skipped, failed, rate-limited, replaced by a newer frame) is done as soon as it leaves the
decoder. The committable offset is the one after the longest run of done messages, in input
order: ``min(oldest pending frame, decoder frontier)``. A delivery report alone never moves it.

A commit lands on a keyframe: the GOP start at or before that point. A process that resumes
from the commit decodes the GOP from its keyframe; resuming mid-GOP would lose every frame up
to the next keyframe. The done point itself goes with the commit, as its metadata
(:func:`done_metadata`): the process that resumes decodes the frames before it for their
references only, so results already delivered are not produced twice.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from dataclasses import dataclass

__all__ = ["OffsetLedger", "done_metadata", "parse_done"]

_KEYFRAMES = 32  # GOP starts remembered: the commit point is never further behind than that
_DONE = "comux-done="


def done_metadata(done: int) -> str:
    """A commit's metadata: the first offset whose result was not delivered."""
    return f"{_DONE}{done}"


def parse_done(metadata: str | None) -> int:
    """The done offset a commit's metadata carries; -1 when it carries none (another tool's
    commit, or an older comux's)."""
    if metadata and metadata.startswith(_DONE):
        try:
            return int(metadata[len(_DONE) :])
        except ValueError:
            pass
    return -1


@dataclass
class _Pending:
    seq: int  # order of arrival in the batches (B-frames leave the decoder out of offset order)
    sends: int = 0  # sends without a delivery report yet
    delivered: int = 0  # sends with a successful one
    acked: bool = False  # the model moved past the batch that held it
    failed: bool = False  # a delivery failed: the offset stays pending, never committed


class OffsetLedger:
    """One camera's frames between the decoder and a delivered result.

    Threads: the decode thread calls :meth:`decoded`, :meth:`hold` and :meth:`drop`, the model
    :meth:`ack` and :meth:`sending`, the producer's thread :meth:`delivered`, the consumer's
    poll thread :meth:`commit_point`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._seq = 0
        # The oldest offset that may still give a frame (set by the decode thread); -1: none
        # decoded yet, nothing to commit.
        self.frontier = -1
        self._keyframes: deque[int] = deque(maxlen=_KEYFRAMES)  # recent keyframe offsets
        self.committed = -1  # the last offset committed (the next one to read)
        self.committed_done = -1  # and the done point that went with it
        self.requested: tuple[int, int] | None = None  # the last commit asked for
        self.delivery_failed = 0
        self.untracked_sends = 0  # sends after the model had moved past the frame

    def __len__(self) -> int:
        return len(self._pending)

    def decoded(self, frontier: int, keyframe: int) -> None:
        """Decode thread, after each packet: the oldest offset that may still give a frame,
        and the offset of the last keyframe seen."""
        with self._lock:
            self.frontier = frontier
            if keyframe >= 0 and (not self._keyframes or keyframe > self._keyframes[-1]):
                self._keyframes.append(keyframe)

    def hold(self, offset: int) -> None:
        """A frame of ``offset`` went to the batches (or waits for a row)."""
        with self._lock:
            self._seq += 1
            self._pending[offset] = _Pending(self._seq)

    def drop(self, offset: int) -> None:
        """The frame will never be handed out: replaced, or its camera left the batches."""
        with self._lock:
            entry = self._pending.get(offset)
            if entry is not None and entry.sends == 0 and not entry.failed:
                del self._pending[offset]

    def drop_unsent(self) -> None:
        """The camera left the batches (paused): frames no one was sent for will not come."""
        with self._lock:
            for offset, entry in list(self._pending.items()):
                if entry.sends == 0 and not entry.failed:
                    del self._pending[offset]

    def ack(self, offset: int, *, if_delivered: bool = False) -> None:
        """The model moved past the batch holding ``offset``; earlier frames were replaced.

        ``if_delivered``: only if a result for it was delivered (its camera is revoked while
        the frame is in the model's hands: one with a result is done, one without is not).
        """
        with self._lock:
            entry = self._pending.get(offset)
            if entry is None or (if_delivered and not entry.delivered):
                return
            for other, older in list(self._pending.items()):
                if older.seq <= entry.seq:
                    older.acked = True
                    self._settle(other, older)

    def sending(self, offset: int) -> bool:
        """Count a send for ``offset``; False when the frame is no longer tracked."""
        with self._lock:
            entry = self._pending.get(offset)
            if entry is None or entry.acked:
                self.untracked_sends += 1
                return False
            entry.sends += 1
            return True

    def delivered(self, offset: int, ok: bool | None) -> None:
        """A send's delivery report; ``ok=None``: the send was dropped before producing."""
        with self._lock:
            entry = self._pending.get(offset)
            if entry is None:
                return
            entry.sends -= 1
            if ok:
                entry.delivered += 1
            elif ok is not None:
                entry.failed = True
                self.delivery_failed += 1
            self._settle(offset, entry)

    def _settle(self, offset: int, entry: _Pending) -> None:
        if entry.acked and entry.sends <= 0 and not entry.failed:
            del self._pending[offset]

    def commit_point(self) -> tuple[int, int] | None:
        """The offset to commit (the next one to read) and the done point, or None when nothing
        new is done."""
        with self._lock:
            done = min(min(self._pending, default=self.frontier), self.frontier)
            # The GOP start at or before it (a commit on a keyframe itself stays where it is).
            i = bisect.bisect_right(self._keyframes, done)
            if i == 0:
                return None  # no keyframe known before it: resuming there would lose frames
            point = self._keyframes[i - 1]
        return (point, done) if done > self.committed_done else None

    def confirm(self, offset: int, done: int) -> None:
        """A commit of ``offset`` with its done point landed."""
        self.committed = max(self.committed, offset)
        self.committed_done = max(self.committed_done, done)

    def reset(self) -> None:
        """Forget everything: the camera's partition was revoked or it starts again."""
        with self._lock:
            self._pending.clear()
            self.frontier = -1
            self._keyframes.clear()
            self.committed = self.committed_done = -1
            self.requested = None
