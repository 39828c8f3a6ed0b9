"""Prometheus metrics, liveness and readiness of a running Comux, served over HTTP.

Counters are read from :meth:`Comux.stats` and :meth:`Comux.process_stats` when Prometheus
scrapes (a custom collector: nothing is counted twice); the timings of the model's loop (frame
age, batch wait, fill ratio) are real histograms, fed by a batch observer in ``get_batch``.

One daemon thread serves ``/metrics``, ``/healthz`` and ``/readyz``, one request at a time,
with a socket timeout: a stuck client cannot hold it, and nothing it does waits on the model.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .app import Comux
    from .batching import Batch

__all__ = [
    "CAMERA_COUNTERS",
    "CAMERA_GAUGES",
    "PROCESS_COUNTERS",
    "PROCESS_GAUGES",
    "SKIP_REASONS",
    "BatchMetrics",
    "ComuxCollector",
    "MetricsServer",
    "readiness",
    "serve_metrics",
]

log = logging.getLogger("comux.metrics")

# Every way a packet or frame does not become a valid frame in a batch (stats keys), besides
# decode errors: the ``reason`` label of comux_skipped_total.
SKIP_REASONS = (
    "skipped_before_keyframe",
    "skipped_not_due",
    "skipped_to_keyframe",
    "rate_limited",
    "already_done",
    "lag_dropped",
    "lag_unread",
    "replaced",
    "stale",
    "not_batched",
    "invalid_after_error",
)

# stats key -> metric name (counters get ``_total`` in the exposition), help text.
CAMERA_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("packets", "comux_packets_consumed", "Packets taken from the topic by the decoder."),
    ("frames", "comux_frames_decoded", "Frames that came out of the decoder."),
    ("delivered", "comux_frames_to_batches", "Frames handed to the batches (past the rate cap)."),
    ("in_batches", "comux_frames_delivered", "Valid frames in batches handed to the caller."),
    ("invalid_in_batches", "comux_batch_slots_invalid", "Slots handed out empty: a failed frame."),
    ("decode_errors", "comux_decode_errors", "Packets that failed to decode (corrupt, empty)."),
    ("empty_packets", "comux_empty_packets", "Empty messages (counted as decode errors too)."),
    ("keyframe_mismatch", "comux_keyframe_mismatch", "keyframe headers the bitstream contradicts."),
    ("keyframe_late", "comux_keyframe_late", "Keyframes that came later than the learned GOP."),
    ("stalls", "comux_stalls", "Times the camera went silent."),
    ("stalled_seconds", "comux_stalled_seconds", "Seconds the camera was silent."),
    ("delivery_failed", "comux_delivery_failed", "Results of this camera Kafka did not take."),
    ("untracked_sends", "comux_untracked_sends", "send() calls after the model moved on."),
    ("revoked_sends", "comux_revoked_sends", "Exactly-once: send() calls dropped, camera revoked."),
)
CAMERA_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("lag_messages", "comux_consumer_lag_messages", "End offset minus the last offset decoded."),
    ("lag_seconds", "comux_consumer_lag_seconds", "Lag in messages times the frame interval."),
    ("commit_lag", "comux_commit_lag_messages", "End offset minus the committed offset."),
    ("end_offset", "comux_end_offset", "The partition's end offset, as the last fetch saw it."),
    ("committed", "comux_committed_offset", "The offset a restart resumes from."),
    ("queued", "comux_queued", "Packets and frames waiting for the decoder or a free buffer."),
    (
        "awaiting_delivery",
        "comux_awaiting_delivery",
        "Frames in batches or with results on the way.",
    ),
    ("fetch_paused", "comux_fetch_paused", "1 while the partition is paused by backpressure."),
    ("paused", "comux_camera_paused", "1 while the camera is paused (pause())."),
    ("silent", "comux_camera_silent", "1 while the camera is silent (no frame for a while)."),
    ("assigned", "comux_camera_assigned", "1 while the group gives its partition to this process."),
)
PROCESS_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("batches", "comux_batches", "Batches handed to the caller."),
    ("producer_sent", "comux_producer_sent", "Results produced."),
    ("producer_delivered", "comux_producer_delivered", "Results Kafka acknowledged."),
    ("producer_failed", "comux_producer_failed", "Results Kafka did not take."),
    ("poll_errors", "comux_consumer_poll_errors", "Failed consumer polls."),
    ("commit_errors", "comux_commit_errors", "Failed offset commits."),
    ("decode_crashes", "comux_decode_crashes", "Unexpected exceptions in decode threads."),
)
PROCESS_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("producer_queued", "comux_producer_queued_messages", "Results not yet acknowledged."),
    ("cameras", "comux_cameras", "Cameras connected."),
    ("assigned", "comux_cameras_assigned", "Cameras whose partition this process holds."),
    ("last_batch_age", "comux_last_batch_age_seconds", "Seconds since get_batch handed one out."),
    (
        "frames_waiting",
        "comux_frames_waiting_seconds",
        "Seconds the next batch's first frame waited.",
    ),
    ("broker_silence", "comux_broker_silence_seconds", "Seconds since the broker last answered."),
)

_OFFSETS = {"end_offset", "committed"}  # -1: not known yet, left out rather than shown

AGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
FILL_BUCKETS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    return float(value)


class BatchMetrics:
    """The model loop's histograms, fed by :meth:`Comux.observe_batches`.

    ``comux_frame_age_seconds{cam_id}``: per valid slot, from the frame being written into its
    batch slot (decoded and converted) to the batch being handed out.
    ``comux_batch_wait_seconds``: time in ``get_batch`` for each batch it returned.
    ``comux_batch_fill_ratio``: valid slots / slots.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.age = Histogram(
            "comux_frame_age_seconds",
            "Seconds from a frame's write into its batch slot to the batch being handed out.",
            ["cam_id"],
            buckets=AGE_BUCKETS,
            registry=registry,
        )
        self.wait = Histogram(
            "comux_batch_wait_seconds",
            "Seconds get_batch waited for each batch it returned.",
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.fill = Histogram(
            "comux_batch_fill_ratio",
            "Valid slots / slots of each batch handed out.",
            buckets=FILL_BUCKETS,
            registry=registry,
        )
        self._children: dict[str, Any] = {}  # cam_id -> its age histogram child
        self._lock = threading.Lock()

    def __call__(self, batch: Batch, waited: float) -> None:
        now = time.time()
        self.wait.observe(waited)
        valid = batch.valid
        n = len(valid)
        self.fill.observe(float(valid.sum()) / n if n else 0.0)
        ages = now - batch.timestamps
        cam_ids = batch.cam_ids
        children = self._children
        for i in np.flatnonzero(valid).tolist():
            cam_id = cam_ids[i]
            child = children.get(cam_id)
            if child is None:
                with self._lock:
                    child = children[cam_id] = self.age.labels(cam_id)
            child.observe(max(0.0, float(ages[i])))

    def forget(self, keep: set[str]) -> None:
        """Drop the series of cameras that are gone (deleted), so they do not pile up."""
        with self._lock:
            for cam_id in [c for c in self._children if c not in keep]:
                del self._children[cam_id]
                with contextlib.suppress(KeyError):
                    self.age.remove(cam_id)


class ComuxCollector(Collector):
    """Read :meth:`Comux.stats` and :meth:`Comux.process_stats` at scrape time."""

    def __init__(
        self,
        comux: Comux,
        batches: BatchMetrics | None = None,
        *,
        broker_timeout: float = 15.0,
        batch_timeout: float = 30.0,
    ) -> None:
        self.comux = comux
        self.batches = batches
        self.broker_timeout = broker_timeout
        self.batch_timeout = batch_timeout

    def describe(self) -> list[Metric]:
        return []  # names are known only at scrape time; registering must not scrape

    def collect(self) -> Iterator[Metric]:
        stats = self.comux.stats()
        totals = self.comux.process_stats()
        if self.batches is not None:
            self.batches.forget(set(stats))
        cams = sorted(stats)
        for key, name, text in CAMERA_COUNTERS:
            counter = CounterMetricFamily(name, text, labels=["cam_id"])
            for cam_id in cams:
                value = _number(stats[cam_id].get(key))
                if value is not None:
                    counter.add_metric([cam_id], value)
            yield counter
        skipped = CounterMetricFamily(
            "comux_skipped",
            "Packets (before the decoder) or frames (after it) that gave no frame in a batch.",
            labels=["cam_id", "reason"],
        )
        for cam_id in cams:
            for reason in SKIP_REASONS:
                value = _number(stats[cam_id].get(reason))
                if value is not None:
                    skipped.add_metric([cam_id, reason], value)
        yield skipped
        decode = SummaryMetricFamily(
            "comux_decode_seconds",
            "Time in the decoder per packet, conversion into the batch slot included.",
            labels=["cam_id"],
        )
        for cam_id in cams:
            s = stats[cam_id]
            decode.add_metric([cam_id], s.get("packets", 0), s.get("decode_seconds", 0.0))
        yield decode
        for key, name, text in CAMERA_GAUGES:
            gauge = GaugeMetricFamily(name, text, labels=["cam_id"])
            for cam_id in cams:
                value = _number(stats[cam_id].get(key))
                if value is not None and not (key in _OFFSETS and value < 0):
                    gauge.add_metric([cam_id], value)
            yield gauge
        for key, name, text in PROCESS_COUNTERS:
            yield CounterMetricFamily(name, text, value=float(totals.get(key) or 0))
        for key, name, text in PROCESS_GAUGES:
            value = _number(totals.get(key))
            if value is not None:
                yield GaugeMetricFamily(name, text, value=value)
        ready, _ = readiness(
            self.comux,
            broker_timeout=self.broker_timeout,
            batch_timeout=self.batch_timeout,
            totals=totals,
        )
        yield GaugeMetricFamily("comux_ready", "1 while /readyz answers 200.", value=float(ready))


def readiness(
    comux: Comux,
    *,
    broker_timeout: float = 15.0,
    batch_timeout: float = 30.0,
    totals: dict[str, Any] | None = None,
) -> tuple[bool, str]:
    """Whether the process serves its cameras, and if not, why, in one line.

    Ready: started and not closed, at least one camera partition assigned, the broker answered
    within ``broker_timeout`` seconds, and no frame has waited ``batch_timeout`` seconds for a
    ``get_batch`` (silent cameras are fine: nothing waits then).
    """
    t = comux.process_stats() if totals is None else totals
    if t["closed"]:
        return False, "closed"
    if not t["started"]:
        return False, "not started"
    if not t["assigned"]:
        return False, "no camera partition assigned yet"
    silence = t["broker_silence"]
    if silence is None:
        return False, "the broker never answered"
    if silence > broker_timeout:
        return False, f"the broker has not answered for {silence:.0f} s"
    waiting = t["frames_waiting"]
    if waiting is not None and waiting > batch_timeout:
        return False, f"frames have waited {waiting:.0f} s for get_batch"
    return True, "ok"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 5.0  # seconds a client may take to send its request
    server_version = "comux"
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        owner = self.server.owner
        path = urlsplit(self.path).path.rstrip("/") or "/"
        try:
            if path == "/metrics":
                self._reply(200, generate_latest(owner.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._reply(200, b"ok\n")
            elif path == "/readyz":
                ready, reason = owner.ready()
                self._reply(200 if ready else 503, reason.encode() + b"\n")
            else:
                self._reply(404, b"not found: /metrics, /healthz, /readyz\n")
        except Exception as exc:  # a scrape must never take the server down
            log.exception("serving %s failed", path)
            self._reply(500, f"{type(exc).__name__}\n".encode())

    def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class _Server(HTTPServer):
    allow_reuse_address = True
    owner: MetricsServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics client %s went away", client_address, exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` of ``comux`` on ``host:port``, from a thread.

    :param port: TCP port; 0 picks a free one (see :attr:`port`).
    :param host: address to listen on (``"0.0.0.0"`` for every interface).
    :param broker_timeout: ``/readyz`` fails when the broker has not answered for this long.
    :param batch_timeout: ``/readyz`` fails when a frame has waited this long for ``get_batch``.
    :param process_metrics: add prometheus_client's process, platform and GC metrics.

    Example::

        with MetricsServer(cameras, 9108):
            while True:
                batch = cameras.get_batch(timeout=1)
    """

    def __init__(
        self,
        comux: Comux,
        port: int,
        host: str = "127.0.0.1",
        *,
        broker_timeout: float = 15.0,
        batch_timeout: float = 30.0,
        process_metrics: bool = True,
    ) -> None:
        self.comux = comux
        self.broker_timeout = broker_timeout
        self.batch_timeout = batch_timeout
        self.registry = CollectorRegistry()
        self.batches = BatchMetrics(self.registry)
        self.registry.register(
            ComuxCollector(
                comux, self.batches, broker_timeout=broker_timeout, batch_timeout=batch_timeout
            )
        )
        if process_metrics:
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(collector)
        server_class = _Server6 if ":" in host else _Server
        self._server = server_class((host, port), _Handler)
        self._server.owner = self
        self._stop_observing = comux.observe_batches(self.batches)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="comux-metrics",
            daemon=True,
        )
        self._thread.start()
        log.info("metrics on %s", self.url)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._server.server_address[0])
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def ready(self) -> tuple[bool, str]:
        """What ``/readyz`` answers: (ready, one-line reason)."""
        return readiness(
            self.comux, broker_timeout=self.broker_timeout, batch_timeout=self.batch_timeout
        )

    def close(self) -> None:
        """Stop serving and free the port (returns within the poll interval)."""
        self._stop_observing()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MetricsServer({self.url})"


def serve_metrics(
    comux: Comux, port: int, host: str = "127.0.0.1", **options: Any
) -> MetricsServer:
    """Start a :class:`MetricsServer` for ``comux`` (what ``comux run --metrics-port`` calls)."""
    return MetricsServer(comux, port, host, **options)
