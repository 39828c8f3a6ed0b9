# Hand-written stub of the compiled comux/_ext/ring.pyx: keep it in sync with ring.pyx (and with
# comux/ring.py, the pure-Python reference of the same interface).

from collections.abc import Callable, Iterable
from typing import Any, Final

import numpy as np
from typing_extensions import disjoint_base

__all__ = ["FULL", "GONE", "REPLACED", "WRITTEN", "WRITTEN_WAKE", "Buffer", "Ring", "Rows"]

WRITTEN: Final[int]
WRITTEN_WAKE: Final[int]
REPLACED: Final[int]
FULL: Final[int]
GONE: Final[int]

@disjoint_base
class Rows:
    slot: int
    next_seq: int
    frozen: bool
    fifo: bool
    @property
    def writing(self) -> int: ...
    @property
    def replaced_index(self) -> int: ...

@disjoint_base
class Buffer:
    held: bool
    seq: int
    filled: int
    def __init__(self, ident: int, owner: Any, frames: np.ndarray) -> None: ...
    @property
    def id(self) -> int: ...
    @property
    def owner(self) -> Any: ...
    @property
    def frames(self) -> np.ndarray: ...
    @property
    def indices(self) -> np.ndarray: ...
    @property
    def pts(self) -> np.ndarray: ...
    @property
    def timestamps(self) -> np.ndarray: ...
    @property
    def valid(self) -> np.ndarray: ...
    @property
    def written(self) -> np.ndarray: ...
    @property
    def corrupt(self) -> np.ndarray: ...
    def unfill(self) -> None: ...

@disjoint_base
class Ring:
    frozen: bool
    model_waiting: bool
    wake_at: int
    def __init__(self, count: int) -> None: ...
    @property
    def filling_seq(self) -> int: ...
    @property
    def next_seq(self) -> int: ...
    def open(self, buf: Buffer) -> int: ...
    def replace(self, old: Buffer, fresh: Buffer) -> None: ...
    def seal(self) -> Buffer | None: ...
    def wait_writers(self, rows_list: Iterable[Rows], buf: Buffer) -> None: ...
    def wait_idle(self, rows: Rows) -> None: ...
    def collect(self, rows_list: Iterable[Rows]) -> None: ...
    def publish(
        self,
        rows: Rows,
        frame: Any,
        index: int,
        pts: int,
        burst: bool,
        write: Callable[[Any, np.ndarray], None],
    ) -> int: ...
