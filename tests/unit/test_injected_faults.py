"""Produce and commit errors injected through librdkafka's mock cluster: a retriable error
never duplicates a result, a permanent one holds its offset back, a failed commit is retried."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from comux import Comux
from comux.media import synthetic_packets
from comux.publish import publish
from comux.results import SOURCE_HEADERS
from tests.fleet_helpers import wait_until
from tests.mock_cluster import API_OFFSET_COMMIT, API_PRODUCE, MockCluster

CLIP = list(synthetic_packets(160, 120, 30, fps=25, gop=10, bframes=0))


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    mock = MockCluster()
    for topic in ("raw.cam", "out.cam"):
        mock.create_topic(topic)
    publish(lambda: iter(CLIP), "cam", bootstrap_servers=mock.bootstrap)
    yield mock
    mock.close()


def run(cluster: MockCluster, failures: list[Any], until: Any) -> tuple[Comux, set[int]]:
    """Consume the clip, send a result per frame until ``until(comux)``; return both."""
    cameras = Comux(["cam"], log_level="CRITICAL")
    cameras.setup_consumers(
        cluster.bootstrap, start="committed", end=False, group_id="g", max_offset_diff=None
    )
    cameras.setup_decoders(rate=None, W=160, H=120)
    cameras.setup_producer(
        cluster.bootstrap, on_delivery_error=lambda *failure: failures.append(failure)
    )
    cameras.start()
    sent: set[int] = set()
    deadline = time.monotonic() + 30
    while not until(cameras, sent):
        assert time.monotonic() < deadline, cameras.stats()
        for cam_id, index, frame in cameras.get_batch(timeout=0.2) or []:
            if frame is not None:
                cameras.send(cam_id, index, {"n": index})
                sent.add(index)
    return cameras, sent


def all_sent(cameras: Comux, sent: set[int]) -> bool:
    return len(sent) == len(CLIP)


def results(bootstrap: str) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader"})
    consumer.assign([TopicPartition("out.cam", 0, 0)])
    _, high = consumer.get_watermark_offsets(TopicPartition("out.cam", 0), timeout=5)
    offsets: list[int] = []
    while len(offsets) < high:
        msg = consumer.poll(5)
        assert msg is not None
        offsets.append(int(dict(msg.headers())[SOURCE_HEADERS[2]]))
    consumer.close()
    return offsets


def test_retriable_produce_errors_neither_lose_nor_duplicate_a_result(cluster):
    cluster.fail_next(API_PRODUCE, *[KafkaError.NOT_ENOUGH_REPLICAS] * 5)
    failures: list[Any] = []
    cameras, sent = run(cluster, failures, all_sent)
    try:
        assert cameras.flush(10) == 0
        assert cameras.stats()["cam"]["delivery_failed"] == 0 and not failures
    finally:
        cameras.close(5)
    assert sorted(results(cluster.bootstrap)) == sorted(sent) == list(range(len(CLIP)))


def test_a_permanent_produce_error_is_reported_and_holds_its_offset_back(cluster):
    cluster.fail_next(API_PRODUCE, KafkaError.MSG_SIZE_TOO_LARGE)
    failures: list[Any] = []
    cameras, _ = run(cluster, failures, all_sent)
    try:
        cameras.get_batch(timeout=0.2)  # moves past the last batch
        assert cameras.flush(10) == 0
        stats = cameras.stats()["cam"]
        failed = sorted(index for _, index, _ in failures)
        assert failed and stats["delivery_failed"] == len(failed)
        assert all("MSG_SIZE_TOO_LARGE" in str(error) for _, _, error in failures)
        # Every report is in: what the ledger would commit now is all it will ever commit.
        point = cameras._cameras["cam"].ledger.commit_point()
        assert point is None or point[1] <= failed[0]
        # The poll thread commits every second.
        wait_until(lambda: cameras.stats()["cam"]["committed"] >= 0, 5, cameras.stats)
        assert cameras.stats()["cam"]["committed"] <= failed[0]
    finally:
        cameras.close(5)


def test_a_failed_commit_is_counted_and_tried_again(cluster):
    cluster.fail_next(API_OFFSET_COMMIT, *[KafkaError.OFFSET_METADATA_TOO_LARGE] * 2)
    failures: list[Any] = []

    def committed(cameras: Comux, sent: set[int]) -> bool:
        return len(sent) == len(CLIP) and cameras.stats()["cam"]["committed"] >= 20

    cameras, _ = run(cluster, failures, committed)
    try:
        assert cameras._consumer.commit_errors >= 1
    finally:
        cameras.close(5)
