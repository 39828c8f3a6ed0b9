"""Helpers of the fleet integration tests (tests/integration/test_fleet.py).

Live publishers that can be silenced one by one, empty topics, hand-made (damaged) messages,
a model loop running in its own thread, waits on conditions with deadlines, RSS sampling and
the short/long mode switch (``COMUX_LONG=1``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from comux import Comux
from comux.media import EncodedPacket
from comux.publish import publish_forever

__all__ = [
    "Fleet",
    "ModelLoop",
    "RssSampler",
    "Timed",
    "create_topics",
    "http_get",
    "long_mode",
    "pick",
    "poll_until",
    "produce",
    "rss_bytes",
    "timed",
    "unique",
    "wait_blocked_in",
    "wait_until",
]

LONG_ENV = "COMUX_LONG"


def long_mode() -> bool:
    """Whether the long variants run: ``COMUX_LONG=1`` (bigger clips, longer windows)."""
    return os.environ.get(LONG_ENV, "").strip() == "1"


def pick(short: Any, long: Any) -> Any:
    """``long`` under ``COMUX_LONG=1``, else ``short``."""
    return long if long_mode() else short


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def poll_until(condition: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something truthy (returned) or ``timeout`` (False)."""
    deadline = time.monotonic() + timeout
    gate = threading.Event()  # never set: wait() is the poll interval
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            return False
        gate.wait(interval)


def wait_until(
    condition: Callable[[], Any],
    timeout: float,
    message: str | Callable[[], str] = "condition not met",
    interval: float = 0.02,
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    value = poll_until(condition, timeout, interval)
    if not value:
        text = message() if callable(message) else message
        raise AssertionError(f"timed out after {timeout:g} s: {text}")
    return value


# -- Kafka ---------------------------------------------------------------------------------------


def create_topics(bootstrap: str, topics: Iterable[str], timeout: float = 30.0) -> None:
    """Create empty single-partition topics and wait until the controller has them."""
    names = set(topics)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(t, 1, 1) for t in sorted(names)])
    for future in futures.values():
        future.result(timeout=timeout)
    wait_until(
        lambda: names <= set(admin.list_topics(timeout=5).topics),
        timeout,
        lambda: f"topics {sorted(names)} not in the metadata",
    )


def produce(
    bootstrap: str,
    topic: str,
    key: str,
    messages: Sequence[tuple[bytes, list[Any]]],
    timeout: float = 30.0,
) -> None:
    """Produce ``(value, headers)`` messages in order, as a camera gateway would; all delivered."""
    failures: list[Any] = []
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True}
    )

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(err)

    for value, headers in messages:
        producer.produce(
            topic, value=value, key=key.encode(), headers=headers, on_delivery=on_delivery
        )
        producer.poll(0)
    left = producer.flush(timeout)
    assert left == 0 and not failures, f"{left} messages not delivered, failures {failures[:3]}"


class Fleet:
    """Live cameras: each one loops ``clip`` in real time with its own stop Event."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._stops: dict[str, threading.Event] = {}
        self._threads: dict[str, list[threading.Thread]] = {}

    def live(self, clip: Sequence[EncodedPacket], cam_ids: Iterable[str]) -> None:
        for cam_id in cam_ids:
            stop = threading.Event()
            self._stops[cam_id] = stop
            self._threads[cam_id] = publish_forever(
                clip, [cam_id], bootstrap_servers=self.bootstrap, stop=stop, rate="realtime"
            )

    def silence(self, cam_id: str, timeout: float = 10.0) -> float:
        """Stop one camera's publisher; return when its thread ended (nothing more is sent)."""
        self._stops[cam_id].set()
        for thread in self._threads[cam_id]:
            thread.join(timeout)
            assert not thread.is_alive(), f"publisher of {cam_id} did not stop"
        return time.monotonic()

    def close(self) -> None:
        for stop in self._stops.values():
            stop.set()
        for threads in self._threads.values():
            for thread in threads:
                thread.join(10)


# -- the model's side ----------------------------------------------------------------------------


@dataclass
class Seen:
    """One slot of one batch, as the model loop saw it."""

    t: float  # time.monotonic() when get_batch returned
    cam_id: str
    index: int
    valid: bool


@dataclass
class ModelLoop:
    """A model thread: ``get_batch(timeout)`` in a loop, recording every slot of every batch.

    ``compute`` seconds per batch stand for the model's own work (a sleep is the model here,
    not a wait).
    """

    cameras: Comux
    timeout: float
    compute: float = 0.0
    seen: list[Seen] = field(default_factory=list)
    nones: int = 0
    batches: int = 0
    error: BaseException | None = None
    late_error: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None

    def start(self) -> ModelLoop:
        self.thread = threading.Thread(target=self._run, name="model-loop", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                batch = self.cameras.get_batch(timeout=self.timeout)
                now = time.monotonic()
                if batch is None:
                    self.nones += 1
                    continue
                rows = [Seen(now, c, i, f is not None) for c, i, f in batch]
                with self._lock:
                    self.seen.extend(rows)
                    self.batches += 1
                if self.compute:
                    time.sleep(self.compute)  # the model's compute time
        except BaseException as exc:  # reported by the test
            if self.stop.is_set():
                self.late_error = exc  # raised once the test was closing: not a failure
            else:
                self.error = exc

    def snapshot(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)

    def valid_count(self, cam_id: str, start: float, end: float) -> int:
        return sum(
            1 for s in self.snapshot() if s.valid and s.cam_id == cam_id and start <= s.t < end
        )

    def halt(self, timeout: float) -> bool:
        """Ask the loop to stop; True when it ended within ``timeout`` (its get_batch returned)."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout)
            return not self.thread.is_alive()
        return True

    def close(self) -> None:
        """Stop the loop and close its Comux, which wakes a get_batch the loop may be in."""
        self.stop.set()
        self.cameras.close(timeout=2)
        self.halt(12)


# -- blocking calls, timed -----------------------------------------------------------------------


def _stack(thread: threading.Thread) -> list[tuple[Any, int]]:
    frame = sys._current_frames().get(thread.ident or -1)
    out = []
    while frame is not None:
        out.append((frame.f_code, frame.f_lasti))
        frame = frame.f_back
    return out


def wait_blocked_in(thread: threading.Thread, function: str, timeout: float = 10.0) -> str:
    """Wait until ``thread`` has returned, or sits still inside a call of ``function``.

    "Sits still": two samples of its Python stack 50 ms apart are identical and name
    ``function``. Returns ``"done"`` or ``"blocked"``.
    """
    deadline = time.monotonic() + timeout
    gate = threading.Event()
    previous = None
    while time.monotonic() < deadline:
        if not thread.is_alive():
            return "done"
        stack = _stack(thread)
        inside = any(code.co_name == function for code, _ in stack)
        if inside and stack == previous:
            return "blocked"
        previous = stack if inside else None
        gate.wait(0.05)
    raise AssertionError(f"{thread.name} never settled inside {function}() in {timeout:g} s")


@dataclass
class Timed:
    """A call run in its own thread: ``elapsed`` once it returned, ``error`` if it raised."""

    name: str
    thread: threading.Thread
    started: float
    elapsed: float | None = None
    result: Any = None
    error: BaseException | None = None

    def wait(self, observe: float) -> float | None:
        """Wait up to ``observe`` s for the call; its duration, or None while it still runs."""
        self.thread.join(max(0.0, self.started + observe - time.monotonic()))
        return self.elapsed

    def describe(self, observe: float) -> str:
        if self.elapsed is None:
            return f"{self.name}: still blocked after {observe:g} s"
        return f"{self.name}: {self.elapsed * 1e3:.1f} ms"


def timed(name: str, fn: Callable[[], Any]) -> Timed:
    """Start ``fn()`` in a daemon thread now and time it (a blocked call cannot hang the test)."""
    box: Timed

    def run() -> None:
        try:
            box.result = fn()
        except BaseException as exc:
            box.error = exc
        finally:
            box.elapsed = time.monotonic() - box.started

    thread = threading.Thread(target=run, name=f"timed-{name}", daemon=True)
    box = Timed(name, thread, time.monotonic())
    thread.start()
    return box


# -- memory --------------------------------------------------------------------------------------


def rss_bytes() -> int:
    """This process's resident set size now (VmRSS of /proc/self/status)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class RssSampler:
    """Sample VmRSS every ``interval`` s in a thread; ``peak - baseline`` is the growth."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.baseline = rss_bytes()
        self.peak = self.baseline
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())
            self.samples += 1

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def http_get(url: str) -> tuple[int, str]:
    """Status and body of a GET, error statuses included (the health endpoints answer 503)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
