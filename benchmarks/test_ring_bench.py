"""Push+pop pairs per second: comux's SpscRing against the standard library's queues.

* ``spscring_py``: ``SpscRing.push`` then ``pop`` from Python, one thread (what a decoder thread
  and the sealer pay per frame record, minus the cross-core traffic).
* ``spscring_nogil_threaded`` / ``spscring_nogil_single``: ``bench_push_pop``: the C ring driven
  from nogil code, with a C producer thread (includes cache-line traffic) or alternately from one
  thread (bare instruction cost). Target: >= 10 M push+pop/s.
* ``queue_Queue``, ``queue_SimpleQueue``, ``deque``: ``put``/``get`` (``append``/``popleft``)
  from Python, one thread; ``queue_Queue_threaded``: a producer thread puts, the caller gets.

One "op" is one push plus one pop. Variants run interleaved, round after round.
"""

from __future__ import annotations

import collections
import functools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from benchmarks._common import Sample, paired_ratio, rate_of, run_rounds, summarize
from comux._ext.ring import SpscRing, bench_push_pop

TARGET_NOGIL_OPS = 10_000_000


def _py_spscring(n: int) -> Callable[[], None]:
    ring = SpscRing(1024)

    def run() -> None:
        push, pop = ring.push, ring.pop
        for i in range(n):
            push(i, 0, 0.0, 0, 0)
            pop()

    return run


def _put_get(put: Callable[[int], Any], get: Callable[[], Any], n: int) -> Callable[[], None]:
    """One put then one get, n times, on one thread: the cost of the queue itself."""

    def run() -> None:
        for i in range(n):
            put(i)
            get()

    return run


def _queue_threaded(n: int) -> Callable[[], None]:
    def run() -> None:
        q: queue.Queue[int] = queue.Queue(maxsize=1024)

        def produce() -> None:
            put = q.put
            for i in range(n):
                put(i)

        t = threading.Thread(target=produce)
        t.start()
        get = q.get
        for _ in range(n):
            get()
        t.join()

    return run


def _timed(fn: Callable[[], None], n: int) -> Sample:
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    t1, c1 = time.perf_counter(), time.process_time()
    return Sample(t1 - t0, c1 - c0, n)


def _nogil(n: int, threaded: bool) -> Callable[[], Sample]:
    def run() -> Sample:
        c0 = time.process_time()
        seconds = bench_push_pop(n, threaded=threaded)
        return Sample(seconds, time.process_time() - c0, n)

    return run


def test_ring_push_pop(benchmark, long_mode: bool, results) -> None:
    n_py = 400_000 if long_mode else 40_000
    n_thr = 200_000 if long_mode else 20_000
    n_c = 50_000_000 if long_mode else 5_000_000
    rounds = 7 if long_mode else 3
    q: queue.Queue[int] = queue.Queue()
    sq: queue.SimpleQueue[int] = queue.SimpleQueue()
    d: collections.deque[int] = collections.deque()

    variants: dict[str, Callable[[], Sample]] = {
        "spscring_py": functools.partial(_timed, _py_spscring(n_py), n_py),
        "queue_Queue": functools.partial(_timed, _put_get(q.put, q.get, n_py), n_py),
        "queue_SimpleQueue": functools.partial(_timed, _put_get(sq.put, sq.get, n_py), n_py),
        "deque": functools.partial(_timed, _put_get(d.append, d.popleft, n_py), n_py),
        "queue_Queue_threaded": functools.partial(_timed, _queue_threaded(n_thr), n_thr),
        "spscring_nogil_threaded": _nogil(n_c, True),
        "spscring_nogil_single": _nogil(n_c, False),
    }
    samples: dict[str, list[Sample]] = {k: [] for k in variants}

    def one_round() -> None:
        for name, run in variants.items():
            samples[name].append(run())

    run_rounds(benchmark, one_round, rounds, warmup=1)
    samples = {k: v[-rounds:] for k, v in samples.items()}

    ops = {k: summarize(v) for k, v in samples.items()}
    ratios = {
        "spscring_py / queue_Queue": paired_ratio(
            samples["spscring_py"], samples["queue_Queue"], rate_of
        ),
        "spscring_py / deque": paired_ratio(samples["spscring_py"], samples["deque"], rate_of),
        "spscring_nogil_threaded / queue_Queue_threaded": paired_ratio(
            samples["spscring_nogil_threaded"], samples["queue_Queue_threaded"], rate_of
        ),
        "spscring_nogil_single / queue_Queue": paired_ratio(
            samples["spscring_nogil_single"], samples["queue_Queue"], rate_of
        ),
        "spscring_nogil_single / deque": paired_ratio(
            samples["spscring_nogil_single"], samples["deque"], rate_of
        ),
    }
    best_nogil = max(
        ops["spscring_nogil_threaded"]["rate_median"], ops["spscring_nogil_single"]["rate_median"]
    )
    record = {
        "unit": "push+pop pairs per second (rate_*); process CPU seconds per pair",
        "n": {"python_single_thread": n_py, "python_threaded": n_thr, "nogil": n_c},
        "ops_per_s": ops,
        "ratios": ratios,
        "targets": {
            "nogil >= 10M push+pop/s (threaded)": ops["spscring_nogil_threaded"]["rate_median"]
            >= TARGET_NOGIL_OPS,
            "nogil >= 10M push+pop/s (single thread)": ops["spscring_nogil_single"]["rate_median"]
            >= TARGET_NOGIL_OPS,
        },
    }
    results("ring").record("push_pop", record)
    benchmark.extra_info.update(
        {k: round(v["rate_median"]) for k, v in ops.items()}
        | {"best_nogil_Mops": round(best_nogil / 1e6, 2)}
    )
    # Correctness only, never timing: every variant moved its records.
    assert all(s.units > 0 and s.wall > 0 for v in samples.values() for s in v)
