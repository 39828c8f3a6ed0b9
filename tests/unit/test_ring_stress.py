"""The SPSC ring under two real threads: no torn, duplicated, reordered or lost record.

The heavy runs use ``stress_spsc``: a C producer thread and a nogil consumer, millions of records
in well under a second each.  A lighter variant drives both rings (compiled and oracle) from
Python threads, where the GIL serialises the sides but thread switches still land anywhere.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from comux._ext.reference import PyRing
from comux._ext.ring import SpscRing, bench_push_pop, stress_spsc
from comux.errors import ConfigError

N = 2_000_000


# The smallest rings switch between full and empty on nearly every record, which makes the
# threads yield a lot: fewer records there keep each run to about a second on two busy cores.
@pytest.mark.parametrize(("capacity", "n"), [(2, 1_000_000), (64, N), (1024, N)])
def test_fifo_two_threads_nogil(capacity: int, n: int) -> None:
    ok, errors, dropped, _full_waits = stress_spsc(n, capacity=capacity)
    assert (ok, errors, dropped) == (n, 0, 0)


@pytest.mark.parametrize(("capacity", "n"), [(4, 1_000_000), (64, N)])
def test_latest_two_threads_nogil(capacity: int, n: int) -> None:
    ok, errors, dropped, _full_waits = stress_spsc(n, capacity=capacity, latest=True)
    assert (ok, errors) == (n, 0)
    # The consumer pauses now and then, so the drop path must have run.
    assert dropped > 0


def test_stress_small_counts() -> None:
    assert stress_spsc(0) == (0, 0, 0, 0)
    assert stress_spsc(1)[:2] == (1, 0)
    assert stress_spsc(3, capacity=2, latest=True)[:2] == (3, 0)


@pytest.mark.parametrize("kwargs", [{"n": -1}, {"n": 10, "capacity": 1}])
def test_stress_rejects_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        stress_spsc(**kwargs)


@pytest.mark.parametrize("threaded", [False, True])
def test_bench_runs(threaded: bool) -> None:
    """Only that it runs and moves every record (it checks a sum); speed is for benchmarks."""
    assert bench_push_pop(100_000, threaded=threaded, capacity=16) > 0.0
    assert bench_push_pop(0, threaded=threaded) >= 0.0


def _checksum(i: int) -> int:
    return (i * 0x9E3779B97F4A7C15) & 0x7FFFFFFFFFFFFFFF


@pytest.mark.parametrize("Ring", [SpscRing, PyRing])
@pytest.mark.parametrize("latest", [False, True])
def test_python_threads(Ring: type, latest: bool) -> None:
    n = 100_000
    ring = Ring(256)
    errors: list[str] = []
    seen: list[int] = []
    deadline = time.monotonic() + 60

    def produce() -> None:
        for i in range(n):
            # Slot and flags are derived from i too, so a torn record cannot pass.
            while not ring.push(i, _checksum(i), i * 0.5, i & 0x7FFFFFFF, i % 3):
                if time.monotonic() > deadline:
                    errors.append("producer timed out")
                    return
                time.sleep(0)  # let the consumer have the GIL

    def take(last: int) -> tuple[int, int, float, int, int] | None:
        if not latest:
            return ring.pop()
        slots: list[int] = []
        got = ring.pop_latest(slots)
        if got is None:
            return None
        rec, dropped = got
        if dropped != len(slots) or slots != list(range(last + 1, rec[0])):
            errors.append(f"bad drop report before {rec[0]}: {dropped}, {slots[:5]}")
        return rec

    def consume() -> None:
        last = -1
        while last < n - 1:
            rec = take(last)
            if rec is None:
                if time.monotonic() > deadline:
                    errors.append("consumer timed out")
                    return
                time.sleep(0)
                continue
            i = rec[0]
            if rec != (i, _checksum(i), i * 0.5, i & 0x7FFFFFFF, i % 3):
                errors.append(f"torn record {rec}")
            if i <= last or (not latest and i != last + 1):
                errors.append(f"after {last} came {i}")
            seen.append(i)
            last = i

    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert seen[-1] == n - 1
    if not latest:
        assert seen == list(range(n))
    assert len(ring) == 0
