"""BatchPool as a state machine: hypothesis drives cameras, decoders and the model at random.

Each step is one thing a part of comux does to the pool: a decoder publishes a frame (or a
failed packet, or a B-frame burst while the model waits) and holds it when its fifo rows are
full, as ``Camera._publish`` does; the model seals (``timeout=0``), takes one camera's frame or
releases a batch; cameras are added, removed (paused) and added back (joined), or switch policy;
one step runs a decoder thread against a sealing model. After every step:

- nothing is torn: every pixel of a slot is the frame written with that slot's index (the
  camera's number and the index are encoded into the pixels), in each batch when it is sealed
  and in every held batch again after each step, so a held buffer that is written shows up;
- no frame twice: per camera, the indices that reach batches only grow, so fifo hands each
  frame out once and latest never hands out an older frame after a newer one;
- every frame is counted somewhere: each index a decoder published is in exactly one of
  batches, ``replaced`` (the pool's ``on_replaced``), taken, or still in an open buffer, and the
  pool's own counters agree; a removed camera's open rows are ``gone``;
- nothing is stuck: a frame in an open buffer is reachable, i.e. the buffer sealed next holds a
  frame whenever any open buffer does.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from comux.batching import Batch, BatchPool, CameraRows, Policy
from comux.errors import ComuxTimeoutError

SHAPE = (2, 3, 3)
CAMERAS = ("a", "b", "c", "d")
policies = st.sampled_from(["latest", "fifo"])
cameras = st.sampled_from(CAMERAS)


def pixels(cam_no: int, index: int) -> np.ndarray:
    """The frame a decoder makes for ``index``: every pixel says whose frame it is and which."""
    out = np.empty(SHAPE, np.uint8)
    out[..., 0] = cam_no
    out[..., 1] = index & 0xFF
    out[..., 2] = index >> 8
    out[0, 0] = (cam_no * 37 + index * 11) & 0xFF  # not uniform: a shifted copy shows too
    return out


@dataclass
class Cam:
    """The test's record of one camera, from its add to its removal."""

    no: int
    rows: CameraRows
    policy: Policy
    published: list[int] = field(default_factory=list)  # "written", in order
    failed: set[int] = field(default_factory=set)  # published as None (a failed packet)
    held: deque[tuple[int, bool]] = field(default_factory=deque)  # (index, failed): "full"
    replaced: list[int] = field(default_factory=list)
    batched: list[int] = field(default_factory=list)
    taken: list[int] = field(default_factory=list)
    woken: int = 0
    waits: bool = False  # its decoder found no row and waits for on_room
    ever_latest: bool = False

    def wake(self) -> None:
        """``on_room``: a row opened; the decoder tries its held frames on its next turn."""
        self.woken += 1
        self.waits = False


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pool: BatchPool
        self.cams: dict[str, Cam] = {}
        self.next_index: dict[str, int] = dict.fromkeys(CAMERAS, 0)
        self.last_out: dict[str, int] = dict.fromkeys(CAMERAS, -1)  # newest index handed out
        self.cam_numbers = {cam: i + 1 for i, cam in enumerate(CAMERAS)}
        self.held: list[tuple[Batch, list[tuple[str, int, bool]]]] = []
        self.buffers = 0
        self.gone = 0

    @initialize(buffers=st.integers(2, 4), capacity=st.integers(1, 3))
    def make_pool(self, buffers: int, capacity: int) -> None:
        self.buffers = buffers
        self.pool = BatchPool(SHAPE, buffers=buffers, capacity=capacity)

    # -- cameras -------------------------------------------------------------------------------

    @rule(cam=cameras, policy=policies)
    def add(self, cam: str, policy: Policy) -> None:
        """Add a camera (or join it again after a pause); a live one switches policy."""
        rows = self.pool.add(cam, policy)
        model = self.cams.get(cam)
        if model is None:
            model = Cam(self.cam_numbers[cam], rows, policy)
            rows.on_replaced = model.replaced.append
            rows.on_room = model.wake
            self.cams[cam] = model
        assert model.rows is rows
        model.policy = policy
        model.ever_latest |= policy == "latest"

    @precondition(lambda self: self.cams)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        """Pause or delete a camera: its open rows and held frames are gone, not batched."""
        cam = data.draw(st.sampled_from(sorted(self.cams)))
        model = self.cams.pop(cam)
        self.gone += len(self.pending(model)) + len(model.held)
        self.pool.remove(cam)
        assert cam not in self.pool and model.rows.slot == -1
        assert self.pool.publish(model.rows, pixels(model.no, 0), 0) == "gone"

    # -- decoders ------------------------------------------------------------------------------

    def publish(self, cam: str, model: Cam, index: int, failed: bool, burst: bool) -> bool:
        """Publish one frame as ``Camera._publish`` does; False when it must wait for a row."""
        frame = None if failed else pixels(model.no, index)
        result = self.pool.publish(model.rows, frame, index, burst=burst)
        if result == "full":
            model.rows.blocked = True  # before looking again, so an opening buffer wakes us
            result = self.pool.publish(model.rows, frame, index, burst=burst)
            if result == "full":
                model.waits = True
                return False
            model.rows.blocked = False
        assert result == "written", result
        model.waits = False
        model.published.append(index)
        if failed:
            model.failed.add(index)
        return True

    def decode(self, cam: str, failed: bool = False, burst: bool = False) -> None:
        model = self.cams[cam]
        index = self.next_index[cam]
        self.next_index[cam] += 1
        model.held.append((index, failed))
        self.resume_camera(cam, burst)

    def resume_camera(self, cam: str, burst: bool = False) -> None:
        model = self.cams[cam]
        while model.held:
            index, failed = model.held[0]
            if not self.publish(cam, model, index, failed, burst):
                assert model.policy == "fifo" and model.rows.blocked
                return
            model.held.popleft()

    @precondition(lambda self: self.cams)
    @rule(data=st.data(), failed=st.booleans(), frames=st.integers(1, 3))
    def write(self, data: st.DataObject, failed: bool, frames: int) -> None:
        """A decoder hands over its next frames (``failed``: the first packet did not decode)."""
        cam = data.draw(st.sampled_from(sorted(self.cams)))
        for i in range(frames):
            self.decode(cam, failed=failed and i == 0)

    @precondition(lambda self: self.cams)
    @rule(data=st.data())
    def write_burst_while_the_model_waits(self, data: st.DataObject) -> None:
        """B-frames leave the decoder together while the model sits in seal()."""
        cam = data.draw(st.sampled_from(sorted(self.cams)))
        self.pool._ring.model_waiting = True  # what seal() sets while it waits for frames
        try:
            self.decode(cam)
            self.decode(cam, burst=True)
        finally:
            self.pool._ring.model_waiting = False

    @precondition(lambda self: self.cams)
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        """A decoder that waited for a row (if it did) tries its held frames again."""
        self.resume_camera(data.draw(st.sampled_from(sorted(self.cams))))

    @precondition(lambda self: self.cams)
    @rule(data=st.data(), frames=st.integers(1, 8))
    def decoder_thread_races_the_model(self, data: st.DataObject, frames: int) -> None:
        """One camera's decoder thread publishes while this thread seals, checks and releases.

        What it leaves depends on the timing, so rules draw nothing from it: preconditions
        look at the cameras alone, and ``release`` picks its batch modulo the number held.
        """
        cam = data.draw(st.sampled_from(sorted(self.cams)))
        done = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                for _ in range(frames):
                    self.decode(cam)
            except BaseException as exc:  # reported below
                errors.append(exc)
            finally:
                done.set()

        thread = threading.Thread(target=run)
        thread.start()
        sealed: list[tuple[Batch, list[tuple[str, int, bool]]]] = []
        while not done.wait(0.0001):  # a short wait lets the writer have the GIL
            got = self.seal_once(also_held=len(sealed))
            if got is not None:
                sealed.append(got)
                if len(sealed) > 1:  # keep the last one held while the writer goes on
                    batch, snapshot = sealed.pop(0)
                    self.check_batch(batch, snapshot)
                    batch.release()
        thread.join()
        assert not errors, errors
        for batch, snapshot in sealed:
            self.check_batch(batch, snapshot)
            batch.release()

    # -- the model -----------------------------------------------------------------------------

    def seal_once(self, also_held: int = 0) -> tuple[Batch, list[tuple[str, int, bool]]] | None:
        try:
            batch = self.pool.seal(timeout=0)
        except ComuxTimeoutError:
            held = len(self.held) + also_held
            assert held >= self.buffers - 1, f"refused with {held} of {self.buffers} held"
            return None
        if batch is None:
            return None
        snapshot = []
        for cam_id, index, frame in batch:
            model = self.cams.get(cam_id)
            if index < 0:
                assert frame is None
                continue
            assert model is not None, f"a batch has a slot for the removed camera {cam_id}"
            assert index > self.last_out[cam_id], f"{cam_id}: {index} after {self.last_out[cam_id]}"
            self.last_out[cam_id] = index
            model.batched.append(index)
            assert (frame is None) == (index in model.failed)
            snapshot.append((cam_id, index, frame is None))
        self.check_batch(batch, snapshot)
        return batch, snapshot

    def check_batch(self, batch: Batch, snapshot: list[tuple[str, int, bool]]) -> None:
        """The batch still shows exactly what it showed when it was sealed."""
        expected = {cam: (index, failed) for cam, index, failed in snapshot}
        for slot, cam in enumerate(batch.cam_ids):
            if cam not in expected:
                assert batch.indices[slot] == -1 and not batch.valid[slot]
                continue
            index, failed = expected[cam]
            assert batch.indices[slot] == index
            assert batch.valid[slot] == (not failed)
            if not failed:
                want = pixels(self.cam_numbers[cam], index)
                assert (batch.frames[slot] == want).all(), f"slot {slot} ({cam}) is torn"

    @rule()
    def seal(self) -> None:
        got = self.seal_once()
        if got is not None:
            self.held.append(got)

    @rule(pick=st.integers(0, 3))
    def release(self, pick: int) -> None:
        if not self.held:
            return
        batch, snapshot = self.held.pop(pick % len(self.held))
        self.check_batch(batch, snapshot)
        blocked = {cam: m.woken for cam, m in self.cams.items() if m.rows.blocked}
        batch.release()
        assert batch.released
        for cam, woken in blocked.items():
            model = self.cams[cam]
            assert model.woken == woken + 1 and not model.rows.blocked, f"{cam} was not woken"

    @precondition(lambda self: self.cams)
    @rule(data=st.data())
    def take(self, data: st.DataObject) -> None:
        """The model copies one camera's next frame out (``Comux.get``)."""
        cam = data.draw(st.sampled_from(sorted(self.cams)))
        model = self.cams[cam]
        pending = self.pending(model)
        entry = self.pool.take(cam, timeout=0)
        if entry is None:
            assert not pending, f"{cam}: take found nothing though {pending} wait in the pool"
            return
        cam_id, index, frame = entry
        assert cam_id == cam and index == min(pending)
        assert index > self.last_out[cam]
        self.last_out[cam] = index
        model.taken.append(index)
        if index in model.failed:
            assert frame is None
        else:
            assert frame is not None and (frame == pixels(model.no, index)).all()

    # -- what must always hold -----------------------------------------------------------------

    def pending(self, model: Cam) -> list[int]:
        """The indices in the camera's rows of the open buffers (test-only look inside)."""
        slot = model.rows.slot
        return [
            int(buf.indices[slot])
            for _, buf in sorted(self.pool._open.items())
            if slot >= 0 and buf.written[slot]
        ]

    @invariant()
    def held_batches_are_never_written(self) -> None:
        for batch, snapshot in self.held:
            self.check_batch(batch, snapshot)

    @invariant()
    def every_frame_is_counted_once(self) -> None:
        for cam, model in self.cams.items():
            pending = self.pending(model)
            where = model.batched + model.replaced + model.taken + pending
            assert sorted(where) == model.published, (cam, model)
            counters = self.pool.counters(cam)
            assert counters["replaced"] == len(model.replaced)
            assert counters["in_batches"] + counters["invalid_in_batches"] == len(model.batched)
            if not model.ever_latest:
                assert not model.replaced, f"fifo camera {cam} lost frames to replacement"
            assert pending == sorted(pending), f"{cam}: open rows out of order {pending}"
            if model.waits:  # no lost wake-up: still registered as blocked
                assert model.rows.blocked and model.held, f"{cam} waits but will not be woken"

    @invariant()
    def no_frame_is_stuck(self) -> None:
        if not hasattr(self, "pool"):
            return
        filling = self.pool._open.get(self.pool._filling_seq)
        if filling is None:
            return
        live = [m.rows.slot for m in self.cams.values()]
        later = any(buf.written[live].any() for buf in self.pool._open.values() if live)
        assert not later or filling.written[live].any(), "frames wait behind an empty buffer"

    @invariant()
    def each_open_buffer_counts_its_written_rows(self) -> None:
        """The count a writer wakes the sealer by: a drift would delay or skip a wake-up."""
        if not hasattr(self, "pool"):
            return
        for seq, buf in self.pool._open.items():
            assert buf.filled == int(buf.written.sum()), (seq, buf.filled, buf.written)

    def teardown(self) -> None:
        for batch, _ in self.held:
            batch.release()


PoolMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_batch_pool_states = PoolMachine.TestCase
