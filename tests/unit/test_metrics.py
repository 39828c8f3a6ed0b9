"""Metrics, health and the live view, without a broker: the collector against stats(), the HTTP
endpoints, readiness reasons, and the ``comux top`` table rendered from canned metrics text."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from comux import Comux
from comux.batching import Batch, _Buffer
from comux.media import synthetic_packets
from comux.metrics import (
    CAMERA_COUNTERS,
    CAMERA_GAUGES,
    PROCESS_COUNTERS,
    PROCESS_GAUGES,
    SKIP_REASONS,
    MetricsServer,
    readiness,
)
from comux.top import camera_rows, metrics_url, parse, render
from tests.fakes import FakeMessage, messages
from tests.fleet_helpers import http_get


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def cam(cam_id: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"cam_id": cam_id, **extra}.items()))


class FakeComux:
    """What the metrics read of a Comux: stats(), process_stats() and the batch hook."""

    def __init__(self) -> None:
        counters = {key: 0 for key, _, _ in CAMERA_COUNTERS} | dict.fromkeys(SKIP_REASONS, 0)
        self.cameras: dict[str, dict[str, Any]] = {
            "cam-a": counters
            | {
                "packets": 120,
                "frames": 110,
                "delivered": 100,
                "in_batches": 90,
                "decode_errors": 2,
                "replaced": 10,
                "skipped_before_keyframe": 5,
                "stalled_seconds": 1.5,
                "decode_seconds": 0.25,
                "lag_messages": 3,
                "lag_seconds": 0.12,
                "commit_lag": 30,
                "end_offset": 400,
                "committed": 370,
                "queued": 1,
                "awaiting_delivery": 2,
                "fetch_paused": False,
                "paused": False,
                "silent": False,
                "assigned": True,
            },
            "cam-b": counters
            | {
                "decode_seconds": 0.0,
                "lag_messages": None,  # nothing decoded yet: unknown, left out
                "lag_seconds": None,
                "commit_lag": None,
                "end_offset": -1,
                "committed": -1,
                "queued": 0,
                "awaiting_delivery": 0,
                "fetch_paused": False,
                "paused": True,
                "silent": False,
                "assigned": True,
            },
        }
        self.totals: dict[str, Any] = {
            "started": True,
            "closed": False,
            "cameras": 2,
            "assigned": 2,
            "batches": 95,
            "last_batch_age": 0.01,
            "frames_waiting": None,
            "broker_silence": 0.5,
            "poll_errors": 0,
            "commit_errors": 1,
            "decode_crashes": 0,
            "producer_sent": 80,
            "producer_delivered": 78,
            "producer_failed": 1,
            "producer_queued": 1,
        }
        self.observers: list[Any] = []

    def stats(self) -> dict[str, dict[str, Any]]:
        return {c: dict(s) for c, s in self.cameras.items()}

    def process_stats(self) -> dict[str, Any]:
        return dict(self.totals)

    def observe_batches(self, observer: Any) -> Any:
        self.observers.append(observer)
        return lambda: self.observers.remove(observer)


@pytest.fixture
def fake() -> FakeComux:
    return FakeComux()


@pytest.fixture
def served(fake: FakeComux) -> Any:
    with MetricsServer(fake, 0, process_metrics=False) as server:  # type: ignore[arg-type]
        yield server


def test_every_counter_is_the_stats_number_under_a_prometheus_name(fake, served):
    status, text = http_get(served.url + "/metrics")
    assert status == 200
    got = samples(text)
    stats = fake.stats()
    for cam_id, s in stats.items():
        for key, name, _ in CAMERA_COUNTERS:
            assert got[(f"{name}_total", cam(cam_id))] == s[key], name
        for reason in SKIP_REASONS:
            assert got[("comux_skipped_total", cam(cam_id, reason=reason))] == s[reason]
        assert got[("comux_decode_seconds_count", cam(cam_id))] == s["packets"]
        assert got[("comux_decode_seconds_sum", cam(cam_id))] == s["decode_seconds"]
        for key, name, _ in CAMERA_GAUGES:
            value = s[key]
            if value is None or (key in ("end_offset", "committed") and value < 0):
                assert (name, cam(cam_id)) not in got, name  # unknown: no sample, never -1
            else:
                assert got[(name, cam(cam_id))] == float(value), name
    for key, name, _ in PROCESS_COUNTERS:
        assert got[(f"{name}_total", ())] == fake.totals[key]
    for key, name, _ in PROCESS_GAUGES:
        if fake.totals[key] is None:
            assert (name, ()) not in got
        else:
            assert got[(name, ())] == fake.totals[key]
    assert got[("comux_ready", ())] == 1.0
    # Prometheus conventions: counters end in _total, units in the names.
    assert got[("comux_frames_delivered_total", cam("cam-a"))] == 90
    assert got[("comux_consumer_lag_messages", cam("cam-a"))] == 3
    assert got[("comux_consumer_lag_seconds", cam("cam-a"))] == 0.12
    assert got[("comux_commit_lag_messages", cam("cam-a"))] == 30
    assert got[("comux_producer_queued_messages", ())] == 1


def test_batches_feed_the_age_wait_and_fill_histograms(fake, served):
    (observe,) = fake.observers
    buf = _Buffer(0, None, np.zeros((2, 2, 2, 3), np.uint8))
    buf.valid[:] = [True, False]
    buf.timestamps[:] = time.time() - 0.2
    observe(Batch(["cam-a", "cam-b"], buf, None), 0.03)
    got = samples(http_get(served.url + "/metrics")[1])
    assert got[("comux_frame_age_seconds_count", cam("cam-a"))] == 1
    assert 0.2 <= got[("comux_frame_age_seconds_sum", cam("cam-a"))] < 5
    assert ("comux_frame_age_seconds_count", cam("cam-b")) not in got  # its slot was empty
    assert got[("comux_batch_wait_seconds_sum", ())] == pytest.approx(0.03)
    assert got[("comux_batch_fill_ratio_sum", ())] == 0.5
    assert got[("comux_frame_age_seconds_bucket", cam("cam-a", le="0.25"))] == 1
    assert got[("comux_frame_age_seconds_bucket", cam("cam-a", le="0.1"))] == 0
    del fake.cameras["cam-a"]  # a deleted camera's series go
    got = samples(http_get(served.url + "/metrics")[1])
    http_get(served.url + "/metrics")  # the histogram may be collected before the pruning
    got = samples(http_get(served.url + "/metrics")[1])
    assert ("comux_frame_age_seconds_count", cam("cam-a")) not in got


def test_health_and_readiness_endpoints(fake, served):
    assert http_get(served.url + "/healthz") == (200, "ok\n")
    assert http_get(served.url + "/readyz") == (200, "ok\n")
    assert http_get(served.url + "/nope")[0] == 404
    fake.totals["assigned"] = 0
    assert http_get(served.url + "/readyz") == (503, "no camera partition assigned yet\n")
    assert samples(http_get(served.url + "/metrics")[1])[("comux_ready", ())] == 0.0
    fake.totals["closed"] = True
    assert http_get(served.url + "/readyz") == (503, "closed\n")
    assert http_get(served.url + "/healthz") == (200, "ok\n")  # alive while the process runs


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({}, "ok"),
        ({"closed": True}, "closed"),
        ({"started": False}, "not started"),
        ({"assigned": 0}, "no camera partition assigned yet"),
        ({"broker_silence": None}, "the broker never answered"),
        ({"broker_silence": 20.0}, "the broker has not answered for 20 s"),
        ({"frames_waiting": 31.0}, "frames have waited 31 s for get_batch"),
        ({"frames_waiting": 29.0, "last_batch_age": 600.0}, "ok"),  # silent cameras are fine
    ],
)
def test_readiness_says_why_in_one_line(fake, change, reason):
    fake.totals.update(change)
    ready, why = readiness(fake)  # type: ignore[arg-type]
    assert (ready, why) == (reason == "ok", reason)


def test_a_failing_scrape_answers_500_and_the_server_keeps_serving(fake, served):
    fake.stats = None  # type: ignore[assignment, method-assign]
    assert http_get(served.url + "/metrics")[0] == 500
    assert http_get(served.url + "/healthz") == (200, "ok\n")


def test_close_frees_the_port(fake):
    server = MetricsServer(fake, 0, process_metrics=False)  # type: ignore[arg-type]
    port = server.port
    server.close()
    assert not fake.observers
    with MetricsServer(fake, port, process_metrics=False) as again:  # type: ignore[arg-type]
        assert http_get(again.url + "/healthz")[0] == 200


def test_a_real_comux_scrape_equals_its_stats():
    """Decode real packets through a Comux (no broker: messages handed to the cameras) and
    compare every sample with stats() and process_stats()."""
    clip = list(synthetic_packets(64, 48, 30, fps=25, gop=10, bframes=0))
    with Comux(["a", "b"], log_level="CRITICAL") as cameras:
        cameras.setup_consumers("127.0.0.1:1", strict_on_fail=False, connect_timeout=0.1)
        cameras.setup_decoders(rate=None, W=64, H=48, policy="fifo")
        server = cameras.serve_metrics(0, process_metrics=False)
        failing = cameras.observe_batches(lambda batch, waited: 1 / 0)  # never costs a batch
        assert http_get(server.url + "/readyz") == (503, "not started\n")
        cameras.start()
        b_msgs = messages(clip)
        b_msgs.insert(15, FakeMessage(b"", 15))  # an empty packet: a decode error
        for i, m in enumerate(b_msgs):
            m._offset = i
        for cam_id, msgs in (("a", messages(clip)), ("b", b_msgs)):
            camera = cameras._cameras[cam_id]
            # What the poll thread does on assignment and reads from the fetches.
            camera.assigned = True
            camera.join_batches()
            camera.end_offset = len(msgs) + 10
            for m in msgs:
                m._topic = f"raw.{cam_id}"
                camera.offer_run([m])
        deadline = time.monotonic() + 30
        while not all(
            s["packets"] == len(clip) + (cam_id == "b") and s["queued"] == 0 and s["silent"]
            for cam_id, s in cameras.stats().items()
        ):
            assert time.monotonic() < deadline, cameras.stats()
            cameras.get_batch(timeout=0.2)
        failing()
        stats, totals = cameras.stats(), cameras.process_stats()
        got = samples(http_get(server.url + "/metrics")[1])
        for cam_id, s in stats.items():
            for key, name, _ in CAMERA_COUNTERS:
                if key == "stalled_seconds":  # grows while the camera is silent
                    assert got[(f"{name}_total", cam(cam_id))] >= s[key] > 0
                    continue
                assert got[(f"{name}_total", cam(cam_id))] == s[key], name
            for reason in SKIP_REASONS:
                assert got[("comux_skipped_total", cam(cam_id, reason=reason))] == s[reason]
            for key, name, _ in CAMERA_GAUGES:
                if s[key] is not None and not (key == "committed" and s[key] < 0):
                    assert got[(name, cam(cam_id))] == float(s[key]), name
            assert got[("comux_decode_seconds_count", cam(cam_id))] == s["packets"]
            assert got[("comux_decode_seconds_sum", cam(cam_id))] == s["decode_seconds"] > 0
            # every valid frame handed out was observed once, with its age
            assert got[("comux_frame_age_seconds_count", cam(cam_id))] == s["in_batches"]
            # lag: the end seen by the fetch minus the last offset decoded, at 25 fps
            assert s["lag_messages"] == 10 and s["lag_seconds"] == pytest.approx(0.4, abs=0.01)
        assert stats["a"]["in_batches"] == len(clip)
        assert stats["b"]["decode_errors"] == 1 and stats["b"]["empty_packets"] == 1
        assert got[("comux_batches_total", ())] == totals["batches"] > 0
        assert got[("comux_batch_wait_seconds_count", ())] == totals["batches"]
        assert http_get(server.url + "/readyz") == (503, "the broker never answered\n")
        cameras.close()
        assert http_get(server.url + "/readyz") == (503, "closed\n")
        server.close()


CANNED = """\
# TYPE comux_frames_delivered_total counter
comux_frames_delivered_total{{cam_id="cam-1"}} {d1}
comux_frames_delivered_total{{cam_id="cam-2"}} {d2}
comux_frames_delivered_total{{cam_id="cam-3"}} 0
comux_frames_delivered_total{{cam_id="cam-4"}} 7
# TYPE comux_frames_decoded_total counter
comux_frames_decoded_total{{cam_id="cam-1"}} {d1}
comux_frames_decoded_total{{cam_id="cam-2"}} {d2}
comux_frames_decoded_total{{cam_id="cam-3"}} 0
comux_frames_decoded_total{{cam_id="cam-4"}} 7
# TYPE comux_decode_errors_total counter
comux_decode_errors_total{{cam_id="cam-1"}} 0
comux_decode_errors_total{{cam_id="cam-2"}} 3
# TYPE comux_skipped_total counter
comux_skipped_total{{cam_id="cam-1",reason="replaced"}} 4
comux_skipped_total{{cam_id="cam-1",reason="lag_unread"}} 6
comux_skipped_total{{cam_id="cam-2",reason="replaced"}} 0
# TYPE comux_consumer_lag_messages gauge
comux_consumer_lag_messages{{cam_id="cam-1"}} 1
comux_consumer_lag_messages{{cam_id="cam-2"}} 200
# TYPE comux_consumer_lag_seconds gauge
comux_consumer_lag_seconds{{cam_id="cam-1"}} 0.04
comux_consumer_lag_seconds{{cam_id="cam-2"}} 8
# TYPE comux_camera_silent gauge
comux_camera_silent{{cam_id="cam-1"}} 0
comux_camera_silent{{cam_id="cam-3"}} 1
# TYPE comux_camera_paused gauge
comux_camera_paused{{cam_id="cam-4"}} 1
# TYPE comux_frame_age_seconds histogram
comux_frame_age_seconds_bucket{{cam_id="cam-1",le="+Inf"}} {d1}
comux_frame_age_seconds_count{{cam_id="cam-1"}} {d1}
comux_frame_age_seconds_sum{{cam_id="cam-1"}} {age1}
# TYPE comux_batches_total counter
comux_batches_total {batches}
# TYPE comux_batch_fill_ratio histogram
comux_batch_fill_ratio_count 10
comux_batch_fill_ratio_sum 7.5
# TYPE comux_producer_delivered_total counter
comux_producer_delivered_total 12
# TYPE comux_ready gauge
comux_ready 1
"""


def test_the_top_table_renders_from_metrics_text():
    before = parse(CANNED.format(d1=100, d2=50, age1=1.0, batches=100), at=10.0)
    now = parse(CANNED.format(d1=125, d2=60, age1=1.5, batches=125), at=11.0)
    rows = {row["cam_id"]: row for row in camera_rows(now, before)}
    assert rows["cam-1"]["state"] == "live"
    assert rows["cam-1"]["fps"] == pytest.approx(25.0)
    assert rows["cam-1"]["age"] == pytest.approx(0.5 / 25)  # mean over the interval
    assert rows["cam-1"]["drops"] == 10  # every reason summed
    assert rows["cam-2"]["state"] == "behind" and rows["cam-2"]["errors"] == 3
    assert rows["cam-3"]["state"] == "silent"
    assert rows["cam-4"]["state"] == "paused"
    console = Console(record=True, width=160, color_system=None)
    console.print(render(now, before, source="http://x/metrics"))
    text = " ".join(console.export_text().split())  # the caption wraps at the table's width
    for word in ("cam-1", "cam-2", "cam-3", "cam-4", "live", "behind", "silent", "paused"):
        assert word in text
    assert "25.0" in text and "25.0 batches/s" in text and "fill 75%" in text
    assert "12 delivered" in text and "ready" in text
    first = camera_rows(before)  # one scrape: no rates yet
    assert first[0]["fps"] is None and first[0]["age"] == pytest.approx(0.01)


def test_metrics_url_forms():
    assert metrics_url("127.0.0.1:9108") == "http://127.0.0.1:9108/metrics"
    assert metrics_url("http://h:1/") == "http://h:1/metrics"
    assert metrics_url("http://h:1/custom") == "http://h:1/custom"


def test_comux_top_once_prints_the_table(fake, served, capsys):
    from comux.cli import main

    assert main(["top", "--metrics", served.url, "--once"]) == 0
    out = capsys.readouterr().out
    assert "cam-a" in out and "cam-b" in out and "paused" in out
    assert main(["top", "--metrics", "127.0.0.1:1", "--once"]) == 1
