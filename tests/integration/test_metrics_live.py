"""Metrics and health over HTTP while real cameras flow through the real broker."""

from __future__ import annotations

import threading
import time
import uuid

from prometheus_client.parser import text_string_to_metric_families

from comux import Comux
from comux.media import synthetic_packets
from comux.metrics import SKIP_REASONS
from comux.publish import publish_forever
from tests.fleet_helpers import http_get
from tests.groups import own_group

CLIP = list(synthetic_packets(160, 120, 50, fps=25, gop=25, bframes=0))


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def scrape(url: str) -> dict[tuple[str, str, str], float]:
    """(sample name, cam_id, reason) -> value; '' where a label is absent."""
    status, text = http_get(url + "/metrics")
    assert status == 200, text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, s.labels.get("cam_id", ""), s.labels.get("reason", ""))] = s.value
    return out


def model_step(cameras: Comux) -> None:
    """What a model loop does: take a batch, send a result for every frame."""
    for cam_id, index, frame in cameras.get_batch(timeout=1) or []:
        if frame is not None:
            cameras.send(cam_id, index, {"mean": float(frame.mean())})


def test_scrapes_follow_stats_while_frames_flow_and_readiness_says_why(kafka_broker):
    bootstrap = kafka_broker.bootstrap
    cams = [unique("metrics-a-"), unique("metrics-b-")]
    stop = threading.Event()
    publishers: list[threading.Thread] = []
    with Comux(cams, log_level="WARNING") as cameras:
        cameras.setup_consumers(bootstrap, end=True, **own_group())
        cameras.setup_decoders(rate=None, W=160, H=120)
        cameras.setup_producer(bootstrap)
        server = cameras.serve_metrics(0)
        try:
            url = server.url
            assert http_get(url + "/healthz") == (200, "ok\n")
            assert http_get(url + "/readyz") == (503, "not started\n")
            cameras.start()
            # Their topics do not exist yet: nothing can be assigned.
            assert http_get(url + "/readyz") == (503, "no camera partition assigned yet\n")

            publishers = publish_forever(CLIP, cams, bootstrap_servers=bootstrap, stop=stop)
            deadline = time.monotonic() + 90
            while http_get(url + "/readyz") != (200, "ok\n") or any(
                s["in_batches"] < 10 for s in cameras.stats().values()
            ):
                assert time.monotonic() < deadline, (http_get(url + "/readyz"), cameras.stats())
                model_step(cameras)

            last: dict[str, float] = {}
            for _ in range(3):
                # Frames keep coming: each scrape sees more of them than the one before.
                target = {c: cameras.stats()[c]["in_batches"] + 5 for c in cams}
                while any(cameras.stats()[c]["in_batches"] < target[c] for c in cams):
                    assert time.monotonic() < deadline, cameras.stats()
                    model_step(cameras)
                before, totals = cameras.stats(), cameras.process_stats()
                got = scrape(url)
                after = cameras.stats()
                assert got[("comux_batches_total", "", "")] == totals["batches"]
                assert got[("comux_batch_wait_seconds_count", "", "")] == totals["batches"]
                assert got[("comux_ready", "", "")] == 1.0
                assert got[("comux_cameras_assigned", "", "")] == 2
                assert got[("comux_broker_silence_seconds", "", "")] < 15
                assert (
                    totals["producer_delivered"]
                    <= got[("comux_producer_delivered_total", "", "")]
                    <= cameras.process_stats()["producer_delivered"]
                )
                assert ("comux_producer_queued_messages", "", "") in got
                for c in cams:
                    delivered = got[("comux_frames_delivered_total", c, "")]
                    # Only the model's thread (this one, waiting on the scrape) hands frames out.
                    assert delivered == before[c]["in_batches"] == after[c]["in_batches"]
                    assert delivered > last.get(c, 0)
                    last[c] = delivered
                    assert got[("comux_frame_age_seconds_count", c, "")] == delivered
                    age_sum = got[("comux_frame_age_seconds_sum", c, "")]
                    assert 0 < age_sum / delivered < 1.0  # a model that keeps up
                    for key, name in (
                        ("packets", "comux_packets_consumed_total"),
                        ("frames", "comux_frames_decoded_total"),
                        ("delivered", "comux_frames_to_batches_total"),
                        ("packets", "comux_decode_seconds_count"),
                    ):
                        assert before[c][key] <= got[(name, c, "")] <= after[c][key], name
                    assert got[("comux_decode_errors_total", c, "")] == 0
                    for reason in SKIP_REASONS:
                        assert (
                            before[c][reason]
                            <= got[("comux_skipped_total", c, reason)]
                            <= after[c][reason]
                        )
                    # Live at the end of its topic: a few messages behind at most.
                    lag = got[("comux_consumer_lag_messages", c, "")]
                    assert 0 <= lag <= 25, lag
                    assert 0 <= got[("comux_consumer_lag_seconds", c, "")] <= 1.0
                    assert got[("comux_camera_assigned", c, "")] == 1
                    assert got[("comux_camera_paused", c, "")] == 0
                    assert got[("comux_end_offset", c, "")] > 0
            # The results were delivered and committed: the commit lag shows.
            while any(s["commit_lag"] is None for s in cameras.stats().values()):
                assert time.monotonic() < deadline, cameras.stats()
                model_step(cameras)
            got = scrape(url)
            for c in cams:
                assert got[("comux_commit_lag_messages", c, "")] >= 0
                assert got[("comux_committed_offset", c, "")] > 0
        finally:
            stop.set()
            for thread in publishers:
                thread.join(10)
            cameras.close()
            try:
                assert http_get(server.url + "/readyz") == (503, "closed\n")
                assert http_get(server.url + "/healthz") == (200, "ok\n")
            finally:
                server.close()
