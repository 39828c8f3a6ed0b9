"""Soak: 16 live cameras at 640x360 for a minute (``COMUX_LONG=1``: ten minutes).

The cameras publish from a process of their own (``tests.fault_helpers``), in real time at
12 fps with a keyframe every second, keyframes staggered over the fleet. A model loop takes
``get_batch(stacked=True)`` and sends a result for every valid frame. Once a second the test
samples this process's RSS, the frames the model received, each camera's lag (end offset of its
topic minus the offsets comux has consumed) and whether every comux thread is alive.

After the warm-up (the first 20 % of the run, at least 15 s, and at least until every camera's
packet cache for ``send`` is full): RSS grows less than 20 MB, no
thread dies, the lag stays within a few seconds of video, and at the end every input offset is
accounted for by the per-camera counters, every frame the counters call batched reached the
model, and every result sent is on the output topic. The consumer reads from offset 0 of fresh
topics (``end=False`` with ``policy="latest"``, so live behaviour with a known first offset):
that is what makes the offset accounting exact.

The long run writes ``benchmarks/results/latest/soak-long.json`` and ``soak-long.png`` (matplotlib).
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from comux import Comux
from tests.fault_helpers import (
    PublisherProcess,
    Watermarks,
    check_results,
    comux_threads,
    read_outputs,
    rss_bytes,
)
from tests.fleet_helpers import create_topics, long_mode, pick, poll_until, unique, wait_until
from tests.groups import own_group

CAMS = 16
W, H = 640, 360
FPS = 12
GOP = 12
DURATION_S = pick(60.0, 600.0)
# Each camera keeps its last 256 packets for send() (decoding.PacketCache): about 25 MB for this
# fleet, filled after 256 frames (about 21 s). The warm-up lasts until every cache is full, and
# at least WARMUP_S.
PACKET_CACHE = 256
WARMUP_S = max(15.0, 0.2 * DURATION_S)
BUFFERS = 3
COMPUTE_S = 0.005  # the model's own time per batch, besides reading the frames
MAX_OFFSET_DIFF = 3 * FPS  # comux jumps ahead past 3 s of video behind
LAG_LIMIT = 4 * FPS  # packets: what the test calls bounded (jumps keep it under ~3 s)
RSS_LIMIT = 20 << 20
MIN_FPS_FRACTION = 0.5  # of CAMS * FPS, averaged after the warm-up (a shared 2-core box)
SAMPLE_S = 1.0


# Offsets a camera can reach in the run: the clip plays in real time from before the start.
CAMS_CAPACITY = int((DURATION_S + 180) * FPS * 1.5)


class SentLog:
    """Which offsets got a result, one preallocated bitmap per camera.

    A set of ints per camera would grow (and resize in steps of megabytes) with the run, and
    count in this process's RSS as if comux had grown.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._bits: dict[str, bytearray] = {}
        self.overflow: dict[str, set[int]] = collections.defaultdict(set)

    def add(self, cam_id: str, offset: int) -> None:
        bits = self._bits.get(cam_id)
        if bits is None:
            bits = self._bits[cam_id] = bytearray(self.capacity)
        if 0 <= offset < self.capacity:
            bits[offset] = 1
        else:
            self.overflow[cam_id].add(offset)

    def offsets(self) -> dict[str, list[int]]:
        out = {}
        for cam_id, bits in self._bits.items():
            found = [i for i, b in enumerate(bits) if b]
            out[cam_id] = found + sorted(self.overflow.get(cam_id, ()))
        return out


@dataclass
class SoakModel:
    """get_batch(stacked=True) in a loop; a result for each valid frame, sent at once."""

    cameras: Comux
    received: collections.Counter[str] = field(default_factory=collections.Counter)
    total: int = 0
    batches: int = 0
    sent: SentLog = field(default_factory=lambda: SentLog(CAMS_CAPACITY))
    send_errors: list[tuple[float, str, int, str]] = field(default_factory=list)
    error: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> SoakModel:
        self.thread = threading.Thread(target=self._run, name="model-loop", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                batch = self.cameras.get_batch(timeout=1.0, stacked=True)
                if batch is None:
                    continue
                with batch:
                    frames = batch.frames
                    rows = [
                        (c, int(i))
                        for c, i, ok in zip(batch.cam_ids, batch.indices, batch.valid, strict=True)
                        if ok
                    ]
                    float(frames[:, ::45, ::80].mean())  # the model reads the pixels
                time.sleep(COMPUTE_S)  # the model's compute time
                for cam_id, index in rows:
                    self.received[cam_id] += 1
                    try:
                        self.cameras.send(cam_id, index, {"label": "soak", "n": self.total})
                    except Exception as exc:
                        t = time.monotonic()
                        self.send_errors.append((t, cam_id, index, f"{type(exc).__name__}: {exc}"))
                        continue
                    self.sent.add(cam_id, index)
                self.total += len(rows)
                self.batches += 1
        except BaseException as exc:
            self.error = exc

    def halt(self, timeout: float = 15.0) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout)
            assert not self.thread.is_alive(), "the model loop did not stop"


def _lag(stats: dict[str, Any], high: int) -> int:
    """Offsets published but not yet decoded; the first offset is 0 (fresh topic, end=False)."""
    return high - stats.get("packets", 0) - stats.get("lag_unread", 0)


class Sampler:
    """Once a second: RSS, delivered fps, per-camera lag, threads alive."""

    def __init__(self, cameras: Comux, model: SoakModel, bootstrap: str, raw: dict[str, str]):
        self.cameras, self.model, self.raw = cameras, model, raw
        self.marks = Watermarks(bootstrap)
        self.samples: list[dict[str, Any]] = []
        self.watched: list[threading.Thread] = []  # set at the end of the warm-up
        self.dead: dict[str, float] = {}
        self.errors: list[str] = []
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def watch_threads(self) -> None:
        threads = {t.ident: t for t in comux_threads()}
        for worker in self.cameras.threads.values():
            threads[worker.ident] = worker
        self.watched = list(threads.values())

    def _run(self) -> None:
        last_total, last_t = self.model.total, time.monotonic()
        while not self._stop.wait(max(0.0, last_t + SAMPLE_S - time.monotonic())):
            # counters first, end offsets second: the lag is never under-estimated
            now = time.monotonic()
            stats = self.cameras.stats()
            total = self.model.total
            try:
                highs = self.marks.high(self.raw.values())
            except Exception as exc:  # a slow answer skips a sample, it is not a failure
                self.errors.append(repr(exc))
                continue
            for thread in self.watched:
                if not thread.is_alive() and thread.name not in self.dead:
                    self.dead[thread.name] = now - self.t0
            self.samples.append(
                {
                    "t": round(now - self.t0, 3),
                    "rss": rss_bytes(),
                    "fps": round((total - last_total) / (now - last_t), 2),
                    "lag": [_lag(stats.get(c, {}), highs[t]) for c, t in self.raw.items()],
                    "queued": sum(s.get("queued", 0) for s in stats.values()),
                    "lag_unread": sum(s.get("lag_unread", 0) for s in stats.values()),
                    "threads": len(comux_threads()),
                }
            )
            last_total, last_t = total, now

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.marks.close()


def _accounting(stats: dict[str, Any], high: int, received: int) -> list[str]:
    """What does not add up in one camera's counters; [] when every offset is accounted for."""
    s = collections.defaultdict(int, {k: v for k, v in stats.items() if isinstance(v, int)})
    wrong = []
    # every offset 0..high-1 was decoded (packets) or jumped over unread
    if s["packets"] + s["lag_unread"] != high or s["queued"]:
        wrong.append(
            f"offsets: packets {s['packets']} + lag_unread {s['lag_unread']} != end offset {high}"
            f" (queued {s['queued']})"
        )
    # every packet decoded: a frame, or counted as skipped or failed (<= 2 held by the decoder)
    skipped = sum(
        s[k]
        for k in (
            "lag_dropped",
            "empty_packets",
            "skipped_before_keyframe",
            "skipped_not_due",
            "skipped_to_keyframe",
            "decode_errors",
        )
    )
    held = s["packets"] - skipped - s["frames"]
    if not 0 <= held <= 2:
        wrong.append(f"packets {s['packets']} - skipped {skipped} - frames {s['frames']} = {held}")
    # every frame: delivered, or rate limited / invalid
    if s["frames"] != s["delivered"] + s["rate_limited"] + s["invalid_after_error"]:
        wrong.append(
            f"frames {s['frames']} != delivered {s['delivered']} + rate_limited "
            f"{s['rate_limited']} + invalid_after_error {s['invalid_after_error']}"
        )
    # every delivered frame: in a batch, replaced by a newer one, stale or not batched
    placed = s["in_batches"] + s["replaced"] + s["stale"] + s["not_batched"]
    if not 0 <= s["delivered"] - placed <= BUFFERS:
        wrong.append(
            f"delivered {s['delivered']} vs in_batches {s['in_batches']} + replaced "
            f"{s['replaced']} + stale {s['stale']} + not_batched {s['not_batched']}"
        )
    # every batched frame reached the model
    if received != s["in_batches"]:
        wrong.append(f"model received {received} valid frames, in_batches {s['in_batches']}")
    if s["decode_errors"] or s["invalid_after_error"] or s["invalid_in_batches"]:
        wrong.append(
            f"decode_errors {s['decode_errors']}, invalid_after_error "
            f"{s['invalid_after_error']}, invalid_in_batches {s['invalid_in_batches']}"
        )
    return wrong


def _cache_filled(stats: dict[str, Any]) -> bool:
    """Whether the camera's packet cache is full: every frame handed out put its packet there."""
    return stats.get("delivered", 0) + stats.get("invalid_after_error", 0) >= PACKET_CACHE


def _deliveries(cameras: Comux) -> dict[str, int]:
    return {c[-8:]: s["delivered"] for c, s in cameras.stats().items()}


def _sealed(stats: dict[str, Any], received: int) -> bool:
    """Every frame delivered is placed (in a batch, replaced, stale or not batched) and every
    batched one reached the model."""
    placed = stats["in_batches"] + stats["replaced"] + stats["stale"] + stats["not_batched"]
    return stats["delivered"] == placed and received == stats["in_batches"]


def _totals(stats: dict[str, dict[str, Any]]) -> dict[str, int]:
    keys = (
        "packets",
        "frames",
        "delivered",
        "in_batches",
        "replaced",
        "stale",
        "skipped_to_keyframe",
        "skipped_not_due",
        "skipped_before_keyframe",
        "lag_dropped",
        "lag_unread",
    )
    return {k: sum(s.get(k, 0) for s in stats.values()) for k in keys}


@pytest.mark.timeout(int(DURATION_S + 240))
def test_soak_sixteen_cameras(kafka_broker):
    bootstrap = kafka_broker.bootstrap
    cams = [unique(f"soak{i:02d}") for i in range(CAMS)]
    raw = {c: f"raw.{c}" for c in cams}
    out = {c: f"out.{c}" for c in cams}
    create_topics(bootstrap, [*raw.values(), *out.values()])
    publisher = PublisherProcess(bootstrap, cams, size=f"{W}x{H}", fps=FPS, gop=GOP, seconds=20)
    cameras = Comux(cams, "raw.:cam_id", "out.:cam_id", "WARNING")
    model = SoakModel(cameras)
    sampler: Sampler | None = None
    try:
        publisher.wait_ready(60)
        cameras.setup_consumers(
            bootstrap, end=False, max_offset_diff=MAX_OFFSET_DIFF, **own_group()
        )
        cameras.setup_decoders(rate=None, W=W, H=H, policy="latest", buffers=BUFFERS)
        cameras.setup_producer(bootstrap)
        cameras.start()
        model.start()
        sampler = Sampler(cameras, model, bootstrap, raw).start()
        t_start = sampler.t0
        wait_until(
            lambda: len(model.received) == CAMS or model.error,
            60,
            lambda: f"only {len(model.received)} of {CAMS} cameras delivered a frame",
        )
        wait_until(
            lambda: all(_cache_filled(s) for s in cameras.stats().values()) or model.error,
            PACKET_CACHE / FPS + 60,
            lambda: f"packet caches not full: {_deliveries(cameras)}",
        )
        # Scenario time, not a wait on anything: the warm-up lasts WARMUP_S at least.
        time.sleep(max(0.0, t_start + WARMUP_S - time.monotonic()))
        warmup_s = time.monotonic() - t_start
        sampler.watch_threads()
        warm_index = len(sampler.samples)
        # The soak itself: the cameras publish for DURATION_S (scenario time); only a model
        # error ends it sooner.
        poll_until(
            lambda: model.error is not None,
            max(0.0, t_start + DURATION_S - time.monotonic()),
            interval=0.5,
        )
        report = publisher.stop()
        # drained: every offset published is decoded or jumped over, nothing queued
        marks = Watermarks(bootstrap)
        try:
            highs = marks.high(raw.values())

            def drained() -> bool:
                stats = cameras.stats()
                return all(
                    _lag(stats[c], highs[raw[c]]) == 0 and not stats[c]["queued"] for c in cams
                )

            drained_ok = bool(poll_until(drained, 20, interval=0.2))
        finally:
            marks.close()
        # The last frames are sealed into batches (stall timeout <= 1 s) and reach the model;
        # not fatal here: the accounting below says what does not add up.
        sealed_ok = bool(
            poll_until(
                lambda: all(_sealed(s, model.received[c]) for c, s in cameras.stats().items()),
                15,
                interval=0.1,
            )
        )
        sampler.stop()
        model.halt()
        stats = cameras.stats()
        crashes = sum(getattr(w, "crashes", 0) for w in cameras.threads.values())
        t0 = time.monotonic()
        cameras.close(timeout=30)  # flushes the results
        closed_in = time.monotonic() - t0
    finally:
        model.stop.set()
        if sampler is not None:
            sampler.stop()
        cameras.close(timeout=5)
        publisher.stop()

    samples = sampler.samples
    # the measurement window: after the warm-up, while the cameras were still publishing
    after = [x for x in samples[warm_index:] if x["t"] <= DURATION_S] or samples[-1:]
    base_rss = after[0]["rss"] if after else samples[-1]["rss"]
    growth = max(s["rss"] for s in after) - base_rss
    end_growth = after[-1]["rss"] - base_rss
    fps = [s["fps"] for s in after]
    mean_fps = sum(fps) / len(fps)
    lag_max = {c: max(s["lag"][k] for s in after) for k, c in enumerate(cams)}
    worst = max(lag_max.values())
    unread_after = after[-1]["lag_unread"] - after[0]["lag_unread"]
    records = read_outputs(bootstrap, out.values(), timeout=60)
    check = check_results(model.sent.offsets(), records, out)
    wrong = {
        c[-8:]: w for c in cams if (w := _accounting(stats[c], highs[raw[c]], model.received[c]))
    }
    meta = {
        "cameras": CAMS,
        "cam_ids": cams,  # the order of each sample's "lag" list
        "size": f"{W}x{H}",
        "fps": FPS,
        "gop": GOP,
        "nominal_fps": CAMS * FPS,
        "duration_s": DURATION_S,
        "warmup_s": round(warmup_s, 1),
        "rss_growth_mb": round(growth / 2**20, 2),
        "mean_fps": round(mean_fps, 1),
        "max_lag": worst,
        "title": f"comux soak: {CAMS} cameras {W}x{H} @ {FPS} fps, {DURATION_S:g} s",
    }
    if long_mode():
        from benchmarks.soak import RESULTS, plot, write_samples

        write_samples(RESULTS / "soak-long.json", samples, meta)
        plot(samples, RESULTS / "soak-long.png", meta)
    print(
        f"\nsoak: {CAMS} cameras {W}x{H} @ {FPS} fps for {DURATION_S:g} s (warm-up "
        f"{warmup_s:.1f} s, {len(after)} samples after it): RSS {base_rss / 2**20:.1f} MB "
        f"after warm-up, growth "
        f"max {growth / 2**20:+.2f} MB, at end {end_growth / 2**20:+.2f} MB; delivered fps mean "
        f"{mean_fps:.1f} (min {min(fps):.1f}, max {max(fps):.1f}; nominal {CAMS * FPS}); lag max "
        f"{worst} packets ({worst / FPS:.2f} s), per camera max {sorted(lag_max.values())}; "
        f"lag_unread after warm-up {unread_after}; batches {model.batches}; comux threads "
        f"{samples[-1]['threads']}, died {sampler.dead}, decode worker crashes {crashes}; "
        f"drained {drained_ok}; sealed {sealed_ok}; close {closed_in:.2f} s; results "
        f"{check.describe()}; "
        f"send errors {len(model.send_errors)} {model.send_errors[:3]}; sampler errors "
        f"{sampler.errors[:3]}; publisher failed {sum((report.get('failed') or {}).values())}; "
        f"accounting problems {wrong or 'none'}; totals {_totals(stats)}"
    )
    assert model.error is None, repr(model.error)
    assert not model.send_errors, f"send raised: {model.send_errors[:5]}"
    assert not sampler.dead, f"comux threads died (s into the run): {sampler.dead}"
    assert crashes == 0, f"decode workers caught {crashes} exceptions (see the log)"
    assert growth < RSS_LIMIT, f"RSS grew {growth / 2**20:.1f} MB after the warm-up"
    assert worst <= LAG_LIMIT, f"lag reached {worst} packets (limit {LAG_LIMIT}): {lag_max}"
    assert mean_fps >= MIN_FPS_FRACTION * CAMS * FPS, (
        f"{mean_fps:.1f} frames/s delivered, nominal {CAMS * FPS}"
    )
    assert drained_ok, "comux did not consume every published offset within 20 s of the end"
    assert not wrong, f"counters do not add up: {wrong}"
    assert check.ok, f"results missing on the output topics: {check.describe()}"
