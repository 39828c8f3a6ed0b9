# Hand-written stub of the compiled comux/_ext/ring.pyx: keep it in sync with ring.pyx
# (and with the pure-Python twin comux/_ext/reference.py, which has the same Python API).

from typing import Final, Self

from typing_extensions import disjoint_base

__all__ = [
    "FLAG_CORRUPT",
    "FLAG_EOS",
    "FLAG_KEYFRAME",
    "MAX_CAPACITY",
    "MIN_CAPACITY",
    "SpscRing",
    "bench_push_pop",
    "stress_spsc",
]

Record = tuple[int, int, float, int, int]
"""(index, pts, timestamp, slot, flags)."""

MIN_CAPACITY: Final[int]
MAX_CAPACITY: Final[int]
FLAG_KEYFRAME: Final[int]
FLAG_CORRUPT: Final[int]
FLAG_EOS: Final[int]

@disjoint_base
class SpscRing:
    """A lock-free ring of frame records for one producer thread and one consumer thread."""

    def __new__(cls, capacity: int) -> Self: ...
    @property
    def capacity(self) -> int: ...
    def __len__(self) -> int: ...
    def push(self, index: int, pts: int, timestamp: float, slot: int, flags: int = 0) -> bool: ...
    def pop(self) -> Record | None: ...
    def pop_latest(self, dropped_slots: list[int] | None = None) -> tuple[Record, int] | None: ...

def bench_push_pop(n: int, *, threaded: bool = True, capacity: int = 1024) -> float: ...
def stress_spsc(
    n: int, *, capacity: int = 64, latest: bool = False
) -> tuple[int, int, int, int]: ...
