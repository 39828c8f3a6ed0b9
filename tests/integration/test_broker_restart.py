"""The broker goes away and comes back while live cameras publish and the model sends results.

Against a broker of this module's own (``private_broker``), stopped and started again on the
same port and data folder; the session broker the other tests use is never touched.

- frames flow again within 10 s of the broker's return (the resume time is printed), after an
  outage within the consumer group's session and after one that outlasts it;
- every result sent before, during and after the outage reaches the output topic: ``send``
  during the outage buffers, it does not raise;
- no offset published while comux ran is skipped without being counted (``packets`` plus
  ``lag_unread`` cover everything past the first assignment);
- ``close(timeout=5)`` while the broker is down returns in about 5 s.

Every test prints what it measured (``pytest -s`` shows it).
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from comux import Comux
from tests.fault_helpers import (
    PublisherProcess,
    ResultCheck,
    check_results,
    comux_threads,
    high_watermarks,
    read_outputs,
    restart_up,
)
from tests.fleet_helpers import create_topics, poll_until, unique, wait_until
from tests.groups import own_group

FPS = 15
CAMS = 3
RESUME_LIMIT_S = 10.0
# The broker stays down this long after down() returned, plus its start time (3-5 s here).
# comux's consumer group session is 6 s (session.timeout.ms): the short outage stays within
# it, the long one outlasts it (the group moves on and the consumer has to rejoin).
OUTAGE_S = 3.0
LONG_OUTAGE_S = 12.0
RESULT_DELAY_S = 1.5  # the model's results come out this long after the frame (a pipeline)
CLOSE_TIMEOUT_S = 5.0
CLOSE_SLACK_S = 1.0


def _ensure_up(broker) -> str:
    if broker.status() is None:
        restart_up(broker)
    return broker.bootstrap


@dataclass
class Sent:
    t: float
    cam_id: str
    index: int


@dataclass
class ResultLoop:
    """A model thread: get_batch in a loop; each valid frame's result is sent ``delay`` s later.

    The delay stands for a model pipeline (a tracker that reports when a track closes): it is
    what makes the loop send while the broker is down, for frames it got before. A send that
    raises is recorded with its time, never retried or hidden.
    """

    cameras: Comux
    delay: float = RESULT_DELAY_S
    batches: list[tuple[float, list[tuple[str, int, bool]]]] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    send_errors: list[tuple[float, str, int, str]] = field(default_factory=list)
    error: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None

    def start(self) -> ResultLoop:
        self.thread = threading.Thread(target=self._run, name="model-loop", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        pending: collections.deque[tuple[float, str, int]] = collections.deque()
        try:
            while not self.stop.is_set():
                batch = self.cameras.get_batch(timeout=0.2)
                now = time.monotonic()
                if batch is not None:
                    rows = [(c, i, f is not None) for c, i, f in batch]
                    with self.lock:
                        self.batches.append((now, rows))
                    pending.extend((now + self.delay, c, i) for c, i, ok in rows if ok)
                while pending and pending[0][0] <= now:
                    _, cam_id, index = pending.popleft()
                    self._send(cam_id, index)
            for _, cam_id, index in pending:  # the pipeline drains before the loop ends
                self._send(cam_id, index)
        except BaseException as exc:
            self.error = exc

    def _send(self, cam_id: str, index: int) -> None:
        t = time.monotonic()
        try:
            self.cameras.send(cam_id, index, {"model": "restart-test", "sent_at": t})
        except Exception as exc:
            self.send_errors.append((t, cam_id, index, f"{type(exc).__name__}: {exc}"))
            return
        self.sent.append(Sent(t, cam_id, index))

    def halt(self, timeout: float = 15.0) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout)
            assert not self.thread.is_alive(), "the model loop did not stop"

    def valid_counts(self) -> collections.Counter[str]:
        with self.lock:
            return collections.Counter(c for _, rows in self.batches for c, _, ok in rows if ok)

    def max_index(self, until: float) -> dict[str, int]:
        out: dict[str, int] = {}
        with self.lock:
            for t, rows in self.batches:
                if t > until:
                    break
                for c, i, ok in rows:
                    if ok:
                        out[c] = max(out.get(c, -1), i)
        return out

    def first_valid(self, cam_id: str) -> float:
        with self.lock:
            return next(
                (t for t, rows in self.batches for c, _, ok in rows if ok and c == cam_id),
                float("inf"),
            )

    def first_newer(self, after: float, threshold: dict[str, int]) -> dict[str, float]:
        """Per camera, when the first batch after ``after`` had a frame at >= its threshold."""
        out: dict[str, float] = {}
        with self.lock:
            for t, rows in self.batches:
                if t < after:
                    continue
                for c, i, ok in rows:
                    if ok and c not in out and i >= threshold[c]:
                        out[c] = t
        return out


def _producer_counters(cameras: Comux) -> dict[str, Any]:
    producer = getattr(cameras, "_producer", None)
    return {k: getattr(producer, k, None) for k in ("sent", "delivered", "failed", "last_error")}


def _await_results(
    bootstrap: str, sent: dict[str, set[int]], out: dict[str, str], timeout: float
) -> ResultCheck:
    """Read the output topics until every result sent is there, or ``timeout``; the last check."""
    checks: list[ResultCheck] = []

    def complete() -> bool:
        checks.append(check_results(sent, read_outputs(bootstrap, out.values()), out))
        return checks[-1].ok

    poll_until(complete, timeout, interval=0.5)
    return checks[-1]


def _sent_after(loop: ResultLoop, threshold: dict[str, int]) -> collections.Counter[str]:
    """Per camera, the results sent of frames at or past its ``threshold`` offset."""
    return collections.Counter(s.cam_id for s in list(loop.sent) if s.index >= threshold[s.cam_id])


def _unsent(loop: ResultLoop, until: float) -> set[tuple[str, int]]:
    """Valid frames the loop got by ``until`` whose send has not happened (or raised) yet."""
    with loop.lock:
        got = {(c, i) for t, rows in loop.batches if t <= until for c, i, ok in rows if ok}
    done = {(s.cam_id, s.index) for s in list(loop.sent)}
    done |= {(c, i) for _, c, i, _ in list(loop.send_errors)}
    return got - done


@pytest.mark.parametrize(
    "outage",
    [
        pytest.param(OUTAGE_S, id="short"),  # about 8 s down: within the group session
        pytest.param(LONG_OUTAGE_S, id="long"),  # about 17 s down: longer than the session
    ],
)
def test_results_survive_broker_restart(private_broker, outage):
    broker = private_broker
    bootstrap = _ensure_up(broker)
    cams = [unique("restart") for _ in range(CAMS)]
    raw = {c: f"raw.{c}" for c in cams}
    out = {c: f"out.{c}" for c in cams}
    create_topics(bootstrap, [*raw.values(), *out.values()])
    publisher = PublisherProcess(bootstrap, cams, size="320x240", fps=FPS, gop=FPS, seconds=20)
    cameras = Comux(cams, "raw.:cam_id", "out.:cam_id", "WARNING")
    loop: ResultLoop | None = None
    closed_in = None
    try:
        publisher.wait_ready(60)
        cameras.setup_consumers(bootstrap, end=True, max_offset_diff=3 * FPS, **own_group())
        cameras.setup_decoders(rate=None, W=320, H=240)
        cameras.setup_producer(bootstrap)
        high_start = high_watermarks(bootstrap, raw.values())
        t_start = time.monotonic()
        cameras.start()
        loop = ResultLoop(cameras).start()
        wait_until(
            lambda: all(loop.valid_counts()[c] >= 2 * FPS for c in cams) or loop.error,
            45,
            lambda: f"not every camera delivered {2 * FPS} frames: {cameras.stats()}",
        )
        assert loop.error is None, repr(loop.error)

        # -- the outage ----------------------------------------------------------------------
        highs = high_watermarks(bootstrap, raw.values())
        t_down = time.monotonic()
        broker.down()
        t_down_done = time.monotonic()
        time.sleep(outage)  # the outage (scenario time): the model loop gets and sends meanwhile
        t_up = time.monotonic()
        seen_before = loop.max_index(until=t_up)
        restart_up(broker)
        t_up_done = time.monotonic()
        threshold = {c: max(highs[raw[c]], seen_before.get(c, -1) + 1) for c in cams}

        wait_until(
            lambda: len(loop.first_newer(t_up_done, threshold)) == len(cams) or loop.error,
            RESUME_LIMIT_S + 20,
            lambda: (
                f"cameras resumed {sorted(loop.first_newer(t_up_done, threshold))} of {cams} "
                f"{RESUME_LIMIT_S + 20:g} s after the broker came back; {cameras.stats()}"
            ),
        )
        resumed = loop.first_newer(t_up_done, threshold)
        # Results of frames after the outage, too: a second of video per camera sent.
        wait_until(
            lambda: all(_sent_after(loop, threshold)[c] >= FPS for c in cams) or loop.error,
            RESULT_DELAY_S + 20,
            lambda: (
                f"results of frames past the outage sent per camera "
                f"{dict(_sent_after(loop, threshold))}, want {FPS} each; {cameras.stats()}"
            ),
        )
        report = publisher.stop()
        high_end = high_watermarks(bootstrap, raw.values())
        _wait_consumed(cameras, {c: high_end[raw[c]] for c in cams}, 20.0)
        loop.halt()
        counters_before_close = _producer_counters(cameras)
        stats = cameras.stats()
        t0 = time.monotonic()
        cameras.close(timeout=30)
        closed_in = time.monotonic() - t0
    finally:
        if loop is not None:
            loop.stop.set()
        cameras.close(timeout=5)
        report = publisher.stop()

    assert loop.error is None, repr(loop.error)
    during = [s for s in loop.sent if t_down <= s.t < t_up_done]
    during_errors = [e for e in loop.send_errors if t_down <= e[0] < t_up_done]
    resume = {c[-8:]: round(t - t_up_done, 2) for c, t in resumed.items()}
    first_resume = min(resumed.values()) - t_up_done
    last_resume = max(resumed.values()) - t_up_done
    sent_offsets: dict[str, set[int]] = collections.defaultdict(set)
    for s in loop.sent:
        sent_offsets[s.cam_id].add(s.index)
    # Offsets published while comux ran that it neither decoded nor counted as jumped over.
    # Only those published before its partitions were first assigned may be missing: at most
    # the time to its first valid frame, in frames, plus one.
    gaps = {}
    for c in cams:
        s = stats[c]
        unexplained = high_end[raw[c]] - high_start[raw[c]] - s["packets"] - s["lag_unread"]
        allowed = int((loop.first_valid(c) - t_start) * FPS) + 1
        if not 0 <= unexplained <= allowed:
            gaps[c[-8:]] = (unexplained, allowed)

    check = _await_results(bootstrap, sent_offsets, out, timeout=20.0)
    print(
        f"\nbroker restart ({outage:g} s sleep): down() took {t_down_done - t_down:.2f} s, down "
        f"for {t_up_done - t_down:.2f} s (restart_up {t_up_done - t_up:.2f} s); resume after "
        f"up(): first {first_resume:.2f} s, all cameras {last_resume:.2f} s, per camera {resume}; "
        f"sends: {len(loop.sent)} ok ({len(during)} during the outage), "
        f"{len(loop.send_errors)} raised ({len(during_errors)} during the outage): "
        f"{loop.send_errors[:3]}; producer {counters_before_close}; close(30) took "
        f"{closed_in:.2f} s; outputs: {check.describe()}; published "
        f"{[high_end[raw[c]] - high_start[raw[c]] for c in cams]} while comux ran, packets "
        f"{[stats[c]['packets'] for c in cams]}, lag_unread "
        f"{[stats[c]['lag_unread'] for c in cams]}; uncounted (gap, allowed) {gaps or 'none'}; "
        f"publisher failed {sum((report.get('failed') or {}).values())}"
    )
    assert during, "the model sent nothing while the broker was down: the test did not test it"
    problems = []  # all of them at once: one failure must not hide the others
    if loop.send_errors:
        problems.append(
            f"send() raised {len(loop.send_errors)} times ({len(during_errors)} during the "
            f"outage, down at +0, up at +{t_up_done - t_down:.2f} s): "
            f"{[(round(t - t_down, 2), c[-8:], i, e) for t, c, i, e in loop.send_errors[:5]]}"
        )
    if last_resume > RESUME_LIMIT_S:
        problems.append(
            f"frames newer than the outage came {resume} s after the broker was back "
            f"(limit {RESUME_LIMIT_S:g} s)"
        )
    if not check.ok:
        problems.append(f"results lost across the restart: {check.describe()}")
    if gaps:
        problems.append(
            f"offsets skipped without being counted (packets + lag_unread short of what was "
            f"published; (gap, allowed) per camera): {gaps}"
        )
    assert not problems, "\n".join(problems)


def _wait_consumed(cameras: Comux, ends: dict[str, int], timeout: float) -> None:
    """Until every camera's decoder took the last offset before ``ends[cam]`` (the topic's end
    once the publisher stopped: every packet is counted) and nothing is queued."""

    def consumed() -> bool:
        stats = cameras.stats()
        return all(
            stats[c]["end_offset"] >= end
            and stats[c]["lag_messages"] == 0
            and stats[c]["queued"] == 0
            for c, end in ends.items()
        )

    def describe() -> str:
        stats = cameras.stats()
        keys = ("end_offset", "lag_messages", "queued", "packets")
        return f"not consumed to {ends}: { {c: {k: stats[c][k] for k in keys} for c in ends} }"

    wait_until(consumed, timeout, describe, interval=0.1)


def test_close_while_broker_down_is_bounded(private_broker):
    broker = private_broker
    bootstrap = _ensure_up(broker)
    cams = [unique("closedown") for _ in range(2)]
    create_topics(bootstrap, [f"raw.{c}" for c in cams] + [f"out.{c}" for c in cams])
    publisher = PublisherProcess(bootstrap, cams, size="320x240", fps=FPS, gop=FPS, seconds=10)
    cameras = Comux(cams, "raw.:cam_id", "out.:cam_id", "WARNING")
    loop: ResultLoop | None = None
    threads_before = {t.ident for t in comux_threads()}
    elapsed = undelivered = None
    try:
        publisher.wait_ready(60)
        cameras.setup_consumers(bootstrap, end=True, **own_group())
        cameras.setup_decoders(rate=None, W=320, H=240)
        cameras.setup_producer(bootstrap)
        cameras.start()
        loop = ResultLoop(cameras).start()
        wait_until(
            lambda: all(loop.valid_counts()[c] >= FPS for c in cams) or loop.error,
            45,
            lambda: f"not every camera delivered {FPS} frames: {cameras.stats()}",
        )
        broker.down()
        t_down = time.monotonic()
        # The results of the frames got before the outage are sent (queued in the producer).
        wait_until(
            lambda: not _unsent(loop, t_down) or loop.error,
            RESULT_DELAY_S + 10,
            lambda: f"results of {len(_unsent(loop, t_down))} frames not sent yet",
        )
        loop.halt()
        queued = _producer_counters(cameras)
        t0 = time.monotonic()
        undelivered = cameras.close(timeout=CLOSE_TIMEOUT_S)
        elapsed = time.monotonic() - t0
        left = [t.name for t in comux_threads() if t.ident not in threads_before and t.is_alive()]
    finally:
        if loop is not None:
            loop.stop.set()
        cameras.close(timeout=1)
        publisher.stop(5)
    print(
        f"\nclose while the broker is down: close(timeout={CLOSE_TIMEOUT_S:g}) took "
        f"{elapsed:.2f} s, returned {undelivered!r} (undelivered results); "
        f"producer before close {queued}; sends raised {len(loop.send_errors)}; "
        f"comux threads still alive after close: {left}"
    )
    assert elapsed <= CLOSE_TIMEOUT_S + CLOSE_SLACK_S, (
        f"close(timeout={CLOSE_TIMEOUT_S:g}) with the broker down took {elapsed:.2f} s"
    )
