"""Results are never lost: offsets are committed after delivery, a restart resumes from them,
a failed delivery holds its offset back, and the transactional mode writes each result once."""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from comux import Comux
from comux.media import synthetic_packets
from comux.publish import publish
from comux.results import SOURCE_HEADERS
from tests.fleet_helpers import unique, wait_until
from tests.scale_helpers import committed_offsets, committed_points

CLIP = list(synthetic_packets(160, 120, 60, fps=25, gop=10, bframes=2))


def committed(bootstrap: str, group: str, topic: str) -> int:
    return committed_offsets(bootstrap, group, [topic])[topic]


def read_all(bootstrap: str, topic: str, *, committed_only: bool = False) -> list[Any]:
    """Every message of ``topic`` up to its end now (the last stable offset when committed_only)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("reader-"),
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if committed_only else "read_uncommitted",
        }
    )
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        consumer.assign([TopicPartition(topic, 0, 0)])
        out: list[Any] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            position = consumer.position([TopicPartition(topic, 0)])[0].offset
            if position >= high:
                break
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                out.append(msg)
        return out
    finally:
        consumer.close()


def by_offset(messages: list[Any]) -> dict[int, list[dict[str, bytes]]]:
    out: dict[int, list[dict[str, bytes]]] = defaultdict(list)
    for msg in messages:
        headers = dict(msg.headers())
        out[int(headers[SOURCE_HEADERS[2]])].append(headers)
    return out


def run_model(
    cameras: Comux, until: Any, timeout: float = 60, waits: list[float] | None = None
) -> set[int]:
    """Send a result for every valid frame until ``until(sent offsets)``; return the offsets.

    ``waits`` gets how long each ``get_batch`` took.
    """
    sent: set[int] = set()
    deadline = time.monotonic() + timeout
    while not until(sent):
        assert time.monotonic() < deadline, (sorted(sent), cameras.stats())
        started = time.perf_counter()
        batch = cameras.get_batch(timeout=5, stacked=True)
        if waits is not None:
            waits.append(time.perf_counter() - started)
        if batch is None:
            continue
        with batch:
            for cam_id, index, frame in batch:
                if frame is not None:
                    cameras.send(cam_id, index, {"n": index})
                    sent.add(index)
    return sent


def worker(bootstrap: str, cam: str, group: str, **producer: Any) -> Comux:
    cameras = Comux([cam], log_level="WARNING")
    cameras.setup_consumers(
        bootstrap, end=False, start="committed", group_id=group, max_offset_diff=None
    )
    cameras.setup_decoders(rate=None, W=160, H=120)
    cameras.setup_producer(bootstrap, **producer)
    cameras.start()
    return cameras


def test_a_backlog_resumed_from_the_committed_offset_loses_no_frame(kafka_broker):
    bootstrap = kafka_broker.bootstrap
    cam, group = unique("resume-"), unique("group-")
    publish(lambda: iter(CLIP), cam, bootstrap_servers=bootstrap, rate="max")

    first = worker(bootstrap, cam, group)
    try:
        run_model(first, lambda sent: len(sent) >= 25)
        wait_until(lambda: first.stats()[cam]["committed"] > 0, 10, lambda: str(first.stats()))
    finally:
        assert first.close(10) == 0
    resumed_at, done = committed_points(bootstrap, group, [f"raw.{cam}"])[f"raw.{cam}"]
    assert 0 < resumed_at <= done < len(CLIP)
    assert CLIP[resumed_at].keyframe  # a restart decodes from a keyframe: no gap

    second = worker(bootstrap, cam, group)
    try:
        again = run_model(second, lambda sent: set(range(done, len(CLIP))) <= sent)
        already = second.stats()[cam]["already_done"]
    finally:
        assert second.close(10) == 0
    # Frames between the keyframe and the done point are decoded, for their references, and
    # not handed out again: their results were delivered before the commit.
    assert min(again) == done
    assert already == done - resumed_at

    results = by_offset(read_all(bootstrap, f"out.{cam}"))
    assert sorted(results) == list(range(len(CLIP)))  # every frame has its result
    for offset, copies in results.items():
        if len(copies) > 1:
            assert offset >= done  # duplicates only from the uncommitted stretch
            assert all(c == copies[0] for c in copies)  # with identical provenance


def test_a_failed_delivery_holds_its_offset_back_and_is_reported(kafka_broker):
    bootstrap = kafka_broker.bootstrap
    bad, good, group = unique("undeliverable-"), unique("deliverable-"), unique("group-")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    # The broker refuses every result for ``bad``: its output topic takes 1 KB at most.
    futures = admin.create_topics(
        [NewTopic(f"out.{bad}", 1, 1, config={"max.message.bytes": "1024"})]
    )
    for future in futures.values():
        future.result(30)
    for cam in (bad, good):
        publish(lambda: iter(CLIP[:30]), cam, bootstrap_servers=bootstrap, rate="max")

    failures: list[tuple[str, int, Exception]] = []
    with Comux([bad, good], log_level="CRITICAL") as cameras:
        cameras.setup_consumers(
            bootstrap, end=False, start="committed", group_id=group, max_offset_diff=None
        )
        cameras.setup_decoders(rate=None, W=160, H=120)
        cameras.setup_producer(
            bootstrap, on_delivery_error=lambda *failure: failures.append(failure)
        )
        cameras.start()
        sent: dict[str, set[int]] = {bad: set(), good: set()}
        deadline = time.monotonic() + 60
        while len(sent[good]) < 30 or len(sent[bad]) < 30:
            assert time.monotonic() < deadline, cameras.stats()
            for cam_id, index, frame in cameras.get_batch(timeout=5) or []:
                if frame is not None:
                    cameras.send(cam_id, index, {"pad": "x" * 4000})
                    sent[cam_id].add(index)
        cameras.get_batch(timeout=0.5)  # moves past the last batch
        assert cameras.flush(10) == 0
        wait_until(lambda: cameras.stats()[good]["committed"] >= 20, 10, cameras.stats)
        stats = cameras.stats()

    assert stats[bad]["delivery_failed"] == len(sent[bad]) == 30
    assert {(c, i) for c, i, _ in failures} == {(bad, i) for i in sent[bad]}
    assert all("MSG_SIZE_TOO_LARGE" in str(e) for _, _, e in failures)
    assert committed(bootstrap, group, f"raw.{bad}") <= min(sent[bad])  # never past a failure
    assert committed(bootstrap, group, f"raw.{good}") >= 20


@pytest.mark.parametrize("transactional", [False, True])
def test_transactional_results_are_written_once_with_their_offsets(kafka_broker, transactional):
    bootstrap = kafka_broker.bootstrap
    cam, group = unique("txn-"), unique("group-")
    publish(lambda: iter(CLIP), cam, bootstrap_servers=bootstrap, rate="max")
    options = {"transactional_id": unique("txn-id-")} if transactional else {}
    cameras = worker(bootstrap, cam, group, **options)
    waits: list[float] = []
    try:
        sent = run_model(cameras, lambda sent: len(sent) == len(CLIP), waits=waits)
        cameras.get_batch(timeout=0.5)  # moves past (and commits) the last batch
        wait_until(
            lambda: committed(bootstrap, group, f"raw.{cam}") >= 50,
            15,
            lambda: str(cameras.stats()),
        )
    finally:
        cameras.close(10)
    results = by_offset(read_all(bootstrap, f"out.{cam}", committed_only=True))
    assert sorted(results) == sorted(sent) == list(range(len(CLIP)))
    assert all(len(copies) == 1 for copies in results.values())
    print(
        f"\n{'transactional' if transactional else 'idempotent'}: get_batch median "
        f"{statistics.median(waits) * 1000:.1f} ms over {len(waits)} batches"
    )
