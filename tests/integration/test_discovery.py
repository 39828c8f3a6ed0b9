"""``topic_pattern``: cameras are found as their topics appear, with no id listed."""

from __future__ import annotations

import time

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
