"""Publish a camera's encoded packets to Kafka, one message per packet, as a gateway would."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from confluent_kafka import KafkaException, Producer
from rich.console import Console
from rich.text import Text

from . import kafka
from .config import TopicSchema, resolve_bootstrap_servers
from .errors import ConfigError, KafkaError
from .media import EncodedPacket

__all__ = [
    "DEFAULT_PRODUCER_OPTIONS",
    "UNKNOWN_PTS_FPS",
    "PublishStats",
    "publish",
    "publish_forever",
]

# Video messages are few and large: send them almost at once, allow 1080p keyframes
# (up to a few MB) and do not compress what the codec already compressed.
DEFAULT_PRODUCER_OPTIONS: dict[str, Any] = {
    "linger.ms": 5,
    "message.max.bytes": 8_000_000,
    "batch.size": 8_000_000,
    "compression.type": "none",
    "reconnect.backoff.max.ms": 1_000,  # back within a second of a broker's restart
    "client.id": "comux-publish",
}
UNKNOWN_PTS_FPS = 25  # pacing of packets without pts (raw Annex-B files)
CONNECT_TIMEOUT_S = 10.0
_PROGRESS_INTERVAL_S = 0.25
_MAX_SLEEP_S = 0.05  # poll delivery reports at least this often while pacing
_EARLY_OK_S = 1e-4  # a packet this close to its time is due (no sub-ulp sleeps)


@dataclass
class PublishStats:
    """What publish() sent (all of it delivered once it returns): packets, bytes, seconds."""

    packets: int
    bytes: int
    seconds: float
    topic: str

    def __str__(self) -> str:
        secs = max(self.seconds, 1e-9)
        return (
            f"published {self.packets} packets ({self.bytes / 1e6:.2f} MB) to {self.topic} "
            f"in {self.seconds:.2f} s ({self.packets / secs:.1f} packets/s, "
            f"{self.bytes * 8 / secs / 1e6:.2f} Mbit/s)"
        )


class _Progress:
    """One stderr line rewritten with '\\r', at most every 0.25 s, so logs stay readable.

    Drawn by rich: styled on a terminal, plain text anywhere else.
    """

    def __init__(self, enabled: bool, topic: str, clock: Callable[[], float]) -> None:
        self.enabled, self.topic, self.clock = enabled, topic, clock
        self.start = clock()
        self.last = float("-inf")
        self.width = 0
        self.console = Console(file=sys.stderr, highlight=False, soft_wrap=True)

    def update(self, packets: int, nbytes: int, final: bool = False) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if not final and now - self.last < _PROGRESS_INTERVAL_S:
            return
        self.last = now
        secs = max(now - self.start, 1e-9)
        line = Text.assemble(
            (self.topic, "bold cyan"),
            f": {packets} packets, {nbytes / 1e6:.1f} MB, ",
            (f"{packets / secs:.1f} packets/s", "green"),
            f", {nbytes * 8 / secs / 1e6:.2f} Mbit/s",
        )
        width, self.width = self.width, len(line)
        line.pad_right(max(0, width - len(line)))
        self.console.file.write("\r")  # rich drops a carriage return inside its text
        self.console.print(line, end="\n" if final else "")
        self.console.file.flush()


def publish(
    packets: Callable[[], Iterable[EncodedPacket]],
    cam_id: str,
    *,
    bootstrap_servers: str | Iterable[str] | None = None,
    topic_template: str = "raw.:cam_id",
    rate: Literal["realtime", "max"] = "max",
    loop: int = 1,
    progress: bool = False,
    producer_options: Mapping[str, Any] | None = None,
    stop: threading.Event | None = None,
    _producer_factory: Callable[[dict[str, Any]], Any] = Producer,
    _clock: Callable[[], float] = time.monotonic,
    _sleep: Callable[[float], Any] | None = None,
    _connect_timeout: float = CONNECT_TIMEOUT_S,
) -> PublishStats:
    """Produce every packet of ``packets()`` to the camera's topic, ``loop`` times.

    ``loop=0`` repeats until ``stop`` is set (or KeyboardInterrupt). The key is the cam id,
    so a camera's packets share a partition and keep their order; the value is the
    Annex-B packet, the headers its metadata. ``rate="realtime"`` paces packets by pts
    like a live camera; ``"max"`` sends as fast as the broker takes them. Raises
    BrokerUnavailableError when no broker answers, KafkaError when a message could not
    be delivered (publishing stops at the first such failure).
    """
    if rate not in ("realtime", "max"):
        raise ConfigError(f"rate must be 'realtime' or 'max', got {rate!r}")
    if not isinstance(loop, int) or loop < 0:
        raise ConfigError(f"loop must be an int >= 0 (0: forever), got {loop!r}")
    options = dict(producer_options or {})
    if bootstrap_servers is None and "bootstrap.servers" in options:
        bootstrap_servers = options["bootstrap.servers"]
    # librdkafka logs through comux.kafka (served by poll), not in raw stderr lines that would
    # break the progress bar; "logger" in producer_options overrides it.
    servers = resolve_bootstrap_servers(bootstrap_servers)
    config = kafka.config(servers, options, defaults=DEFAULT_PRODUCER_OPTIONS)
    topic = TopicSchema(topic_template).topic(cam_id)
    key = cam_id.encode()
    sleep = _sleep or (stop.wait if stop is not None else time.sleep)

    try:
        producer = kafka.producer(config, factory=_producer_factory)
    except KafkaException as exc:
        raise ConfigError(f"invalid producer options: {exc.args[0]}") from exc
    kafka.probe(producer, servers, _connect_timeout)

    failures: list[Any] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(err)

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    def wait_until(deadline: float) -> bool:
        """Sleep until ``deadline`` serving delivery reports; False when stopped meanwhile."""
        while not stopped():
            remaining = deadline - _clock()
            if remaining < _EARLY_OK_S:
                return True
            sleep(min(remaining, _MAX_SLEEP_S))
            producer.poll(0)
        return False

    start = _clock()
    bar = _Progress(progress, topic, _clock)
    sent = nbytes = 0
    rounds = 0
    try:
        while (loop == 0 or rounds < loop) and not stopped() and not failures:
            rounds += 1
            loop_start = _clock()
            origin: int | None = None
            index = -1
            source = packets()
            try:
                for index, packet in enumerate(source):
                    if stopped() or failures:
                        break
                    if rate == "realtime":
                        if packet.pts is None:
                            due = index / UNKNOWN_PTS_FPS
                        else:
                            origin = packet.pts if origin is None else origin
                            due = float((packet.pts - origin) * packet.time_base)
                        if not wait_until(loop_start + due):
                            break
                    if not kafka.produce_waiting(
                        producer,
                        topic,
                        packet.data,
                        key,
                        headers=packet.headers(),
                        on_delivery=on_delivery,
                        stopped=stopped,
                        wait=_MAX_SLEEP_S,
                    ):
                        break
                    producer.poll(0)
                    sent += 1
                    nbytes += len(packet.data)
                    bar.update(sent, nbytes)
            finally:  # a file source holds an open container until closed
                close = getattr(source, "close", None)
                if close is not None:
                    close()
            if index < 0:  # an empty source would spin forever with loop=0
                break
    finally:
        queued = producer.flush(_MAX_SLEEP_S * 10)
        while queued > 0:  # short flushes keep Ctrl-C responsive
            queued = producer.flush(_MAX_SLEEP_S * 10)
        bar.update(sent, nbytes, final=True)
    if failures:
        err = failures[0]
        raise KafkaError(
            f"{len(failures)} message(s) to {topic} were not delivered: {err}",
            kafka.error_code(err),
        )
    return PublishStats(sent, nbytes, _clock() - start, topic)


def publish_forever(
    clip: Sequence[EncodedPacket],
    cam_ids: Iterable[str],
    *,
    bootstrap_servers: str | Iterable[str] | None,
    stop: threading.Event,
    rate: Literal["realtime", "max"] = "realtime",
) -> list[threading.Thread]:
    """Play ``clip`` in a loop as each of ``cam_ids``, one daemon thread each, until ``stop``.

    What a fleet of camera gateways does; the demo, the examples and the tests use it.
    """
    threads = [
        threading.Thread(
            target=publish,
            args=(lambda: iter(clip), cam_id),
            kwargs={"bootstrap_servers": bootstrap_servers, "rate": rate, "loop": 0, "stop": stop},
            name=f"publisher-{cam_id}",
            daemon=True,
        )
        for cam_id in cam_ids
    ]
    for thread in threads:
        thread.start()
    return threads
