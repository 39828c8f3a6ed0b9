"""A camera fleet through the real broker: what the model gets when cameras stop, cap or change.

Every number counts frames that were in a batch the caller received (valid slots), never frames
merely decoded. Live cameras are ``publish_forever`` calls at 25 fps (one call, with its own
stop Event, per camera, so one can be silenced). Nothing here is asserted on timing or delivery:
each case records its numbers and whether its target was met in ``results/fleet.json``.

* ``silent_camera``: 8 live cameras, then one publisher stops. Each other camera's frames in
  batches per second over a window before the stop and over one after it (starting
  ``SETTLE_S`` later, past comux's stall detection); ratio after/before, min over cameras
  (target >= 0.9). The longest gap in any other camera's frames around the stop is reported.
* ``rate``: cameras with B-frames (``bframes=2``) at 25 fps and a fast model loop; frames in
  batches per second per camera with ``rate=10`` (target >= 9.5 for every camera) and with
  ``policy="latest", rate=None`` (target: at least what rate=10 gives).
* ``camera_change``: no frames arriving, another thread sitting in ``get_batch(timeout=10)``;
  wall time of ``add_cameras(["new"])`` and of ``kill("new")`` (target < 10 ms, p50 and max).
* ``fifo_memory``: 4 cameras x 1280x720 backlog, ``policy="fifo"``, a model loop slower than
  decoding (it sleeps per batch); peak RSS growth of the process (a clean child, see
  ``_fifo_probe.py``; target < 300 MB) and frames received == frames published.
"""

from __future__ import annotations

import functools
import itertools
import json
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka.admin import AdminClient

from benchmarks._common import Results
from comux import Comux
from comux.broker import LocalKafka
from comux.media import EncodedPacket, synthetic_packets
from comux.publish import publish, publish_forever

ROOT = Path(__file__).resolve().parent.parent
FPS = 25
SD = (640, 360)
SETTLE_S = 2.0  # after a camera goes silent: comux's stall detection (<= 1 s by default) and margin
LIVE_TEMPLATE = "raw.:cam_id"  # publish_forever's topic template


# -- live cameras --------------------------------------------------------------------------------


class Publishers:
    """One ``publish_forever`` call per camera at 25 fps, each with its own stop Event."""

    def __init__(self, clip: Sequence[EncodedPacket], cam_ids: Sequence[str], bootstrap: str):
        self.stops = {cam: threading.Event() for cam in cam_ids}
        self.threads: dict[str, list[threading.Thread]] = {
            cam: publish_forever(clip, [cam], bootstrap_servers=bootstrap, stop=self.stops[cam])
            for cam in cam_ids
        }
        wait_for_topics(bootstrap, [LIVE_TEMPLATE.replace(":cam_id", c) for c in cam_ids])

    def silence(self, cam: str) -> None:
        self.stops[cam].set()

    def close(self) -> None:
        for stop in self.stops.values():
            stop.set()
        for threads in self.threads.values():
            for thread in threads:
                thread.join(10)


def wait_for_topics(bootstrap: str, topics: Sequence[str], timeout: float = 30.0) -> None:
    """Until the broker knows every topic (publishers create them with their first message)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while not set(topics) <= set(admin.list_topics(timeout=5).topics):
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics never appeared: {sorted(topics)}")
        time.sleep(0.1)


def group_option() -> dict[str, Any]:
    """A fresh consumer group per Comux: no committed offsets, no rebalance with another."""
    return {"group.id": f"fleet-{uuid.uuid4().hex}"}


def live_comux(cam_ids: Sequence[str], bootstrap: str, **decoders: Any) -> Comux:
    """A started Comux on live cameras, from the end of their topics, defaults elsewhere."""
    cx = Comux(list(cam_ids), LIVE_TEMPLATE, log_level="ERROR")
    try:
        cx.setup_consumers(bootstrap, end=True, **group_option())
        cx.setup_decoders(W=SD[0], H=SD[1], **decoders)
        cx.start()
    except BaseException:
        cx.close()
        raise
    return cx


@dataclass
class Window:
    """Frames in batches per camera over a span of the model loop, and when each arrived."""

    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    arrivals: dict[str, list[float]] = field(default_factory=dict)
    batches: int = 0

    def fps(self, cam: str) -> float:
        return self.counts.get(cam, 0) / self.seconds if self.seconds > 0 else float("nan")


def model_loop(cx: Comux, seconds: float) -> Window:
    """A fast model loop for ``seconds``: take every batch, count its valid slots."""
    win = Window()
    t0 = time.monotonic()
    end = t0 + seconds
    while (now := time.monotonic()) < end:
        batch = cx.get_batch(timeout=min(0.25, end - now), stacked=True)
        if batch is None:
            continue
        with batch:
            got = time.monotonic()
            win.batches += 1
            for cam, ok in zip(batch.cam_ids, batch.valid.tolist(), strict=True):
                if ok:
                    win.counts[cam] = win.counts.get(cam, 0) + 1
                    win.arrivals.setdefault(cam, []).append(got)
    win.seconds = time.monotonic() - t0
    return win


def warm_up(cx: Comux, cam_ids: Sequence[str], timeout: float = 30.0) -> float:
    """Until every camera had a frame in a batch (group join, first keyframes), plus 1 s."""
    seen: set[str] = set()
    t0 = time.monotonic()
    while not seen >= set(cam_ids):
        if time.monotonic() - t0 > timeout:
            missing = sorted(set(cam_ids) - seen)
            raise TimeoutError(f"no frame in a batch within {timeout:g} s from {missing}")
        seen |= set(model_loop(cx, 0.25).counts)
    model_loop(cx, 1.0)
    return time.monotonic() - t0


def _ms(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values) * 1e3
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "max_ms": round(float(arr.max()), 3),
    }


def _stat(stats: dict[str, dict[str, Any]], key: str) -> dict[str, Any]:
    return {cam: s.get(key) for cam, s in stats.items() if key in s}


# -- (a) one of 8 live cameras goes silent -------------------------------------------------------


@pytest.mark.timeout(300)
def test_silent_camera(
    kafka_broker: LocalKafka, long_mode: bool, results: Callable[[str], Results]
) -> None:
    cameras = 8
    window = 10.0 if long_mode else 4.0
    clip = list(synthetic_packets(*SD, 50, fps=FPS, gop=25, bframes=0))
    cam_ids = [f"fleet-silent-{uuid.uuid4().hex[:6]}-{i}" for i in range(cameras)]
    silent, others = cam_ids[0], cam_ids[1:]
    pubs = Publishers(clip, cam_ids, kafka_broker.bootstrap)
    try:
        cx = live_comux(cam_ids, kafka_broker.bootstrap, rate=None, policy="latest")
        try:
            warm_s = warm_up(cx, cam_ids)
            before = model_loop(cx, window)
            pubs.silence(silent)
            stopped = time.monotonic()
            settle = model_loop(cx, SETTLE_S)
            after = model_loop(cx, window)
            stats = cx.stats()
        finally:
            cx.close()
    finally:
        pubs.close()
    ratios = {
        c: after.fps(c) / before.fps(c) if before.fps(c) > 0 else float("nan") for c in others
    }
    worst = min(ratios.values())
    # The longest wait for each other camera's next frame in a batch, from its last frame
    # before the stop until the end of the after window (the stall comux takes to notice).
    gaps = {}
    for c in others:
        times = [t for t in before.arrivals.get(c, []) if t < stopped][-1:]
        times += settle.arrivals.get(c, []) + after.arrivals.get(c, [])
        gaps[c] = max((b - a for a, b in itertools.pairwise(times)), default=None)
    record = {
        "cameras": cameras,
        "size": f"{SD[0]}x{SD[1]}",
        "fps_per_camera": FPS,
        "bframes": 0,
        "decoders": {"rate": None, "policy": "latest", "max_wait": None, "stall_timeout": None},
        "warm_up_s": round(warm_s, 2),
        "window_s": window,
        "settle_s": SETTLE_S,
        "counts": "frames in batches the caller received, per camera per second",
        "before_fps": {c: round(before.fps(c), 2) for c in others},
        "after_fps": {c: round(after.fps(c), 2) for c in others},
        "ratio_after_before": {c: round(r, 4) for c, r in ratios.items()},
        "min_ratio": worst,
        "silent_camera_frames_after": after.counts.get(silent, 0),
        "batches": {"before": before.batches, "settle": settle.batches, "after": after.batches},
        "longest_gap_s_after_stop": max((g for g in gaps.values() if g is not None), default=None),
        "stalls": _stat(stats, "stalls"),
        "targets": {"min over cameras of after/before >= 0.9": worst >= 0.9},
    }
    results("fleet").record("silent_camera", record)
    print(json.dumps(record))


# -- (b) a frame-rate cap on B-frame cameras -----------------------------------------------------


@pytest.mark.timeout(300)
def test_rate_cap(
    kafka_broker: LocalKafka, long_mode: bool, results: Callable[[str], Results]
) -> None:
    cameras = 8 if long_mode else 4
    window = 15.0 if long_mode else 5.0
    clip = list(synthetic_packets(*SD, 50, fps=FPS, gop=25, bframes=2))
    cam_ids = [f"fleet-rate-{uuid.uuid4().hex[:6]}-{i}" for i in range(cameras)]
    variants: dict[str, dict[str, Any]] = {
        "rate10_latest": {"rate": 10, "policy": "latest"},
        "rateNone_latest": {"rate": None, "policy": "latest"},
    }
    out: dict[str, Any] = {}
    pubs = Publishers(clip, cam_ids, kafka_broker.bootstrap)
    try:
        for name, decoders in variants.items():
            cx = live_comux(cam_ids, kafka_broker.bootstrap, **decoders)
            try:
                warm_up(cx, cam_ids)
                win = model_loop(cx, window)
                stats = cx.stats()
            finally:
                cx.close()
            per_cam = {c: round(win.fps(c), 2) for c in cam_ids}
            out[name] = {
                "decoders": decoders,
                "fps_per_camera": per_cam,
                "min_fps": min(per_cam.values()),
                "median_fps": statistics.median(per_cam.values()),
                "batches_per_s": round(win.batches / win.seconds, 2),
                "frames_decoded": sum(s.get("delivered", 0) for s in stats.values()),
                "replaced": sum(s.get("replaced", 0) for s in stats.values()),
                "rate_limited": sum(s.get("rate_limited", 0) for s in stats.values()),
            }
    finally:
        pubs.close()
    capped, uncapped = out["rate10_latest"], out["rateNone_latest"]
    record = {
        "cameras": cameras,
        "size": f"{SD[0]}x{SD[1]}",
        "fps_per_camera_published": FPS,
        "bframes": 2,
        "window_s": window,
        "counts": "frames in batches the caller received, per camera per second; fast model "
        "loop (no work per batch)",
        "variants": out,
        "targets": {
            "rate=10: every camera >= 9.5 frames in batches/s": capped["min_fps"] >= 9.5,
            "latest, rate=None: min >= rate=10's min": uncapped["min_fps"] >= capped["min_fps"],
        },
    }
    results("fleet").record("rate", record)
    print(json.dumps(record))


# -- (c) adding and removing a camera while the model waits --------------------------------------


@pytest.mark.timeout(300)
def test_camera_change(
    kafka_broker: LocalKafka, long_mode: bool, results: Callable[[str], Results]
) -> None:
    reps = 30 if long_mode else 10
    budget_s = 90.0 if long_mode else 30.0  # each call may block for a whole get_batch timeout
    template = f"fleet-change-{uuid.uuid4().hex[:6]}.:cam_id"
    bootstrap = kafka_broker.bootstrap
    clip = list(synthetic_packets(*SD, 5, fps=FPS, gop=25, bframes=0))
    for cam in ("a", "b", "new"):  # the topics exist, with old messages only
        publish(
            functools.partial(iter, clip),
            cam,
            bootstrap_servers=bootstrap,
            topic_template=template,
        )
    adds: list[float] = []
    kills: list[float] = []
    returned: list[bool] = []  # what each get_batch(timeout=10) of the waiting thread gave
    stop = threading.Event()
    in_call = threading.Event()
    cx = Comux(["a", "b"], template, log_level="ERROR")
    waiter: threading.Thread | None = None
    try:
        cx.setup_consumers(bootstrap, end=True, **group_option())
        cx.setup_decoders(rate=None, W=SD[0], H=SD[1])
        cx.start()
        time.sleep(3.0)  # the group join, so the measured calls meet a settled consumer

        def wait_for_frames() -> None:
            while not stop.is_set():
                in_call.set()
                batch = cx.get_batch(timeout=10, stacked=True)
                in_call.clear()
                returned.append(batch is not None)
                if batch is not None:
                    batch.release()

        waiter = threading.Thread(target=wait_for_frames, name="model", daemon=True)
        waiter.start()
        t_start = time.monotonic()
        for _ in range(reps):
            if time.monotonic() - t_start > budget_s:
                break
            in_call.wait(15)
            time.sleep(0.05)  # the waiter is inside get_batch by now
            t0 = time.perf_counter()
            cx.add_cameras(["new"])
            t1 = time.perf_counter()
            adds.append(t1 - t0)
            time.sleep(0.05)
            t0 = time.perf_counter()
            cx.kill("new")
            t1 = time.perf_counter()
            kills.append(t1 - t0)
        stop.set()
        # Wake the waiter with a frame (its get_batch would otherwise sit out its 10 s).
        publish(
            functools.partial(iter, clip),
            "a",
            bootstrap_servers=bootstrap,
            topic_template=template,
        )
        waiter.join(12)
    finally:
        stop.set()
        cx.close()
        if waiter is not None:
            waiter.join(1)
    record = {
        "cameras_waiting": 2,
        "get_batch_timeout_s": 10,
        "reps": len(adds),
        "reps_planned": reps,
        "budget_s": budget_s,
        "add_cameras": _ms(adds),
        "kill": _ms(kills),
        "add_cameras_ms": [round(v * 1e3, 3) for v in adds],
        "kill_ms": [round(v * 1e3, 3) for v in kills],
        "waiter_get_batch_returns": {
            "with_batch": sum(returned),
            "none": len(returned) - sum(returned),
        },
        "targets": {
            "add_cameras max < 10 ms": max(adds) < 0.010,
            "kill max < 10 ms": max(kills) < 0.010,
        },
    }
    results("fleet").record("camera_change", record)
    print(json.dumps(record))


# -- (d) fifo memory under a slow model ----------------------------------------------------------


@pytest.mark.timeout(600)
def test_fifo_memory(
    kafka_broker: LocalKafka, long_mode: bool, results: Callable[[str], Results]
) -> None:
    cameras, frames = 4, (500 if long_mode else 100)
    width, height = 1280, 720
    model_s = 0.05  # per batch: several times what decoding 4 frames takes on 2 cores
    template = f"fleet-fifo-{uuid.uuid4().hex[:6]}.:cam_id"
    cam_ids = [f"cam{i}" for i in range(cameras)]
    t0 = time.perf_counter()
    for i, cam in enumerate(cam_ids):
        # No B-frames: a backlog's last frames would stay in the decoder, waiting for packets
        # that never come, and "every frame published arrived" could not hold.
        packets = list(synthetic_packets(width, height, frames, bframes=0, gop=25, seed=200 + i))
        stats = publish(
            functools.partial(iter, packets),
            cam,
            bootstrap_servers=kafka_broker.bootstrap,
            topic_template=template,
        )
        assert stats.packets == frames
    publish_s = time.perf_counter() - t0
    args = [
        "--bootstrap",
        kafka_broker.bootstrap,
        "--template",
        template,
        "--cams",
        ",".join(cam_ids),
        "--frames",
        str(frames),
        "--width",
        str(width),
        "--height",
        str(height),
        "--model-s",
        str(model_s),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks._fifo_probe", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    record = {
        "cameras": cameras,
        "size": f"{width}x{height}",
        "frames_per_camera": frames,
        "publish_s": round(publish_s, 3),
        "decoders": {"rate": None, "policy": "fifo", "defaults": "buffers, fifo_depth"},
        "counts": "frames in batches the caller received; RSS of a clean child process",
        **probe,
        "targets": {
            "peak RSS growth < 300 MB": probe["peak_rss_growth_mb"] < 300,
            "frames received == frames published": probe["frames_received"]
            == probe["frames_published"],
            "every offset exactly once": probe["offsets"]["every_offset_once"],
        },
    }
    results("fleet").record("fifo_memory", record)
    print(json.dumps(record))
