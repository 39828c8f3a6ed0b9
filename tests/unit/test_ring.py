"""The ring's hand-off: the compiled core against its pure-Python reference, and under TSan.

The scripted tests run once per implementation (uvloop's pattern): ``comux._ext.ring`` with
its C atomics and ``comux.ring``, the reference that relies on the GIL. The race test of the
protocol itself is C (``ring_stress.c``): writer threads, a sealer, row freezes and buffer moves
with no Python and no GIL, built with ThreadSanitizer, which must report nothing.
"""

from __future__ import annotations

import importlib.resources
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from comux import ring as reference_ring

STRESS = Path(__file__).with_name("ring_stress.c")


@pytest.fixture(params=["compiled", "reference"])
def ring(request: pytest.FixtureRequest) -> ModuleType:
    if request.param == "reference":
        return reference_ring
    from comux._ext import ring as compiled_ring

    return compiled_ring


def copy_into(frame: Any, out: np.ndarray) -> None:
    np.copyto(out, frame)


def open_ring(ring: ModuleType, count: int = 3, fifo: bool = True) -> tuple[Any, Any, list[Any]]:
    r = ring.Ring(count)
    bufs = [ring.Buffer(i, None, np.zeros((2, 1), np.uint8)) for i in range(count)]
    for buf in bufs:
        r.open(buf)
    rows = ring.Rows()
    rows.slot, rows.fifo = 0, fifo
    return r, rows, bufs


def test_a_fifo_row_takes_one_buffer_a_frame_until_none_is_open(ring):
    r, rows, bufs = open_ring(ring)
    got = [r.publish(rows, np.uint8(i), i, 10 * i, False, copy_into) for i in range(4)]
    assert got == [ring.WRITTEN_WAKE, ring.WRITTEN, ring.WRITTEN, ring.FULL]
    assert [int(b.frames[0, 0]) for b in bufs] == [0, 1, 2]
    assert [int(b.pts[0]) for b in bufs] == [0, 10, 20]
    assert rows.writing == -1 and rows.next_seq == 3


def test_a_latest_row_replaces_its_frame_and_says_which(ring):
    r, rows, bufs = open_ring(ring, fifo=False)
    assert r.publish(rows, np.uint8(7), 7, -1, False, copy_into) == ring.WRITTEN_WAKE
    assert r.publish(rows, None, 8, -1, False, copy_into) == ring.REPLACED  # a failed packet
    assert rows.replaced_index == 7
    assert int(bufs[0].indices[0]) == 8 and bufs[0].corrupt[0] and bufs[0].written[0]
    assert not bufs[1].written.any()


def test_a_burst_goes_one_buffer_ahead_only_while_the_model_waits(ring):
    r, rows, bufs = open_ring(ring, fifo=False)
    r.publish(rows, np.uint8(1), 1, -1, False, copy_into)
    r.publish(rows, np.uint8(2), 2, -1, True, copy_into)  # nobody waits: replaces
    r.model_waiting = True
    r.publish(rows, np.uint8(3), 3, -1, True, copy_into)
    r.publish(rows, np.uint8(4), 4, -1, True, copy_into)
    assert [int(b.indices[0]) for b in bufs] == [2, 4, -1]


def test_a_sealed_buffer_takes_no_frame_and_reopens_last(ring):
    r, rows, bufs = open_ring(ring)
    sealed = r.seal()
    assert sealed is bufs[0] and sealed.seq == -1 and r.filling_seq == 1
    r.wait_writers([rows], sealed)
    assert r.publish(rows, np.uint8(5), 5, -1, False, copy_into) == ring.WRITTEN_WAKE
    assert not bufs[0].written.any() and bufs[1].written[0]
    assert r.open(sealed) == 3 and sealed.seq == 3


def test_a_removed_row_is_gone_and_a_failed_writer_leaves_no_claim(ring):
    r, rows, bufs = open_ring(ring)

    def broken(frame: Any, out: np.ndarray) -> None:
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        r.publish(rows, np.uint8(1), 1, -1, False, broken)
    assert rows.writing == -1 and not bufs[0].written.any()
    rows.slot = -1
    assert r.publish(rows, np.uint8(1), 1, -1, False, copy_into) == ring.GONE


def test_a_replaced_buffer_takes_the_old_one_s_number(ring):
    r, rows, bufs = open_ring(ring)
    fresh = ring.Buffer(9, None, np.zeros((2, 1), np.uint8))
    r.frozen = True
    r.wait_idle(rows)
    r.replace(bufs[1], fresh)
    r.frozen = False
    assert fresh.seq == 1 and bufs[1].seq == -1
    r.publish(rows, np.uint8(1), 1, -1, False, copy_into)
    r.publish(rows, np.uint8(2), 2, -1, False, copy_into)
    assert fresh.written[0] and not bufs[1].written.any()


def test_the_hand_off_is_race_free_under_thread_sanitizer(tmp_path: Path) -> None:
    """Writers, a sealer, takes and buffer moves in C threads: no TSan report, no lost frame.

    A broken claim (the seq re-check after announcing the buffer dropped) or a sealer that does
    not wait for writers fails it with torn rows and data-race reports.
    """
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed (scripts/bootstrap.sh installs gcc)"
    binary = tmp_path / "ring_stress"
    core = importlib.resources.files("comux._ext")  # ring.h ships with the package
    subprocess.run(
        [cc, "-O1", "-g", "-fsanitize=thread", "-pthread", f"-I{core}", str(STRESS),
         "-o", str(binary)],
        check=True,
    )  # fmt: skip
    done = subprocess.run(
        [str(binary), "20000"], capture_output=True, text=True, timeout=240,
        env={"TSAN_OPTIONS": "exitcode=66"},
    )  # fmt: skip
    assert "ThreadSanitizer" not in done.stderr, done.stderr[-4000:]
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert "0 failures" in done.stdout
