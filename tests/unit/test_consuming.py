"""The consumer's own logic: one subscription for a burst of camera changes, the pattern's
topics left to the pattern, and a camera that fell behind jumping, counted, near the end.
The jump runs against librdkafka's mock cluster."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from comux import Comux
from comux.config import TopicSchema
from comux.consuming import CameraConsumer, ConsumerSettings
from comux.media import synthetic_packets
from comux.publish import publish
from tests.fleet_helpers import wait_until
from tests.mock_cluster import MockCluster


class Recorder:
    """Stands in for the librdkafka consumer: records the subscriptions asked for."""

    def __init__(self) -> None:
        self.subscriptions: list[list[str]] = []

    def subscribe(self, topics: list[str], **_callbacks: Any) -> None:
        self.subscriptions.append(list(topics))

    def unsubscribe(self) -> None:
        self.subscriptions.append([])

    def close(self) -> None:
        pass


def fake_camera(cam_id: str) -> Any:
    return SimpleNamespace(
        cam_id=cam_id,
        topic=f"raw.{cam_id}",
        decoder=SimpleNamespace(max_offset_diff=None),
        close=lambda: None,
    )


def consumer(**settings: Any) -> CameraConsumer:
    made = CameraConsumer(
        ConsumerSettings("127.0.0.1:1", strict_on_fail=False, **settings),
        TopicSchema("raw.:cam_id"),
        decode_threads=1,
    )
    made._consumer.close()
    made._consumer = Recorder()  # type: ignore[assignment]
    return made


def test_a_burst_of_camera_changes_is_one_subscription():
    made = consumer()
    for cam_id in ("b", "a", "c"):
        made.add(fake_camera(cam_id))
    made.remove("c")
    assert made._subscription_dirty
    made._subscribe()  # what the poll thread does, once the previous change has settled
    made._subscribe()  # nothing changed since: no second rejoin
    assert made._consumer.subscriptions == [["raw.a", "raw.b"]]  # type: ignore[attr-defined]
    made.remove("a")
    made.remove("b")
    made._subscribe()
    assert made._consumer.subscriptions[-1] == []  # type: ignore[attr-defined]


def test_topics_the_pattern_covers_do_not_change_the_subscription():
    pattern = TopicSchema("raw.:cam_id").pattern("cam-[0-9]+")
    made = consumer(topic_pattern=pattern)
    made._subscribe()
    made.add(fake_camera("cam-7"))  # found through the pattern
    made.add(fake_camera("other"))  # listed by hand
    made._subscribe()
    assert made._consumer.subscriptions == [  # type: ignore[attr-defined]
        [pattern],
        ["raw.other", pattern],
    ]


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    mock = MockCluster()
    mock.create_topic("raw.cam")
    yield mock
    mock.close()


def test_a_camera_that_fell_behind_jumps_near_the_end_and_counts_the_skip(cluster):
    clip = list(synthetic_packets(160, 120, 110, gop=10, bframes=0))
    publish(lambda: iter(clip[:10]), "cam", bootstrap_servers=cluster.bootstrap)
    with Comux(["cam"], log_level="CRITICAL") as cameras:
        cameras.setup_consumers(cluster.bootstrap, end=False, max_offset_diff=20, group_id="jump")
        cameras.setup_decoders(rate=None, W=160, H=120, policy="latest")
        cameras.start()
        wait_until(lambda: cameras.stats()["cam"]["packets"] == 10, 20, cameras.stats)
        cameras.pause("cam")  # it stops fetching while 100 more come
        publish(lambda: iter(clip[10:]), "cam", bootstrap_servers=cluster.bootstrap)
        cameras.resume("cam")
        deadline = time.monotonic() + 20
        while (entry := cameras.get("cam", timeout=1)) is None or entry[1] < 100:
            assert time.monotonic() < deadline, cameras.stats()
        stats = cameras.stats()["cam"]
    assert stats["lag_unread"] >= 60, stats  # never fetched: skipped in Kafka, and counted
    assert stats["packets"] + stats["lag_unread"] <= len(clip), stats  # each counted once
