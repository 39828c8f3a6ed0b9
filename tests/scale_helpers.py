"""Helpers of the scale-out tests (tests/integration/test_scale_out.py).

- a small synthetic clip (160x90, 10 fps, a keyframe every GOP frames, no B-frames: one frame
  per input offset), published live in real time by one producer thread for all cameras
  (pts keep counting across loops of the clip) or all at once as a backlog;
- worker processes (``python -m tests.worker``) whose JSON-line events are collected;
- a consumer group's committed offsets, and the output topics read back;
- the "nothing lost" checks: every input offset in a range has a result, and copies of one
  result carry identical provenance.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from comux.media import EncodedPacket, synthetic_packets
from comux.offsets import parse_done
from tests.fleet_helpers import create_topics, poll_until, wait_until

__all__ = [
    "FPS",
    "GOP",
    "LivePublisher",
    "Out",
    "Scenario",
    "WorkerProc",
    "clip",
    "committed_offsets",
    "high_watermarks",
    "read_outputs",
]

ROOT = Path(__file__).resolve().parents[1]
FPS = 10
GOP = 10
WIDTH, HEIGHT = 160, 90


@functools.cache
def clip(seconds: int = 30) -> tuple[EncodedPacket, ...]:
    """``seconds`` of 160x90 video, a keyframe every GOP frames, one packet per frame."""
    packets = tuple(synthetic_packets(WIDTH, HEIGHT, seconds * FPS, fps=FPS, gop=GOP, bframes=0))
    assert len(packets) == seconds * FPS
    assert [i for i, p in enumerate(packets) if p.keyframe] == list(range(0, len(packets), GOP))
    return packets


def is_keyframe(offset: int) -> bool:
    """Whether input ``offset`` holds a keyframe: every topic is written from offset 0 by one
    publisher looping :func:`clip` (its length is a whole number of GOPs)."""
    return offset % GOP == 0


# -- the cameras ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Scenario:
    """One test's names: cameras, input/output topic templates, consumer group."""

    bootstrap: str
    cams: list[str]
    uid: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def consume(self) -> str:
        return f"scale{self.uid}.raw.:cam_id"

    @property
    def produce(self) -> str:
        return f"scale{self.uid}.out.:cam_id"

    @property
    def group(self) -> str:
        return f"comux-scale-{self.uid}"

    def raw(self, cam: str) -> str:
        return self.consume.replace(":cam_id", cam)

    def out(self, cam: str) -> str:
        return self.produce.replace(":cam_id", cam)

    def create_topics(self) -> None:
        create_topics(
            self.bootstrap, [self.raw(c) for c in self.cams] + [self.out(c) for c in self.cams]
        )

    def committed(self, cams: Iterable[str] | None = None) -> dict[str, int]:
        """Where the group's commit says each camera is done: the done point of its metadata,
        else (no commit by comux) the committed offset; negative when there is no commit."""
        cams = list(self.cams if cams is None else cams)
        points = committed_points(self.bootstrap, self.group, [self.raw(c) for c in cams])
        return {c: max(points[self.raw(c)]) for c in cams}

    def outputs(self) -> list[Out]:
        return read_outputs(self.bootstrap, [self.out(c) for c in self.cams])

    def results(self, records: Iterable[Out] | None = None) -> dict[str, dict[int, list[Out]]]:
        """cam -> input offset -> the results for it (every copy)."""
        records = self.outputs() if records is None else records
        cam_of = {self.out(c): c for c in self.cams}
        by_cam: dict[str, dict[int, list[Out]]] = {c: {} for c in self.cams}
        for rec in records:
            assert rec.src_topic == self.raw(cam_of[rec.topic]), f"wrong source topic: {rec}"
            assert rec.src_partition == 0, f"wrong source partition: {rec}"
            by_cam[cam_of[rec.topic]].setdefault(rec.src_offset, []).append(rec)
        return by_cam

    def worker(self, cams: Sequence[str] | None = None, **options: Any) -> WorkerProc:
        return WorkerProc(self, list(self.cams if cams is None else cams), **options)


class LivePublisher:
    """Every camera in real time at FPS from one producer thread, until :meth:`stop`.

    Each camera's topic gets the clip from offset 0 in a loop (pts keep counting), so
    ``offset % GOP == 0`` is a keyframe.
    """

    def __init__(self, scenario: Scenario, cams: Sequence[str] | None = None) -> None:
        self.scenario = scenario
        self.cams = list(scenario.cams if cams is None else cams)
        self.packets = clip()
        self.sent = dict.fromkeys(self.cams, 0)
        self.delivered = dict.fromkeys(self.cams, 0)
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._producer = Producer(
            {
                "bootstrap.servers": scenario.bootstrap,
                "linger.ms": 5,
                "enable.idempotence": True,
                "compression.type": "none",
                "client.id": "scale-publisher",
                "log_level": 0,
            }
        )
        self._thread = threading.Thread(target=self._run, name="scale-publisher", daemon=True)
        self._thread.start()

    def _report(self, cam: str) -> Callable[[Any, Any], None]:
        def on_delivery(err: Any, _msg: Any) -> None:
            if err is None:
                self.delivered[cam] += 1
            else:
                self.failed.append(f"{cam}: {err}")

        return on_delivery

    def _run(self) -> None:
        n = len(self.packets)
        callbacks = {c: self._report(c) for c in self.cams}
        start = time.monotonic()
        k = 0  # frames sent per camera (all cameras together, as one fleet clock)
        while not self._stop.is_set():
            due = start + k / FPS
            wait = due - time.monotonic()
            if wait > 0:
                self._producer.poll(0)
                self._stop.wait(min(wait, 0.05))
                continue
            loop, i = divmod(k, n)
            packet = dataclasses.replace(self.packets[i], pts=(self.packets[i].pts or 0) + loop * n)
            for cam in self.cams:
                self._produce(cam, packet, callbacks[cam])
                self.sent[cam] += 1
            k += 1
            self._producer.poll(0)

    def _produce(self, cam: str, packet: EncodedPacket, callback: Callable) -> None:
        while True:
            try:
                self._producer.produce(
                    self.scenario.raw(cam),
                    value=packet.data,
                    key=cam.encode(),
                    headers=packet.headers(),
                    on_delivery=callback,
                )
                return
            except BufferError:
                self._producer.poll(0.05)

    def wait_flowing(self, timeout: float = 20.0) -> None:
        """Until every camera's topic has a delivered packet."""
        wait_until(
            lambda: all(self.delivered.values()),
            timeout,
            lambda: f"publisher not delivering: {self.failed[:3]}",
            interval=0.05,
        )

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(5)
        left = self._producer.flush(10)
        del self._producer  # disconnects now, not when the broker goes down
        assert left == 0 and not self.failed, f"publisher: {left} unflushed, {self.failed[:3]}"


def publish_backlog(scenario: Scenario, frames: int) -> None:
    """``frames`` packets of the clip on every camera's topic, as fast as the broker takes them."""
    packets = clip()
    assert frames <= len(packets)
    failures: list[Any] = []
    producer = Producer(
        {
            "bootstrap.servers": scenario.bootstrap,
            "linger.ms": 5,
            "enable.idempotence": True,
            "log_level": 0,
        }
    )

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(err)

    for cam in scenario.cams:
        for packet in packets[:frames]:
            producer.produce(
                scenario.raw(cam),
                value=packet.data,
                key=cam.encode(),
                headers=packet.headers(),
                on_delivery=on_delivery,
            )
            producer.poll(0)
    left = producer.flush(30)
    assert left == 0 and not failures, f"backlog: {left} undelivered, {failures[:3]}"


# -- worker processes ----------------------------------------------------------------------------


class WorkerProc:
    """``python -m tests.worker`` with the scenario's names; its events, as they come."""

    def __init__(
        self,
        scenario: Scenario,
        cams: list[str],
        *,
        name: str,
        instance_id: str | None = None,
        start: str = "committed",
        fallback: str = "end",
        policy: str = "fifo",
        model_delay: float = 0.0,
        hold_seconds: float = 5.0,
        commit_interval: float = 1.0,
        options: Mapping[str, Any] | None = None,
        log_dir: Path | None = None,
        transactional: bool = False,
        send_then_hold: bool = False,
    ) -> None:
        self.name = name
        self.stopping = False  # SIGTERM sent
        command = [
            sys.executable, "-m", "tests.worker",
            "--bootstrap", scenario.bootstrap, "--group", scenario.group, "--cams", ",".join(cams),
            "--name", name, "--start", start, "--fallback", fallback, "--policy", policy,
            "--model-delay", str(model_delay), "--hold-seconds", str(hold_seconds),
            "--commit-interval", str(commit_interval),
            "--consume", scenario.consume, "--produce", scenario.produce,
        ]  # fmt: skip
        if instance_id is not None:
            command += ["--instance-id", instance_id]
        if transactional:
            command += ["--transactional-id", f"scale{scenario.uid}-{name}"]
        if send_then_hold:
            command.append("--send-then-hold")
        for key, value in (options or {}).items():
            command += ["--option", f"{key}={value}"]
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        log_dir = Path(tempfile.gettempdir()) if log_dir is None else log_dir
        self.stderr_path = log_dir / f"scale-{scenario.uid}-{name}.log"
        self._stderr = open(self.stderr_path, "w")
        self.started = time.time()
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            start_new_session=True,
        )
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()
        self.killed_at: float | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            with self._lock:
                self.events.append(event)
        self._stderr.close()

    def of(self, kind: str, since: float = 0.0) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["event"] == kind and e["t"] >= since]

    def stderr_tail(self, chars: int = 3000) -> str:
        try:
            return self.stderr_path.read_text()[-chars:]
        except OSError:
            return ""

    def wait(
        self, kind: str, timeout: float, where: Callable[[dict[str, Any]], bool] = lambda e: True
    ) -> dict[str, Any]:
        """The first ``kind`` event (``where`` it holds); fails after ``timeout`` or once the
        worker exited without one (its last lines read first)."""

        def found() -> list[dict[str, Any]] | bool:
            hits = [e for e in self.of(kind) if where(e)]
            if hits or self.proc.poll() is None:
                return hits
            self._reader.join(2)  # exited: what it printed last is read before giving up
            return [e for e in self.of(kind) if where(e)] or True

        hits = poll_until(found, timeout, interval=0.05)
        if isinstance(hits, list):
            return hits[0]
        raise AssertionError(
            f"worker {self.name}: no {kind!r} event in {timeout:g} s "
            f"(exit {self.proc.poll()}); stderr: {self.stderr_tail()}"
        )

    def cams_since(self, since: float) -> set[str]:
        """Cameras with a valid frame in the batches reported since ``since``."""
        return {c for e in self.of("batch", since) for c in e["cams"]}

    def last_offsets(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.of("batch"):
            for cam, offset in e["offsets"].items():
                out[cam] = max(out.get(cam, -1), offset)
        return out

    def errors(self) -> list[dict[str, Any]]:
        return self.of("error")

    def signal(self, sig: int) -> None:
        if sig == signal.SIGTERM:
            self.stopping = True
        os.kill(self.proc.pid, sig)

    def kill9(self) -> float:
        """SIGKILL; returns when the process is gone, with the time it was killed."""
        self.killed_at = time.time()
        self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        return self.killed_at

    def terminate(self, timeout: float = 25.0) -> dict[str, Any]:
        """SIGTERM and wait: the worker closes cleanly and reports (its ``closed`` event)."""
        # Once only: a second SIGTERM that lands while the interpreter shuts down (its handlers
        # back to the default) kills a worker that had closed cleanly.
        if self.proc.poll() is None and not self.stopping:
            self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(
                f"worker {self.name} did not exit {timeout:g} s after SIGTERM; "
                f"stderr: {self.stderr_tail()}"
            ) from None
        self._reader.join(5)
        closed = self.of("closed")
        assert self.proc.returncode == 0 and closed, (
            f"worker {self.name} exited {self.proc.returncode} without closing; "
            f"stderr: {self.stderr_tail()}"
        )
        return closed[-1]

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


# -- Kafka reads ---------------------------------------------------------------------------------


def _reader(bootstrap: str, group: str | None = None) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group or f"scale-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )


def committed_offsets(bootstrap: str, group: str, topics: Iterable[str]) -> dict[str, int]:
    """The group's committed offset of partition 0 of each topic (-1001 when none)."""
    return {t: offset for t, (offset, _) in committed_points(bootstrap, group, topics).items()}


def committed_points(
    bootstrap: str, group: str, topics: Iterable[str]
) -> dict[str, tuple[int, int]]:
    """The group's commit of partition 0 of each topic: (offset, the done point its metadata
    carries, -1 when none)."""
    consumer = _reader(bootstrap, group)  # asks the coordinator; never joins the group
    try:
        tps = consumer.committed([TopicPartition(t, 0) for t in topics], timeout=10)
        return {tp.topic: (tp.offset, parse_done(tp.metadata)) for tp in tps}
    finally:
        consumer.close()


def high_watermarks(bootstrap: str, topics: Iterable[str]) -> dict[str, int]:
    consumer = _reader(bootstrap)
    try:
        return {
            t: consumer.get_watermark_offsets(TopicPartition(t, 0), timeout=10, cached=False)[1]
            for t in topics
        }
    finally:
        consumer.close()


@dataclasses.dataclass(frozen=True)
class Out:
    """One result on an output topic."""

    topic: str
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> bytes | None:
        return dict(self.headers).get(name)

    @property
    def src_topic(self) -> str | None:
        v = self.header("comux-source-topic")
        return None if v is None else v.decode()

    @property
    def src_partition(self) -> int | None:
        v = self.header("comux-source-partition")
        return None if v is None else int(v)

    @property
    def src_offset(self) -> int:
        v = self.header("comux-source-offset")
        assert v is not None, f"a result without comux-source-offset: {self}"
        return int(v)

    @property
    def worker(self) -> str:
        return (self.header("worker") or b"").decode()

    @property
    def provenance(self) -> tuple[Any, ...]:
        """Everything but the worker's own header: equal for two copies of one result."""
        return (self.key, self.value, tuple(h for h in self.headers if h[0] != "worker"))

    def __repr__(self) -> str:
        return f"<Out {self.topic}@{self.offset} src={self.src_offset} worker={self.worker}>"


def read_outputs(bootstrap: str, topics: Iterable[str], timeout: float = 30.0) -> list[Out]:
    """Every message of the single-partition ``topics``, from the start to the high watermark
    (committed ones only: read_committed is librdkafka's default)."""
    topics = list(topics)
    consumer = _reader(bootstrap)
    try:
        highs = {
            t: consumer.get_watermark_offsets(TopicPartition(t, 0), timeout=10, cached=False)[1]
            for t in topics
        }
        left = {t for t, h in highs.items() if h > 0}
        if not left:
            return []
        consumer.assign([TopicPartition(t, 0, OFFSET_BEGINNING) for t in sorted(left)])
        out: list[Out] = []
        deadline = time.monotonic() + timeout
        while left:
            assert time.monotonic() < deadline, f"outputs not read to their end: {left}"
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error() is not None:
                    continue
                topic = msg.topic()
                if msg.offset() >= highs[topic]:
                    continue
                headers = tuple((k, v or b"") for k, v in msg.headers() or ())
                out.append(Out(topic, msg.offset(), msg.key(), msg.value(), headers))
            # The position, not the last message: transaction markers take offsets too.
            for tp in consumer.position([TopicPartition(t, 0) for t in sorted(left)]):
                if tp.offset >= highs[tp.topic]:
                    left.discard(tp.topic)
        return out
    finally:
        consumer.close()


# -- "nothing lost" ------------------------------------------------------------------------------


def missing(results: Mapping[int, list[Out]], start: int, end: int) -> list[int]:
    """Input offsets in ``[start, end)`` with no result."""
    return [o for o in range(start, end) if o not in results]


def conflicting(results: Mapping[int, list[Out]]) -> list[int]:
    """Input offsets whose copies differ in anything but the worker header."""
    return sorted(o for o, copies in results.items() if len({c.provenance for c in copies}) > 1)


def duplicates(results: Mapping[int, list[Out]]) -> list[int]:
    return sorted(o for o, copies in results.items() if len(copies) > 1)


def describe_runs(offsets: Sequence[int], limit: int = 6) -> str:
    """``[3-9, 14, 20-25]``: a list of offsets, as runs."""
    runs: list[list[int]] = []
    for o in sorted(offsets):
        if runs and o == runs[-1][1] + 1:
            runs[-1][1] = o
        else:
            runs.append([o, o])
    text = [f"{a}-{b}" if a != b else f"{a}" for a, b in runs[:limit]]
    more = f", ... ({len(runs) - limit} more runs)" if len(runs) > limit else ""
    return f"{len(offsets)} offsets [{', '.join(text)}{more}]"
