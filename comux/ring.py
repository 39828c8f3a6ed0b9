"""The pure-Python reference of the ring and its hand-off (``comux/_ext/ring.pyx``).

Same classes, same protocol, same results, with Python attributes instead of C atomics: it is
correct only under the GIL. ``COMUX_BACKEND=reference`` runs the pipeline on it, and the pool's
tests run against both (see :mod:`comux.backend`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

__all__ = ["FULL", "GONE", "REPLACED", "WRITTEN", "WRITTEN_WAKE", "Buffer", "Ring", "Rows"]

WRITTEN, WRITTEN_WAKE, REPLACED, FULL, GONE = range(5)
_LOOKING = -2


def _spin_until(done: Callable[[], bool]) -> None:
    """Wait for a writer to finish one frame: microseconds to a millisecond or two."""
    delay = 0.0
    while not done():
        time.sleep(delay)
        delay = min(0.001, delay * 2 or 0.00002)


class Rows:
    """One camera's side of the ring: its row, its claim and where its next frame goes."""

    slot = -1
    next_seq = 0
    frozen = False
    fifo = False
    writing = -1
    replaced_index = -1


class Buffer:
    """One preallocated batch buffer and its rows' metadata, each row written by its camera."""

    def __init__(self, ident: int, owner: Any, frames: np.ndarray) -> None:
        capacity = frames.shape[0]
        self.id = ident
        self.owner = owner
        self.frames = frames
        self.indices = np.full(capacity, -1, np.int64)
        self.pts = np.full(capacity, -1, np.int64)
        self.timestamps = np.zeros(capacity, np.float64)
        self.valid = np.zeros(capacity, bool)
        self.written = np.zeros(capacity, bool)
        self.corrupt = np.zeros(capacity, bool)
        self.held = False
        self.seq = -1
        self.filled = 0

    def unfill(self) -> None:
        self.filled -= 1


class Ring:
    """The open buffers, numbered by the batch each becomes, and the hand-off over them."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"a ring needs at least one buffer, got {count}")
        self._table: list[Buffer | None] = [None] * count
        self.filling_seq = 0
        self.next_seq = 0
        self.frozen = False
        self.model_waiting = False
        self.wake_at = 0

    def _find(self, seq: int) -> Buffer | None:
        buf = self._table[seq % len(self._table)]
        return buf if buf is not None and buf.seq == seq else None

    def open(self, buf: Buffer) -> int:
        seq = self.next_seq
        self._table[seq % len(self._table)] = buf
        buf.filled = 0
        buf.seq = seq
        self.next_seq = seq + 1
        return seq

    def replace(self, old: Buffer, fresh: Buffer) -> None:
        seq = old.seq
        fresh.seq = seq
        self._table[seq % len(self._table)] = fresh
        old.seq = -1

    def seal(self) -> Buffer | None:
        buf = self._find(self.filling_seq)
        if buf is None:
            return None
        buf.seq = -1
        self.filling_seq += 1
        return buf

    def wait_writers(self, rows_list: Iterable[Rows], buf: Buffer) -> None:
        for rows in rows_list:
            _spin_until(lambda rows=rows: rows.writing != buf.id)  # type: ignore[misc]

    def wait_idle(self, rows: Rows) -> None:
        _spin_until(lambda: rows.writing == -1)

    def collect(self, rows_list: Iterable[Rows]) -> None:
        """Nothing to do: the GIL keeps a buffer alive while a writer reads it."""

    def _claim(self, rows: Rows, burst: bool) -> tuple[int, Buffer | None, int, int]:
        rows.writing = _LOOKING
        while True:
            if self.frozen or rows.frozen:
                rows.writing = -1
                return -1, None, -1, -1
            slot = rows.slot
            if slot < 0:
                rows.writing = -1
                return GONE, None, -1, -1
            filling = self.filling_seq
            if rows.fifo:
                seq = max(filling, rows.next_seq)
            else:
                seq = max(filling, rows.next_seq - 1)
                if burst and seq == filling and self.model_waiting:
                    newest = self._find(seq)
                    if newest is not None and newest.written[slot] and self._find(seq + 1):
                        seq += 1
            buf = self._find(seq)
            if buf is None:
                if seq >= self.next_seq:
                    rows.writing = -1
                    return FULL, None, -1, -1
                continue
            rows.writing = buf.id
            if buf.seq == seq and rows.slot == slot:
                return WRITTEN, buf, slot, seq
            rows.writing = _LOOKING

    def publish(
        self,
        rows: Rows,
        frame: Any,
        index: int,
        pts: int,
        burst: bool,
        write: Callable[[Any, np.ndarray], None],
    ) -> int:
        while True:
            status, buf, slot, seq = self._claim(rows, burst)
            if status >= 0:
                break
            _spin_until(lambda: not (self.frozen or rows.frozen))
        if buf is None:
            return status
        try:
            if frame is not None:
                write(frame, buf.frames[slot])
            first = not buf.written[slot]
            status = REPLACED
            if first:
                buf.filled += 1
                n = buf.filled
                wake = seq == self.filling_seq and (n == 1 or n >= self.wake_at)
                status = WRITTEN_WAKE if wake else WRITTEN
            else:
                rows.replaced_index = int(buf.indices[slot])
            buf.indices[slot] = index
            buf.pts[slot] = pts
            buf.timestamps[slot] = time.time()
            buf.corrupt[slot] = frame is None
            buf.written[slot] = True
            rows.next_seq = seq + 1
        finally:
            rows.writing = -1
        return status
