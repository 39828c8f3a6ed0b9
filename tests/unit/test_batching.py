"""BatchPool and Batch: slots, policy, lifetime and memory.

The tests that look at pixels run once per writer, each on its real path (uvloop's pattern):
``copy`` is the pool's own ``np.copyto`` of arrays, ``compiled`` converts yuv420p PyAV frames
with the ``nogil`` kernel, ``reference`` with swscale through PyAV. Frame
``v`` is uniform grey at luma level ``16 + 5 v``, so a slot reads back as exactly one ``v`` (or
the test fails as torn), within the kernels' tolerance of swscale's own output.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import av
import numpy as np
import pytest

from comux.batching import (
    Batch,
    BatchPool,
    FrameWriter,
    compiled_writer,
    pyav_writer,
)
from comux.errors import BatchReleasedError, ComuxTimeoutError, ConfigError, UnknownCameraError

SHAPE = (4, 6, 3)
LEVELS = 44  # distinct frame values: luma 16 + 5 v stays within 16..235
TOLERANCE = {"copy": 0, "reference": 0, "compiled": 2}  # against swscale (test_convert.py)


def frame(v: int) -> np.ndarray:
    return np.full(SHAPE, v, np.uint8)


def grey_frame(v: int, shape: tuple[int, ...] = SHAPE) -> av.VideoFrame:
    """A yuv420p frame, limited range and untagged as cameras send it, that reads back as ``v``."""
    height, width = shape[:2]
    out = av.VideoFrame(width, height, "yuv420p")
    for plane, level in zip(out.planes, (16 + 5 * v, 128, 128), strict=True):
        plane.update(bytes([level]) * plane.buffer_size)
    return out


class Writer:
    """One writer under test: what it is fed, and which ``v`` a slot it wrote holds."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tolerance = TOLERANCE[name]
        self._oracles: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}
        self.writer: FrameWriter | None = None
        if name == "reference":
            self.writer = pyav_writer("rgb24")
        elif name == "compiled":
            self.writer = compiled_writer("rgb24")

    def frame(self, v: int, shape: tuple[int, ...] = SHAPE) -> Any:
        assert 0 <= v < LEVELS
        return np.full(shape, v, np.uint8) if self.name == "copy" else grey_frame(v, shape)

    def oracle(self, v: int, shape: tuple[int, ...]) -> np.ndarray:
        """What the slot must hold: the array itself, or swscale's conversion of the frame."""
        key = (v, shape)
        if key not in self._oracles:
            made = self.frame(v, shape)
            self._oracles[key] = made if self.name == "copy" else made.to_ndarray(format="rgb24")
        return self._oracles[key]

    def value(self, pixels: np.ndarray) -> int:
        """The ``v`` whose frame ``pixels`` holds; fails when they match no single frame."""
        shape = pixels.shape
        step = float(self.oracle(LEVELS - 1, shape).flat[0]) / (LEVELS - 1)
        guess = round(float(pixels.flat[0]) / step)
        for v in (guess, guess - 1, guess + 1):
            if 0 <= v < LEVELS:
                diff = np.abs(pixels.astype(np.int16) - self.oracle(v, shape)).max()
                if diff <= self.tolerance:
                    return v
        raise AssertionError(f"{self.name}: a torn or foreign slot: {np.unique(pixels)}")


@pytest.fixture(params=["copy", "compiled", "reference"])
def writer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Writer]:
    """Run the test once per writer; fail a variant that did not take its own path."""
    kernel = {"writes": 0}
    if request.param == "compiled":
        convert = pytest.importorskip("comux._ext.convert")
        real = convert.write_frame

        def counted(*args: Any, **kwargs: Any) -> None:
            real(*args, **kwargs)
            kernel["writes"] += 1  # only once the kernel took the frame: not the fallback

        monkeypatch.setattr(convert, "write_frame", counted)  # compiled_writer binds it now
    yield Writer(request.param)
    if request.param == "compiled":
        assert kernel["writes"] > 0, "the compiled variant never reached the kernel"


def pool(*cams: str, **kw) -> BatchPool:
    p = BatchPool(SHAPE, **kw)
    for cam in cams:
        p.add(cam)
    return p


def test_batch_waits_for_every_camera_and_keeps_the_newest(writer):
    p = pool("a", "b", writer=writer.writer)
    p.write("a", writer.frame(0), 8)
    p.write("b", writer.frame(0), 2)
    p.seal().release()
    p.write("a", writer.frame(1), 10)
    p.write("a", writer.frame(2), 11)
    done = threading.Event()
    result: list[Batch] = []

    def take() -> None:
        result.append(p.seal())
        done.set()

    t = threading.Thread(target=take)
    t.start()
    assert not done.wait(0.05)  # b has no frame yet
    p.write("b", writer.frame(7), 3)
    t.join(5)
    batch = result[0]
    assert batch.cam_ids == ["a", "b"]
    assert batch.frames.shape == (2, *SHAPE) and batch.frames.flags.c_contiguous
    assert batch.indices.tolist() == [11, 3]
    assert batch.valid.tolist() == [True, True]
    assert [writer.value(f) for f in batch.frames] == [2, 7]
    assert [(c, i) for c, i, _ in batch] == [("a", 11), ("b", 3)]
    assert p.counters("a")["replaced"] == 1
    batch.release()


def test_frames_are_written_in_place_no_copy_at_seal():
    p = pool("a", writer=None)
    p.write("a", frame(5), 0)
    batch = p.seal()
    assert p.bytes_copied == 0
    assert np.shares_memory(batch.frames, p._buffers[0].frames) or any(
        np.shares_memory(batch.frames, b.frames) for b in p._buffers
    )
    batch.release()


def test_timeout_gives_partial_batch_or_none():
    p = pool("a", "b")
    assert p.seal(timeout=0.01) is None
    p.write("b", frame(3), 9)
    batch = p.seal(timeout=0.01)
    assert batch.valid.tolist() == [False, True]
    assert batch.indices.tolist() == [-1, 9]
    assert [f is None for _, _, f in batch] == [True, False]
    batch.release()


def test_max_wait_releases_a_batch_without_the_slow_camera():
    p = pool("a", "b", max_wait=0.02)
    p.write("a", frame(1), 1)
    batch = p.seal()  # no timeout: max_wait alone must release it
    assert batch.valid.tolist() == [True, False]
    batch.release()


def test_failed_decode_keeps_index_without_frame():
    p = pool("a")
    p.write("a", None, 42)
    with p.seal() as batch:
        assert batch.indices.tolist() == [42]
        assert batch.valid.tolist() == [False]
        assert list(batch) == [("a", 42, None)]


def test_stale_frames_are_dropped_and_counted():
    p = pool("a", max_staleness=0.0)
    p.write("a", frame(1), 1)
    threading.Event().wait(0.01)  # age the frame past a zero staleness limit
    with p.seal() as batch:
        assert batch.valid.tolist() == [False]
    assert p.counters("a")["stale"] == 1


def test_repeat_last_fills_an_empty_slot_with_the_previous_frame(writer):
    p = pool("a", "b", repeat_last=True, max_wait=0, writer=writer.writer)
    p.write("a", writer.frame(1), 1)
    p.write("b", writer.frame(2), 2)
    p.seal().release()
    p.write("a", writer.frame(3), 3)
    with p.seal() as batch:
        assert batch.valid.tolist() == [True, True]
        assert [writer.value(f) for f in batch.frames] == [3, 2]
        assert batch.indices.tolist() == [3, 2]


def test_released_batch_refuses_access_and_double_release_is_harmless():
    p = pool("a")
    p.write("a", frame(1), 1)
    batch = p.seal()
    detached = batch.copy()
    batch.release()
    batch.release()
    with pytest.raises(BatchReleasedError):
        batch.frames  # noqa: B018
    with pytest.raises(BatchReleasedError):
        list(batch)
    assert detached.frames[0, 0, 0, 0] == 1 and detached.indices.tolist() == [1]


def test_held_buffer_is_never_written_and_pool_exhaustion_is_a_clear_error(writer):
    p = pool("a", buffers=2, writer=writer.writer)
    p.write("a", writer.frame(1), 1)
    held = p.seal()
    p.write("a", writer.frame(2), 2)  # goes to the other buffer
    assert writer.value(held.frames[0]) == 1
    with pytest.raises(ComuxTimeoutError, match="held"):
        p.seal(timeout=0.05)
    held.release()
    with p.seal(timeout=1) as nxt:
        assert writer.value(nxt.frames[0]) == 2


def test_cameras_added_and_removed_change_n_of_the_next_batch_only(writer):
    p = pool("a", "b", "c", capacity=2, buffers=3, writer=writer.writer)
    for i, cam in enumerate("abc"):
        p.write(cam, writer.frame(i + 1), i)
    held = p.seal()
    assert held.cam_ids == ["a", "b", "c"]
    p.remove("a")  # c moves into a's slot
    p.add("d")
    for i, cam in enumerate("bcd"):
        p.write(cam, writer.frame(10 + i), 100 + i)
    with p.seal() as batch:
        assert sorted(batch.cam_ids) == ["b", "c", "d"]
        got = {c: (i, writer.value(f)) for c, i, f in batch}
        assert got == {"b": (100, 10), "c": (101, 11), "d": (102, 12)}
    # The held batch still shows what it had.
    assert [writer.value(f) for f in held.frames] == [1, 2, 3]
    held.release()


def test_take_copies_one_camera_out():
    p = pool("a", "b")
    p.write("a", frame(4), 8)
    assert p.take("a", timeout=0.01)[1] == 8
    assert p.take("a", timeout=0.01) is None
    with pytest.raises(UnknownCameraError):
        p.take("zz")


def test_allocator_hook_and_dlpack_share_memory():
    made = []

    def allocator(shape):
        made.append(np.zeros(shape, np.uint8))
        return made[-1]

    p = pool("a", allocator=allocator)
    p.write("a", frame(9), 1)
    with p.seal() as batch:
        assert any(np.shares_memory(batch.frames, m) for m in made)
        via_dlpack = np.from_dlpack(batch.frames)
        assert np.shares_memory(via_dlpack, batch.frames)
        assert np.shares_memory(np.from_dlpack(batch), batch.frames)


@pytest.mark.parametrize("kw", [{"buffers": 1}, {"max_wait": -1}, {"max_staleness": -0.5}])
def test_bad_pool_settings(kw):
    with pytest.raises(ConfigError):
        BatchPool(SHAPE, **kw)


def test_bad_allocator_output_is_refused():
    with pytest.raises(ConfigError, match="uint8"):
        BatchPool(SHAPE, allocator=lambda s: np.zeros(s, np.float32))


def test_fifo_writes_each_frame_into_its_own_later_batch_until_the_rows_run_out(writer):
    p = BatchPool(SHAPE, buffers=3, writer=writer.writer)
    p.add("a", policy="fifo")
    frames = [writer.frame(i) for i in range(4)]
    assert [p.write("a", frames[i], i) for i in range(4)] == [True, True, True, False]
    rows = p.rows("a")
    assert p.publish(rows, frames[3], 3) == "full"
    seen = []
    for _ in range(3):
        with p.seal(timeout=1) as batch:
            seen.append((int(batch.indices[0]), writer.value(batch.frames[0])))
        # Each release opens a buffer: the frame that found no row goes in now.
        if len(seen) == 1:
            assert p.write("a", frames[3], 3)
    with p.seal(timeout=1) as batch:
        seen.append((int(batch.indices[0]), writer.value(batch.frames[0])))
    assert seen == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert p.counters("a")["replaced"] == 0 and p.counters("a")["in_batches"] == 4


def test_a_full_fifo_camera_is_woken_when_a_buffer_opens():
    p = BatchPool(SHAPE, buffers=2)
    rows = p.add("a", policy="fifo")
    woken = threading.Event()
    rows.on_room = woken.set
    assert p.write("a", frame(0), 0) and p.write("a", frame(1), 1)
    rows.blocked = True
    assert p.publish(rows, frame(2), 2) == "full"
    batch = p.seal(timeout=1)
    assert not woken.is_set()  # sealing moves on, only a release frees a row
    batch.release()
    assert woken.is_set() and not rows.blocked


def test_a_silent_camera_stops_holding_batches_back_and_is_counted():
    p = pool("a", "b", stall_timeout=0.05)
    p.write("a", frame(1), 1)
    p.write("b", frame(1), 1)
    p.seal(timeout=1).release()
    p.write("a", frame(2), 2)  # b says nothing from now on
    with p.seal(timeout=5) as batch:  # released by b's stall, not by the timeout
        assert batch.valid.tolist() == [True, False]
    assert p.counters("b")["stalls"] == 1
    p.write("a", frame(3), 3)
    with p.seal(timeout=5) as batch:  # b is known silent: no second wait
        assert batch.valid.tolist() == [True, False]
    assert p.counters("b")["stalls"] == 1
    p.write("b", frame(4), 4)  # back: it holds batches again
    assert p.counters("b")["stalled_seconds"] > 0
    p.write("a", frame(5), 5)
    with p.seal(timeout=5) as batch:
        assert batch.valid.tolist() == [True, True]


def test_a_camera_slower_than_a_second_by_design_is_not_called_silent():
    p = pool("a", "slow")
    slow = p.rows("slow")
    p.write("slow", frame(1), 1)
    p.seal(timeout=1).release()
    slow.interval = 2.0  # rate=0.5: a frame every two seconds
    slow.last_frame_at = time.monotonic() - 1.5
    p.write("a", frame(2), 2)
    start = time.monotonic()
    with p.seal(timeout=5) as batch:  # past its 1 s limit it no longer holds batches back
        assert batch.valid.tolist() == [True, False]
    assert time.monotonic() - start < 0.5
    assert p.counters("slow")["stalls"] == 0
    slow.last_frame_at = time.monotonic() - 7  # three of its intervals and more: silent
    p.write("a", frame(3), 3)
    p.seal(timeout=5).release()
    assert p.counters("slow")["stalls"] == 1 and p.counters("slow")["stalled_seconds"] >= 7


def test_the_learned_stall_limit_follows_the_frame_interval():
    p = pool("a")
    rows = p.rows("a")
    assert p.stall_limit(rows) == 1.0  # nothing learned yet: the ceiling
    rows.interval = 0.04
    assert p.stall_limit(rows) == pytest.approx(0.12)
    rows.interval = 5.0
    assert p.stall_limit(rows) == 1.0


@pytest.mark.parametrize("kw", [{"stall_timeout": -1}, {"stall_timeout": "1s"}])
def test_bad_stall_timeout_names_the_setting(kw):
    with pytest.raises(ConfigError, match="stall_timeout"):
        BatchPool(SHAPE, **kw)


def test_camera_changes_and_close_never_wait_for_a_waiting_seal():
    p = pool("a")
    p.write("a", frame(1), 1)
    p.seal(timeout=1).release()  # a is now live and silent: seal would wait for it
    result: list[object] = []
    sealer = threading.Thread(target=lambda: result.append(p.seal(timeout=30)))
    sealer.start()
    p.add("new")
    p.remove("new")
    for i in range(100):
        p.add(f"c{i}")
    assert len(p.cameras()) == 101 and sealer.is_alive()
    p.close()
    sealer.join(5)
    assert not sealer.is_alive() and result == [None]


@pytest.mark.parametrize("policy", ["latest", "fifo"])
def test_writers_racing_a_sealer_and_camera_changes_never_tear_a_batch(writer, policy):
    """Each frame is filled with one value; a torn slot would mix two of them.

    The kernel releases the GIL while it writes, so with ``compiled`` the sealer really runs
    during a write.
    """
    shape = (32, 32, 3)
    p = BatchPool(shape, buffers=3, capacity=4, max_wait=0.001, writer=writer.writer)
    p.add("x")  # never writes; removing it moves "b" into its slot mid-race
    cams = ["a", "b"]
    rows = {cam: p.add(cam, policy) for cam in cams}
    stop = threading.Event()

    def produce(cam: str) -> None:
        i = 0
        while not stop.is_set():
            result = p.publish(rows[cam], writer.frame(i % LEVELS, shape), i)
            if result == "written":
                i += 1
            else:  # fifo with every row taken: the sealer frees one soon
                threading.Event().wait(0.0005)

    def churn() -> None:  # moves a writing camera, grows the buffers, adds and removes
        threading.Event().wait(0.05)
        p.remove("x")
        while not stop.is_set():
            extra = [f"c{i}" for i in range(6)]
            for cam in extra:
                p.add(cam)
            for cam in reversed(extra):
                p.remove(cam)

    threads = [threading.Thread(target=produce, args=(c,)) for c in cams]
    threads.append(threading.Thread(target=churn))
    for t in threads:
        t.start()
    last = {c: -1 for c in cams}
    try:
        for _ in range(200):
            batch = p.seal(timeout=1)
            assert batch is not None
            with batch:
                for slot, (cam, index, f) in enumerate(batch):
                    if f is None or cam not in last:
                        continue
                    assert writer.value(f) == index % LEVELS, "mismatched slot"
                    if policy == "fifo":
                        assert index == last[cam] + 1, "fifo lost or repeated a frame"
                    assert index > last[cam]  # never repeated, never older
                    last[cam] = index
                    assert batch.valid[slot]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert min(last.values()) > 10 and p.rows("b").slot == 0


def test_a_camera_without_its_first_frame_does_not_stall_the_others():
    p = pool("a")
    p.add("new")  # waiting for its first keyframe
    p.write("a", frame(1), 1)
    with p.seal(timeout=5) as batch:
        assert batch.cam_ids == ["a", "new"]
        assert batch.valid.tolist() == [True, False]


@pytest.mark.parametrize("pix_fmt", ["rgb24", "bgr24", "gray", "yuv420p"])
def test_compiled_and_reference_writers_assemble_the_same_batches(small_video, pix_fmt):
    """Parity: the nogil kernels against swscale through PyAV, on real decoded frames."""
    import av

    ctx = av.CodecContext.create("h264", "r")
    decoded = [f for p in small_video[:20] for f in ctx.decode(av.Packet(p.data))]
    shape = {
        "rgb24": (240, 320, 3),
        "bgr24": (240, 320, 3),
        "gray": (240, 320),
        "yuv420p": (360, 320),
    }[pix_fmt]
    # Named, not frame_writer(): under COMUX_BACKEND=reference that is pyav_writer too.
    pools = [BatchPool(shape, writer=w(pix_fmt)) for w in (compiled_writer, pyav_writer)]
    for p in pools:
        p.add("a")
        p.add("b")
    for i in range(0, len(decoded) - 1, 2):
        batches = []
        for p in pools:
            p.write("a", decoded[i], i)
            p.write("b", decoded[i + 1], i + 1)
            batches.append(p.seal(timeout=1))
        compiled, reference = batches
        assert compiled.indices.tolist() == reference.indices.tolist() == [i, i + 1]
        diff = np.abs(compiled.frames.astype(int) - reference.frames.astype(int)).max()
        assert diff <= 2, f"{pix_fmt}: max difference {diff}"
        for b in batches:
            b.release()


def takes(p: BatchPool, n: int) -> list[int]:
    got = []
    for _ in range(n):
        batch = p.seal(timeout=0.05)
        if batch is None:
            break
        with batch:
            got.append(int(batch.indices[0]))
    return got


def test_latest_keeps_a_burst_for_the_next_batch_while_the_model_waits():
    p = pool("a", "b")
    rows = p.rows("a")
    p._ring.model_waiting = True  # as while the model sits in seal(), waiting for "b"
    p.publish(rows, frame(1), 1)
    p.publish(rows, frame(2), 2, burst=True)  # left the decoder with frame 1
    p.publish(rows, frame(3), 3, burst=True)
    p.publish(rows, frame(4), 4)  # a steady frame replaces the newest
    p._ring.model_waiting = False
    assert takes(p, 3) == [1, 4]  # never more than one buffer ahead of the filling one
    assert p.counters("a")["replaced"] == 2


def test_latest_gives_a_busy_model_the_newest_frame_even_after_a_burst():
    p = pool("a")
    rows = p.rows("a")
    p.publish(rows, frame(1), 1)
    p.publish(rows, frame(2), 2, burst=True)  # nobody waits: no reason to keep frame 1
    p.publish(rows, frame(3), 3)
    assert takes(p, 2) == [3]


def test_take_hands_out_a_fifo_backlog_in_order_and_wakes_a_full_camera():
    """Found by test_batching_states.py: take emptied the filling row and the rest hid behind."""
    p = BatchPool(SHAPE, buffers=3)
    rows = p.add("a", policy="fifo")
    woken = threading.Event()
    rows.on_room = woken.set
    assert [p.write("a", frame(i), i) for i in range(3)] == [True, True, True]
    rows.blocked = True
    assert p.publish(rows, frame(3), 3) == "full"
    got = [p.take("a", timeout=0.01)]
    assert woken.is_set() and not rows.blocked  # a row opened at the end of its ring
    assert p.write("a", frame(3), 3)
    got += [p.take("a", timeout=0.01) for _ in range(4)]
    assert [(e[1], int(e[2][0, 0, 0])) for e in got if e is not None] == [(i, i) for i in range(4)]
    assert got[-1] is None and p.write("a", frame(4), 4)
    with p.seal(timeout=1) as batch:
        assert batch.indices.tolist() == [4]


def test_an_empty_slot_shows_no_index_left_by_a_taken_frame_or_a_removed_camera():
    """Found by test_batching_states.py: the row kept the old index, shown as a failed packet."""
    p = pool("a", "b")
    p.write("a", frame(1), 7)
    p.write("b", frame(2), 9)
    assert p.take("a", timeout=0.01)[1] == 7
    p.remove("b")
    p.add("c")  # takes b's old row
    p.write("a", None, 8)  # a packet that failed: its index is kept, its slot invalid
    with p.seal(timeout=0) as batch:
        assert list(batch) == [("a", 8, None), ("c", -1, None)]
    p.write("a", frame(3), 10)
    assert p.take("a", timeout=0.01)[1] == 10
    p.write("c", frame(4), 11)
    with p.seal(timeout=0) as batch:
        assert batch.indices.tolist() == [-1, 11] and batch.pts.tolist() == [-1, -1]
