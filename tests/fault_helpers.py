"""Helpers of the fault and soak tests (test_broker_restart.py, test_soak.py).

- a live camera fleet in a process of its own (``python -m tests.fault_helpers``): one
  producer paces every camera in real time, with pts that keep counting across loops of the
  clip, staggered keyframes, and delivery failures counted rather than fatal (a gateway rides
  out a broker outage on librdkafka's buffer);
- bringing a stopped ``LocalKafka`` back on its own ports;
- high watermarks, and reading the output topics back with a plain consumer;
- checking that every result sent is on the output topic (provenance headers), duplicates
  only with identical headers;
- the comux threads of this process, and its RSS.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from comux.broker import LocalKafka
from tests.fleet_helpers import rss_bytes, wait_until

__all__ = [
    "OutRecord",
    "PublisherProcess",
    "ResultCheck",
    "Watermarks",
    "check_results",
    "comux_threads",
    "high_watermarks",
    "read_outputs",
    "restart_up",
    "rss_bytes",
]

ROOT = Path(__file__).resolve().parents[1]
SOURCE_OFFSET = "comux-source-offset"
SOURCE_TOPIC = "comux-source-topic"


# -- the broker ----------------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def restart_up(broker: LocalKafka, timeout: float = 120.0) -> str:
    """``broker.up()`` on the ports it had: wait until both are free, then start it.

    ``LocalKafka.up()`` refuses a busy port instead of picking another, which is what a restart
    test needs (clients keep their bootstrap); a port still held by the old JVM is waited for.
    """
    deadline = time.monotonic() + timeout
    ports = [broker.port] + ([broker.controller_port] if broker.controller_port else [])
    wait_until(
        lambda: all(_port_free(p) for p in ports),
        timeout,
        f"ports {ports} of {broker} still busy",
        interval=0.1,
    )
    bootstrap = broker.up(timeout=max(10.0, deadline - time.monotonic()))
    assert bootstrap == f"127.0.0.1:{ports[0]}", f"came back on {bootstrap}, not port {ports[0]}"
    return bootstrap


# -- Kafka reads ---------------------------------------------------------------------------------


def _consumer(bootstrap: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"fault-reader-{os.getpid()}-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "log_level": 0,
        }
    )


class Watermarks:
    """High watermarks of single-partition topics, asked of the broker each time."""

    def __init__(self, bootstrap: str) -> None:
        self._consumer = _consumer(bootstrap)

    def high(self, topics: Iterable[str], timeout: float = 5.0) -> dict[str, int]:
        out = {}
        for topic in topics:
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, 0), timeout=timeout, cached=False
            )
            out[topic] = int(high)
        return out

    def close(self) -> None:
        self._consumer.close()


def high_watermarks(bootstrap: str, topics: Iterable[str], timeout: float = 5.0) -> dict[str, int]:
    marks = Watermarks(bootstrap)
    try:
        return marks.high(topics, timeout)
    finally:
        marks.close()


@dataclasses.dataclass
class OutRecord:
    topic: str
    offset: int
    source_topic: str | None
    source_offset: int | None
    headers: tuple[tuple[str, bytes], ...]


def read_outputs(bootstrap: str, topics: Iterable[str], timeout: float = 30.0) -> list[OutRecord]:
    """Every message of the (single-partition) ``topics``, from the start to the high watermark."""
    topics = list(topics)
    consumer = _consumer(bootstrap)
    try:
        highs = {}
        for topic in topics:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
            highs[topic] = int(high)
        left = {t for t, h in highs.items() if h > 0}
        consumer.assign([TopicPartition(t, 0, OFFSET_BEGINNING) for t in left])
        out: list[OutRecord] = []
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                topic = msg.topic()
                if msg.error() is not None:
                    continue
                headers = tuple((k, v or b"") for k, v in msg.headers() or ())
                named = dict(headers)
                src = named.get(SOURCE_OFFSET)
                src_topic = named.get(SOURCE_TOPIC)
                out.append(
                    OutRecord(
                        topic,
                        msg.offset(),
                        src_topic.decode() if src_topic is not None else None,
                        int(src) if src is not None else None,
                        headers,
                    )
                )
                if msg.offset() + 1 >= highs[topic]:
                    left.discard(topic)
        if left:
            raise AssertionError(f"output topics not read to their end in {timeout:g} s: {left}")
        return out
    finally:
        consumer.close()


@dataclasses.dataclass
class ResultCheck:
    sent: int
    found: int
    missing: dict[str, list[int]]
    conflicting: dict[str, list[int]]  # duplicates whose headers differ
    duplicates: int  # extra copies with identical headers (allowed)
    unexpected: int  # results on the topic that were never sent

    @property
    def ok(self) -> bool:
        return not self.missing and not self.conflicting

    def describe(self, limit: int = 8) -> str:
        miss = {c: (len(o), o[:limit]) for c, o in self.missing.items()}
        conf = {c: (len(o), o[:limit]) for c, o in self.conflicting.items()}
        return (
            f"{self.found}/{self.sent} results found, duplicates {self.duplicates}, "
            f"unexpected {self.unexpected}, missing (count, first) {miss}, "
            f"conflicting duplicates {conf}"
        )


def check_results(
    sent: Mapping[str, Iterable[int]],
    records: Iterable[OutRecord],
    out_topic: Mapping[str, str],
) -> ResultCheck:
    """Whether each ``(cam, source offset)`` in ``sent`` is on ``out_topic[cam]``."""
    by_topic: dict[str, dict[int, list[tuple[tuple[str, bytes], ...]]]] = {}
    for record in records:
        if record.source_offset is None:
            continue
        by_topic.setdefault(record.topic, {}).setdefault(record.source_offset, []).append(
            record.headers
        )
    total = found = duplicates = unexpected = 0
    missing: dict[str, list[int]] = {}
    conflicting: dict[str, list[int]] = {}
    for cam, offsets in sent.items():
        got = by_topic.get(out_topic[cam], {})
        wanted = set(offsets)
        total += len(wanted)
        for offset in sorted(wanted):
            copies = got.get(offset)
            if not copies:
                missing.setdefault(cam, []).append(offset)
                continue
            found += 1
            duplicates += len(copies) - 1
            if any(h != copies[0] for h in copies[1:]):
                conflicting.setdefault(cam, []).append(offset)
        unexpected += sum(len(v) for k, v in got.items() if k not in wanted)
    return ResultCheck(total, found, missing, conflicting, duplicates, unexpected)


# -- this process --------------------------------------------------------------------------------


def comux_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("comux-")]


# -- the fleet in its own process ----------------------------------------------------------------


class PublisherProcess:
    """``python -m tests.fault_helpers``: live cameras in a child process until :meth:`stop`."""

    def __init__(
        self,
        bootstrap: str,
        cams: list[str],
        *,
        size: str = "640x360",
        fps: int = 12,
        gop: int = 12,
        seconds: float = 20.0,
        template: str = "raw.:cam_id",
    ) -> None:
        self.cams = cams
        command = [
            sys.executable, "-m", "tests.fault_helpers",
            "--bootstrap", bootstrap, "--size", size, "--fps", str(fps), "--gop", str(gop),
            "--seconds", str(seconds), "--template", template, *cams,
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        self.report: dict[str, Any] | None = None

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.proc.stdout is not None
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()))
        reader.daemon = True
        reader.start()
        reader.join(timeout)
        if not box or box[0].strip() != "ready":
            self.stop(5)
            raise AssertionError(f"publisher not ready in {timeout:g} s (said {box!r})")

    def stop(self, timeout: float = 20.0) -> dict[str, Any]:
        """SIGTERM; the child flushes what it buffered and prints what it sent."""
        if self.report is not None:
            return self.report
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.report = {}
        for line in (out or "").splitlines():
            if line.startswith("{"):
                self.report = json.loads(line)
        return self.report


def _publish_main(argv: list[str] | None = None) -> int:
    from comux.media import synthetic_packets

    parser = argparse.ArgumentParser(prog="python -m tests.fault_helpers")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--fps", type=int, default=12)
    parser.add_argument("--gop", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=20.0, help="clip length before it loops")
    parser.add_argument("--template", default="raw.:cam_id")
    parser.add_argument("cams", nargs="+")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    frames = max(args.gop, int(args.fps * args.seconds) // args.gop * args.gop)
    clip = list(synthetic_packets(width, height, frames, fps=args.fps, gop=args.gop, bframes=0))
    period = frames  # pts units (1/fps) per loop of the clip: pts keep counting across loops
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "linger.ms": 5,
            "compression.type": "none",
            "enable.idempotence": True,
            "message.timeout.ms": 600_000,  # a gateway rides out an outage on its buffer
            # and is back within a second of the broker (librdkafka's default backoff: 10 s),
            # so that what is measured is comux's resume, not the gateway's
            "reconnect.backoff.max.ms": 500,
            "client.id": "fault-publisher",
            "log_level": 0,
        }
    )
    topics = {c: args.template.replace(":cam_id", c) for c in args.cams}
    sent = dict.fromkeys(args.cams, 0)
    delivered = dict.fromkeys(args.cams, 0)
    failed = dict.fromkeys(args.cams, 0)
    errors: list[str] = []

    def report(cam: str):
        def on_delivery(err: Any, _msg: Any) -> None:
            if err is None:
                delivered[cam] += 1
            else:
                failed[cam] += 1
                if len(errors) < 5:
                    errors.append(str(err))

        return on_delivery

    callbacks = {c: report(c) for c in args.cams}
    n = len(args.cams)
    gop_s = args.gop / args.fps
    start = time.monotonic() + 0.2
    # Staggered: keyframes of the fleet spread over a GOP, as real cameras' are.
    phase = {c: start + i * gop_s / n for i, c in enumerate(args.cams)}
    position = dict.fromkeys(args.cams, 0)  # packets sent so far by each camera
    ready = False
    while not stop.is_set():
        now = time.monotonic()
        next_due = float("inf")
        for cam in args.cams:
            while True:
                k = position[cam]
                due = phase[cam] + k / args.fps
                if due > now:
                    next_due = min(next_due, due)
                    break
                loop, i = divmod(k, len(clip))
                packet = clip[i]
                packet = dataclasses.replace(packet, pts=(packet.pts or 0) + loop * period)
                while True:
                    try:
                        producer.produce(
                            topics[cam],
                            value=packet.data,
                            key=cam.encode(),
                            headers=packet.headers(),
                            on_delivery=callbacks[cam],
                        )
                        break
                    except BufferError:
                        producer.poll(0.05)
                        if stop.is_set():
                            break
                position[cam] = k + 1
                sent[cam] += 1
        producer.poll(0)
        if not ready and all(delivered.values()):
            ready = True
            print("ready", flush=True)
        stop.wait(max(0.0, min(next_due - time.monotonic(), 0.05)))
    left = producer.flush(15)
    print(
        json.dumps(
            {
                "sent": sent,
                "delivered": delivered,
                "failed": failed,
                "unflushed": left,
                "errors": errors,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(_publish_main())
    except KafkaException as exc:
        print(f"publisher: {exc}", file=sys.stderr)
        sys.exit(1)
