"""Pure-Python references for the compiled core: the oracle the tests run it against.

``PyRing`` has the Python API of ``comux._ext.ring.SpscRing`` and the same behaviour, down to
capacity rounding, error types and record layout, so that every ring test runs against both and
a bug in the C/Cython code shows up as a failure of one variant only.  It is also readable
documentation of what the ring does.
"""

from __future__ import annotations

import operator

from comux.errors import ConfigError

__all__ = [
    "FLAG_CORRUPT",
    "FLAG_EOS",
    "FLAG_KEYFRAME",
    "MAX_CAPACITY",
    "MIN_CAPACITY",
    "PyRing",
    "Record",
]

# Kept equal to ring.h's COMUX_RING_* and COMUX_FLAG_* (a test checks).
MIN_CAPACITY = 2
MAX_CAPACITY = 1 << 20
FLAG_KEYFRAME = 0x1
FLAG_CORRUPT = 0x2
FLAG_EOS = 0x4

Record = tuple[int, int, float, int, int]
"""(index, pts, timestamp, slot, flags): Kafka offset, pts, time in seconds, frame buffer, bits."""

_INT64 = (-(1 << 63), (1 << 63) - 1)
_INT32 = (-(1 << 31), (1 << 31) - 1)


def _check_capacity(capacity: int) -> int:
    n = operator.index(capacity)
    if n < MIN_CAPACITY:
        raise ConfigError(f"ring capacity must be at least {MIN_CAPACITY}, got {n}")
    if n > MAX_CAPACITY:
        raise ConfigError(
            f"ring capacity must be at most {MAX_CAPACITY} records, got {n}: "
            "a ring holds the frames in flight, not a backlog"
        )
    return n


def _as_int(value: object, bounds: tuple[int, int], ctype: str) -> int:
    """Convert like the compiled ring: __index__ only, OverflowError outside the C type."""
    n = operator.index(value)  # type: ignore[arg-type]
    if not bounds[0] <= n <= bounds[1]:
        raise OverflowError(f"value too large to convert to {ctype}")
    return n


def _as_double(value: object) -> float:
    """Convert like a C double argument: __float__, else __index__; strings are refused."""
    if isinstance(value, float):
        return value
    cls = type(value)
    if hasattr(cls, "__float__"):
        return float(value)  # type: ignore[arg-type]
    if hasattr(cls, "__index__"):
        return float(operator.index(value))  # type: ignore[arg-type]
    raise TypeError(f"must be real number, not {cls.__name__}")


class PyRing:
    """A single-producer single-consumer ring of records in a list with free-running head/tail.

    Safe for one producer and one consumer thread under the GIL: the producer writes the slot
    before it moves ``_tail`` and the consumer reads the slot before it moves ``_head``.

    :param capacity: the least number of records the ring must hold, 2 to ``MAX_CAPACITY``;
        rounded up to a power of two.

    Example::

        ring = PyRing(8)
        ring.push(index=41, pts=3000, timestamp=1.7e9, slot=2, flags=FLAG_KEYFRAME)
        ring.pop()  # (41, 3000, 1700000000.0, 2, 1)
    """

    __slots__ = ("_buf", "_capacity", "_head", "_mask", "_tail")

    def __init__(self, capacity: int) -> None:
        n = _check_capacity(capacity)
        cap = MIN_CAPACITY
        while cap < n:
            cap <<= 1
        self._capacity = cap
        self._mask = cap - 1
        self._buf: list[Record | None] = [None] * cap
        self._head = 0  # next record to read; only the consumer moves it
        self._tail = 0  # next record to write; only the producer moves it

    @property
    def capacity(self) -> int:
        """How many records the ring holds when full (a power of two)."""
        return self._capacity

    def __len__(self) -> int:
        head = self._head
        return min(self._tail - head, self._capacity)

    def __repr__(self) -> str:
        return f"<PyRing {len(self)}/{self._capacity}>"

    def push(self, index: int, pts: int, timestamp: float, slot: int, flags: int = 0) -> bool:
        """Append one record; return False, storing nothing, when the ring is full."""
        rec = (
            _as_int(index, _INT64, "int64_t"),
            _as_int(pts, _INT64, "int64_t"),
            _as_double(timestamp),
            _as_int(slot, _INT32, "int32_t"),
            _as_int(flags, _INT32, "int32_t"),
        )
        tail = self._tail
        if tail - self._head == self._capacity:
            return False
        self._buf[tail & self._mask] = rec
        self._tail = tail + 1
        return True

    def pop(self) -> Record | None:
        """Remove and return the oldest record, or None when empty."""
        head = self._head
        if head == self._tail:
            return None
        rec = self._buf[head & self._mask]
        self._head = head + 1
        return rec

    def pop_latest(self, dropped_slots: list[int] | None = None) -> tuple[Record, int] | None:
        """Remove every record; return ``(newest record, number dropped)``, or None when empty.

        When ``dropped_slots`` is a list, the slots of the dropped records are appended to it,
        oldest first, so that their frame buffers can be recycled.
        """
        if dropped_slots is not None and not isinstance(dropped_slots, list):
            raise TypeError(
                "Argument 'dropped_slots' has incorrect type "
                f"(expected list, got {type(dropped_slots).__name__})"
            )
        head, tail = self._head, self._tail
        if head == tail:
            return None
        if dropped_slots is not None:
            dropped_slots.extend(
                self._buf[i & self._mask][3]  # type: ignore[index]
                for i in range(head, tail - 1)
            )
        rec = self._buf[(tail - 1) & self._mask]
        self._head = tail
        return rec, tail - 1 - head  # type: ignore[return-value]
