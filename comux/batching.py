"""Where a decoded frame lands: the newest frame of each camera, gathered into batches."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from .errors import UnknownCameraError

__all__ = ["LatestFrames", "Entry"]

Entry = tuple[str, int, "np.ndarray | None"]


@dataclass
class _Slot:
    index: int = -1
    array: np.ndarray | None = None
    fresh: bool = False


class LatestFrames:
    """Hold the newest undelivered frame of every camera; older undelivered ones are replaced."""

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}
        self._cond = threading.Condition()
        self.replaced: dict[str, int] = {}

    def add(self, cam_id: str) -> None:
        with self._cond:
            self._slots.setdefault(cam_id, _Slot())
            self.replaced.setdefault(cam_id, 0)

    def remove(self, cam_id: str) -> None:
        with self._cond:
            self._slots.pop(cam_id, None)
            self._cond.notify_all()

    def cameras(self) -> list[str]:
        with self._cond:
            return list(self._slots)

    def put(self, cam_id: str, index: int, array: np.ndarray | None) -> None:
        with self._cond:
            slot = self._slots.get(cam_id)
            if slot is None:  # removed while its last packet was decoding
                return
            if slot.fresh:
                self.replaced[cam_id] += 1
            slot.index, slot.array, slot.fresh = index, array, True
            self._cond.notify_all()

    def get(self, cam_id: str, timeout: float | None = None) -> Entry | None:
        """Return the camera's next frame, or None when ``timeout`` passes first."""
        with self._cond:
            if cam_id not in self._slots:
                raise UnknownCameraError(cam_id)
            ok = self._cond.wait_for(
                lambda: cam_id not in self._slots or self._slots[cam_id].fresh, timeout
            )
            slot = self._slots.get(cam_id)
            if not ok or slot is None:
                return None
            return self._take(cam_id, slot)

    def batch(self, timeout: float | None = None) -> list[Entry] | None:
        """Wait until every camera has a new frame, or ``timeout``; None if none came at all."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                slots = self._slots
                fresh = sum(s.fresh for s in slots.values())
                if slots and fresh == len(slots):
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    if fresh == 0:
                        return None
                    break
                self._cond.wait(remaining)
            return [
                self._take(cam, s) if s.fresh else (cam, -1, None) for cam, s in slots.items()
            ]

    @staticmethod
    def _take(cam_id: str, slot: _Slot) -> Entry:
        slot.fresh = False
        entry = (cam_id, slot.index, slot.array)
        slot.array = None
        return entry
