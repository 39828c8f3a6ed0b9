"""Which topics are cameras: found by ``topic_pattern`` as they appear; one partition each."""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from comux import Comux
from comux.media import synthetic_packets
from comux.publish import publish
from tests.fleet_helpers import unique
from tests.groups import own_group


def test_topics_matching_the_pattern_become_cameras_as_they_appear(kafka_broker):
    bootstrap = kafka_broker.bootstrap
    prefix = unique("disc")
    clip = list(synthetic_packets(160, 120, 20, gop=10, bframes=0))
    # One topic exists before the start, one appears while running, one never matches.
    template = f"{prefix}.:cam_id"
    publish(lambda: iter(clip), "cam-1", bootstrap_servers=bootstrap, topic_template=template)
    with Comux([], template, log_level="WARNING") as cameras:
        cameras.setup_consumers(
            bootstrap,
            end=False,
            topic_pattern="cam-[0-9]+",
            max_offset_diff=None,
            **own_group(),
        )
        cameras.setup_decoders(rate=None, W=160, H=120)
        cameras.start()
        for cam in ("cam-2", "other"):
            publish(lambda: iter(clip), cam, bootstrap_servers=bootstrap, topic_template=template)
        seen: dict[str, set[int]] = {}
        deadline = time.monotonic() + 60
        while not all(len(seen.get(c, ())) == len(clip) for c in ("cam-1", "cam-2")):
            assert time.monotonic() < deadline, (seen.keys(), cameras.stats())
            for cam_id, index, frame in cameras.get_batch(timeout=2) or []:
                if frame is not None:
                    seen.setdefault(cam_id, set()).add(index)
        assert sorted(cameras.cam_ids) == ["cam-1", "cam-2"]
        assert set(seen) == {"cam-1", "cam-2"}


def test_a_camera_topic_with_more_partitions_is_read_from_partition_0_only(kafka_broker, caplog):
    bootstrap = kafka_broker.bootstrap
    cam = unique("parts-")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(f"raw.{cam}", 2, 1)]).values():
        future.result(30)
    clip = list(synthetic_packets(160, 120, 20, gop=10, bframes=0))
    publish(lambda: iter(clip), cam, bootstrap_servers=bootstrap)  # keyed: one partition
    caplog.set_level(logging.ERROR, logger="comux")
    with Comux([cam], log_level="ERROR") as cameras:
        cameras.setup_consumers(bootstrap, end=False, max_offset_diff=None, **own_group())
        cameras.setup_decoders(rate=None, W=160, H=120)
        cameras.start()
        deadline = time.monotonic() + 30
        while (f"raw.{cam}", 1) not in cameras._consumer.refused_partitions:
            assert time.monotonic() < deadline, cameras.stats()
            cameras.get_batch(timeout=0.5)
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("w-")})
        _, in_partition_0 = consumer.get_watermark_offsets(TopicPartition(f"raw.{cam}", 0))
        consumer.close()
        # The key put the clip in one partition: read whole if it is 0, not at all if it is 1.
        while cameras.stats()[cam]["packets"] != in_partition_0:
            assert time.monotonic() < deadline, cameras.stats()
            cameras.get_batch(timeout=0.5)
    assert any(
        "more than one partition" in r.getMessage() and f"raw.{cam}" in r.getMessage()
        for r in caplog.records
    )
