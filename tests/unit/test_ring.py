"""The SPSC ring, written once and run against the compiled SpscRing and the PyRing oracle.

As in uvloop's test suite, each test lives in a mixin (``_RingTests``) and runs once per
implementation (``TestSpscRing``, ``TestPyRing``): a bug in the C/Cython ring shows up as a
failure of one variant only.
"""

from __future__ import annotations

import math
from collections import deque
from typing import cast

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from comux._ext import reference, ring
from comux._ext.reference import PyRing
from comux._ext.ring import SpscRing
from comux.errors import ComuxError, ConfigError

I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1

records = st.tuples(
    st.integers(I64_MIN, I64_MAX),
    st.integers(I64_MIN, I64_MAX),
    st.floats(allow_nan=False),
    st.integers(I32_MIN, I32_MAX),
    st.integers(I32_MIN, I32_MAX),
)


def rec(i: int) -> tuple[int, int, float, int, int]:
    """Return a record whose every field is derived from i."""
    return (i, i * 3 + 1, i * 0.25, i % 1000, i & 0xFF)


class _RingTests:
    Ring: type

    def test_starts_empty(self) -> None:
        r = self.Ring(4)
        assert len(r) == 0
        assert r.pop() is None
        assert r.pop_latest() is None

    def test_fifo_order(self) -> None:
        r = self.Ring(8)
        for i in range(5):
            assert r.push(*rec(i)) is True
        assert len(r) == 5
        assert [r.pop() for _ in range(5)] == [rec(i) for i in range(5)]
        assert r.pop() is None

    def test_record_round_trip_keeps_extremes(self) -> None:
        r = self.Ring(8)
        extremes = [
            (I64_MIN, I64_MAX, -0.0, I32_MIN, I32_MAX),
            (I64_MAX, I64_MIN, math.inf, I32_MAX, I32_MIN),
            (0, -1, 1.7e9 + 0.123456, -1, 0),
        ]
        for e in extremes:
            assert r.push(*e)
        assert [r.pop() for _ in extremes] == extremes

    def test_nan_timestamp_survives(self) -> None:
        r = self.Ring(2)
        r.push(1, 2, math.nan, 3)
        got = r.pop()
        assert got is not None and math.isnan(got[2])

    def test_keywords_and_default_flags(self) -> None:
        r = self.Ring(2)
        assert r.push(index=7, pts=8, timestamp=9.5, slot=1)
        assert r.push(7, 8, 9.5, 1, flags=ring.FLAG_KEYFRAME | ring.FLAG_CORRUPT)
        assert r.pop() == (7, 8, 9.5, 1, 0)
        assert r.pop() == (7, 8, 9.5, 1, 3)

    def test_int_like_arguments_are_converted(self) -> None:
        r = self.Ring(2)
        assert r.push(np.int64(5), np.int32(6), 7, np.int16(8), True)
        got = r.pop()
        assert got == (5, 6, 7.0, 8, 1)
        assert all(type(v) is t for v, t in zip(got, (int, int, float, int, int), strict=True))

    def test_full_ring_refuses_and_keeps_contents(self) -> None:
        r = self.Ring(4)
        for i in range(4):
            assert r.push(*rec(i))
        assert len(r) == 4
        assert r.push(*rec(99)) is False
        assert len(r) == 4
        assert r.pop() == rec(0)
        assert r.push(*rec(4)) is True
        assert r.push(*rec(5)) is False
        assert [r.pop() for _ in range(4)] == [rec(i) for i in range(1, 5)]

    @pytest.mark.parametrize(
        ("requested", "capacity"),
        [(2, 2), (3, 4), (4, 4), (5, 8), (1000, 1024), (1024, 1024), (1 << 20, 1 << 20)],
    )
    def test_capacity_rounds_up_to_a_power_of_two(self, requested: int, capacity: int) -> None:
        r = self.Ring(requested)
        assert r.capacity == capacity
        if capacity <= 1024:  # filling a million-record ring from Python is slow, not useful
            for i in range(capacity):
                assert r.push(*rec(i))
            assert not r.push(*rec(capacity))

    def test_capacity_accepts_index_types(self) -> None:
        assert self.Ring(np.int32(3)).capacity == 4

    @pytest.mark.parametrize("capacity", [1, 0, -1, -(1 << 70)])
    def test_capacity_too_small(self, capacity: int) -> None:
        with pytest.raises(ConfigError, match=rf"at least 2, got {capacity}$") as info:
            self.Ring(capacity)
        assert isinstance(info.value, ValueError) and isinstance(info.value, ComuxError)

    @pytest.mark.parametrize("capacity", [(1 << 20) + 1, 1 << 40, 1 << 100])
    def test_capacity_absurd(self, capacity: int) -> None:
        with pytest.raises(ValueError, match=rf"at most {1 << 20} records, got {capacity}"):
            self.Ring(capacity)

    @pytest.mark.parametrize("capacity", [4.0, "4", None, b"4", [4]])
    def test_capacity_wrong_type(self, capacity: object) -> None:
        with pytest.raises(TypeError):
            self.Ring(capacity)

    @pytest.mark.parametrize(
        "bad",
        [
            {"index": 1.5},
            {"index": 1.0},
            {"index": "1"},
            {"index": None},
            {"pts": 2.0},
            {"timestamp": "1.0"},
            {"timestamp": None},
            {"slot": 0.0},
            {"slot": "0"},
            {"flags": 1.0},
            {"flags": None},
        ],
    )
    def test_push_wrong_type(self, bad: dict[str, object]) -> None:
        r = self.Ring(2)
        with pytest.raises(TypeError):
            r.push(**{"index": 0, "pts": 0, "timestamp": 0.0, "slot": 0, **bad})
        assert len(r) == 0

    @pytest.mark.parametrize(
        "bad",
        [
            {"index": I64_MAX + 1},
            {"index": I64_MIN - 1},
            {"pts": 1 << 64},
            {"slot": I32_MAX + 1},
            {"slot": I32_MIN - 1},
            {"flags": 1 << 31},
            {"timestamp": 1 << 2000},
        ],
    )
    def test_push_out_of_range(self, bad: dict[str, object]) -> None:
        r = self.Ring(2)
        with pytest.raises(OverflowError):
            r.push(**{"index": 0, "pts": 0, "timestamp": 0.0, "slot": 0, **bad})
        assert len(r) == 0

    def test_push_missing_argument(self) -> None:
        with pytest.raises(TypeError):
            self.Ring(2).push(1, 2, 3.0)

    @pytest.mark.parametrize("k", [1, 2, 3, 8])
    def test_pop_latest_drops_all_but_newest(self, k: int) -> None:
        r = self.Ring(8)
        for i in range(k):
            r.push(*rec(i))
        slots: list[int] = [-7]
        assert r.pop_latest(slots) == (rec(k - 1), k - 1)
        assert slots == [-7] + [rec(i)[3] for i in range(k - 1)]
        assert len(r) == 0
        assert r.pop() is None
        assert r.pop_latest() is None

    def test_pop_latest_after_partial_pop_and_wrap(self) -> None:
        r = self.Ring(4)
        for i in range(3):
            r.push(*rec(i))
        assert r.pop() == rec(0)
        for i in range(3, 5):  # wraps: counter 4 lands where counter 0 was
            assert r.push(*rec(i))
        assert not r.push(*rec(5))
        slots: list[int] = []
        assert r.pop_latest(dropped_slots=slots) == (rec(4), 3)
        assert slots == [rec(i)[3] for i in range(1, 4)]
        # The ring is fully usable again.
        for i in range(4):
            assert r.push(*rec(10 + i))
        assert r.pop_latest() == (rec(13), 3)

    def test_pop_latest_wants_a_list(self) -> None:
        r = self.Ring(2)
        r.push(*rec(0))
        with pytest.raises(TypeError):
            r.pop_latest((1,))  # type: ignore[arg-type]
        assert len(r) == 1

    @pytest.mark.parametrize("capacity", [2, 4, 16])
    def test_wraps_around_many_times(self, capacity: int) -> None:
        r = self.Ring(capacity)
        pushed = popped = 0
        for round_ in range(4000):
            burst = round_ % (capacity + 2)  # sometimes more than fits
            for _ in range(burst):
                if r.push(*rec(pushed)):
                    pushed += 1
                else:
                    assert len(r) == capacity
            assert 0 <= len(r) <= capacity
            for _ in range(round_ % (capacity + 1)):
                got = r.pop()
                if got is None:
                    assert len(r) == 0
                    break
                assert got == rec(popped)
                popped += 1
        while (got := r.pop()) is not None:
            assert got == rec(popped)
            popped += 1
        assert popped == pushed > 100 * capacity

    def test_repr_names_the_ring(self) -> None:
        r = self.Ring(4)
        r.push(*rec(0))
        assert repr(r) == f"<{self.Ring.__name__} 1/4>"


class TestSpscRing(_RingTests):
    Ring = SpscRing


class TestPyRing(_RingTests):
    Ring = PyRing


def test_reference_constants_match_the_header() -> None:
    for name in ("MIN_CAPACITY", "MAX_CAPACITY", "FLAG_KEYFRAME", "FLAG_CORRUPT", "FLAG_EOS"):
        assert getattr(ring, name) == getattr(reference, name), name


@pytest.mark.parametrize("capacity", [1, 1 << 21, 0])
def test_both_rings_give_the_same_capacity_message(capacity: int) -> None:
    messages = []
    for cls in (SpscRing, PyRing):
        with pytest.raises(ConfigError) as info:
            cls(capacity)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("Ring", [SpscRing, PyRing])
@settings(max_examples=50, deadline=None)
@given(
    capacity=st.integers(2, 16),
    ops=st.lists(st.one_of(records, st.sampled_from(["pop", "latest"])), max_size=80),
)
def test_matches_a_deque(Ring: type, capacity: int, ops: list[object]) -> None:
    """Property: any mix of push, pop and pop_latest behaves like a bounded deque."""
    r = Ring(capacity)
    model: deque[tuple[int, int, float, int, int]] = deque()
    cap = r.capacity
    for op in ops:
        if op == "pop":
            assert r.pop() == (model.popleft() if model else None)
        elif op == "latest":
            slots: list[int] = []
            if model:
                expected = (model[-1], len(model) - 1)
                assert r.pop_latest(slots) == expected
                assert slots == [m[3] for m in list(model)[:-1]]
                model.clear()
            else:
                assert r.pop_latest(slots) is None and slots == []
        else:
            record = cast(tuple[int, int, float, int, int], op)
            assert r.push(*record) is (len(model) < cap)
            if len(model) < cap:
                model.append(record)
        assert len(r) == len(model)
        assert 0 <= len(r) <= cap


# ---- stateful: each implementation against a deque model ------------------------------------


class _RingMachine(RuleBasedStateMachine):
    """Drive a ring with random pushes and pops; check it against a deque at every step."""

    Ring: type

    def __init__(self) -> None:
        super().__init__()
        self.model: deque[tuple[int, int, float, int, int]] = deque()
        self.pushed: list[tuple[int, int, float, int, int]] = []
        self.taken: list[tuple[int, int, float, int, int]] = []  # popped or dropped, in order

    @initialize(capacity=st.integers(2, 40))
    def create(self, capacity: int) -> None:
        self.ring = self.Ring(capacity)
        cap = self.ring.capacity
        assert cap >= capacity and cap & (cap - 1) == 0 and cap < 2 * capacity

    @rule(record=records)
    def push(self, record: tuple[int, int, float, int, int]) -> None:
        accepted = self.ring.push(*record)
        assert accepted is (len(self.model) < self.ring.capacity)
        if accepted:
            self.model.append(record)
            self.pushed.append(record)

    @rule(n=st.integers(1, 50))
    def push_burst(self, n: int) -> None:
        for _ in range(n):
            record = (len(self.pushed), 0, 0.0, len(self.pushed) % 7, 0)
            if not self.ring.push(*record):
                assert len(self.model) == self.ring.capacity
                return
            self.model.append(record)
            self.pushed.append(record)

    @rule()
    def pop(self) -> None:
        got = self.ring.pop()
        assert got == (self.model.popleft() if self.model else None)
        if got is not None:
            self.taken.append(got)

    @rule()
    def pop_latest(self) -> None:
        slots: list[int] = []
        got = self.ring.pop_latest(slots)
        if not self.model:
            assert got is None and slots == []
            return
        newest, dropped = got
        older = list(self.model)[:-1]
        assert newest == self.model[-1]
        assert dropped == len(older)
        assert slots == [m[3] for m in older]
        self.taken.extend(older)
        self.taken.append(newest)
        self.model.clear()

    @invariant()
    def size_within_bounds(self) -> None:
        assert 0 <= len(self.ring) == len(self.model) <= self.ring.capacity

    @invariant()
    def nothing_lost_or_invented(self) -> None:
        # Every record pushed is either taken (popped or dropped) or still held, in order.
        assert self.taken + list(self.model) == self.pushed


class SpscRingMachine(_RingMachine):
    Ring = SpscRing


class PyRingMachine(_RingMachine):
    Ring = PyRing


_machine_settings = settings(max_examples=40, stateful_step_count=40, deadline=None)
TestSpscRingStateful = SpscRingMachine.TestCase
TestSpscRingStateful.settings = _machine_settings
TestPyRingStateful = PyRingMachine.TestCase
TestPyRingStateful.settings = _machine_settings


@settings(max_examples=100, deadline=None)
@given(
    capacity=st.integers(2, 12),
    ops=st.lists(
        st.one_of(st.integers(0, 20), st.sampled_from(["pop", "latest", "len"])), max_size=120
    ),
)
def test_compiled_ring_agrees_with_the_oracle(capacity: int, ops: list[object]) -> None:
    """Differential check: the same operations give the same answers on both rings."""
    a, b = SpscRing(capacity), PyRing(capacity)
    assert a.capacity == b.capacity
    seq = 0
    for op in ops:
        if op == "pop":
            assert a.pop() == b.pop()
        elif op == "latest":
            sa: list[int] = []
            sb: list[int] = []
            assert a.pop_latest(sa) == b.pop_latest(sb)
            assert sa == sb
        elif op == "len":
            assert len(a) == len(b)
        else:
            for _ in range(op):  # type: ignore[call-overload]
                assert a.push(*rec(seq)) == b.push(*rec(seq))
                seq += 1
        assert len(a) == len(b)
