"""A camera fleet on the real broker: the failures reported from the field, as tests.

- a camera that goes silent (or a finite backlog that ended) must not stall the others;
- a fifo backlog is handed out whole: every offset once, in order, in bounded memory;
- adding, removing and closing do not wait for a model blocked in get_batch;
- a damaged GOP yields no valid frame, the intact ones arrive untouched;
- the usage block as first written (positional arguments, both overwrite spellings) with
  ``end=False`` delivers the backlog (and its rate cap counts capture time).

Short by default (each test well under 30 s on 2 cores); ``COMUX_LONG=1`` runs bigger clips and
longer measurement windows. Every test prints what it measured (``pytest -s`` shows it).
"""

from __future__ import annotations

import functools
import math
import os
import time
from typing import Any

import numpy as np

from comux import Comux
from comux.media import EncodedPacket, read_frame_number, synthetic_packets
from comux.publish import publish
from tests.fleet_helpers import (
    Fleet,
    ModelLoop,
    RssSampler,
    create_topics,
    pick,
    poll_until,
    produce,
    timed,
    unique,
    wait_blocked_in,
    wait_until,
)
from tests.groups import own_group
from tests.integration.test_end_to_end import direct_decode

FPS = 25
# After a camera goes quiet, its last frames are still in flight (publisher stop <= 50 ms, fetch,
# decode) and the library needs its stall_timeout (at most 1 s by default) to call it silent:
# measure from this much later.
GRACE = 2.0


@functools.cache
def live_clip() -> list[EncodedPacket]:
    """320x240 at 25 fps, long enough that no live publisher loops (pts never restart) in a test."""
    seconds = pick(40, 90)
    return list(synthetic_packets(320, 240, seconds * FPS, fps=FPS, gop=FPS, bframes=0))


def _stats_line(cameras: Comux) -> str:
    keys = (
        "packets",
        "delivered",
        "rate_limited",
        "replaced",
        "queued",
        "overflow",
        "lag_unread",
        "lag_dropped",
        "decode_errors",
        "skipped_before_keyframe",
    )
    return "; ".join(
        f"{cam}: " + ", ".join(f"{k}={s.get(k)}" for k in keys if s.get(k))
        for cam, s in cameras.stats().items()
    )


def _let_window_pass(model: ModelLoop, end: float) -> None:
    """The measurement window is wall time itself: wait for the clock, watching the model."""
    wait_until(
        lambda: time.monotonic() >= end or model.error is not None,
        end - time.monotonic() + 5,
        "the clock did not advance",
    )
    assert model.error is None, repr(model.error)


# -- 1. a silent camera ------------------------------------------------------------------------


def test_silent_camera_does_not_stall_others(kafka_broker):
    bootstrap = kafka_broker.bootstrap
    cams = [unique("silent") for _ in range(4)]
    quiet, others = cams[0], cams[1:]
    window = pick(5.0, 15.0)
    create_topics(bootstrap, [f"raw.{c}" for c in cams])
    fleet = Fleet(bootstrap)
    fleet.live(live_clip(), cams)
    try:
        with Comux(cams, "raw.:cam_id", "out.:cam_id", "WARNING") as cameras:
            cameras.setup_consumers(bootstrap, end=True, **own_group())
            cameras.setup_decoders(rate=10, W=320, H=240)  # the default stall_timeout
            cameras.start()
            model = ModelLoop(cameras, timeout=10).start()
            try:
                wait_until(
                    lambda: all(model.valid_count(c, 0, math.inf) >= 5 for c in cams),
                    30,
                    lambda: f"not every camera delivered 5 frames: {_stats_line(cameras)}",
                )
                b0 = time.monotonic()
                _let_window_pass(model, b0 + window)
                killed = fleet.silence(quiet)
                a0 = killed + GRACE
                _let_window_pass(model, a0 + window)
                before = {c: model.valid_count(c, b0, b0 + window) / window for c in cams}
                after = {c: model.valid_count(c, a0, a0 + window) / window for c in cams}
                stats = _stats_line(cameras)
            finally:
                model.close()
    finally:
        fleet.close()
    print(
        f"\nsilent camera: valid frames/s per camera in {window:g} s windows, "
        f"before {_fmt(before)}, after silencing {quiet[-8:]} (from +{GRACE:g} s) {_fmt(after)}; "
        f"batches {model.batches}; {stats}"
    )
    assert model.error is None, repr(model.error)
    for cam in others:
        assert before[cam] >= 3, f"{cam} delivered too little before: {before}"
        assert after[cam] >= 0.9 * before[cam], (
            f"{cam}: {after[cam]:.2f} frames/s after {quiet} went silent, "
            f"{before[cam]:.2f} before (need >= 0.9x)"
        )


def test_ended_backlog_does_not_hold_back_live_cameras(kafka_broker):
    """One camera's topic is a finite backlog that ended; three others are live."""
    bootstrap = kafka_broker.bootstrap
    rate = 10
    ended = unique("ended")
    live = [unique("live") for _ in range(3)]
    window = pick(5.0, 15.0)
    backlog = list(synthetic_packets(320, 240, pick(100, 250), fps=FPS, gop=FPS, bframes=0))
    publish(lambda: iter(backlog), ended, bootstrap_servers=bootstrap, rate="max")
    create_topics(bootstrap, [f"raw.{c}" for c in live])
    fleet = Fleet(bootstrap)
    fleet.live(live_clip(), live)
    try:
        with Comux([ended, *live], "raw.:cam_id", "out.:cam_id", "WARNING") as cameras:
            cameras.setup_consumers(bootstrap, end=False, max_offset_diff=None, **own_group())
            cameras.setup_decoders(rate=rate, W=320, H=240)
            cameras.start()
            model = ModelLoop(cameras, timeout=10).start()
            try:

                def backlog_done() -> bool:
                    s = cameras.stats().get(ended, {})
                    return s.get("packets", 0) >= len(backlog) and not s.get("queued", 0)

                wait_until(backlog_done, 30, lambda: f"backlog not read: {_stats_line(cameras)}")
                done_at = time.monotonic()
                first_live = [model.valid_count(c, 0, math.inf) for c in live]
                a0 = done_at + GRACE
                _let_window_pass(model, a0 + window)
                after = {c: model.valid_count(c, a0, a0 + window) / window for c in live}
                from_ended = model.valid_count(ended, 0, math.inf)
                stats = _stats_line(cameras)
            finally:
                model.close()
    finally:
        fleet.close()
    print(
        f"\nended backlog: {from_ended} valid frames of the ended camera; live cameras' valid "
        f"frames/s in the {window:g} s from +{GRACE:g} s after it ended: {_fmt(after)} "
        f"(cap {rate}/s; frames before that {first_live}); batches {model.batches}; {stats}"
    )
    assert model.error is None, repr(model.error)
    for cam in live:
        assert after[cam] >= 0.9 * rate, (
            f"{cam}: {after[cam]:.2f} frames/s while a finished backlog sat beside it "
            f"(the cap is {rate}/s, need >= {0.9 * rate:g})"
        )


def _group() -> dict[str, Any]:
    """own_group(), typed for librdkafka's pass-through options."""
    return dict(own_group())


def _fmt(rates: dict[str, float]) -> str:
    return "{" + ", ".join(f"{c[-8:]}: {r:.2f}" for c, r in rates.items()) + "}"


# -- 2. a fifo backlog, whole --------------------------------------------------------------------


def test_fifo_backlog_every_offset_exactly_once(kafka_broker):
    bootstrap = kafka_broker.bootstrap
    n = pick(120, 250)
    width, height, count = 640, 272, 8
    buffers, fifo_depth = 3, 8
    clip = list(synthetic_packets(width, height, n, fps=FPS, gop=FPS, bframes=0))
    assert [p.pts for p in clip] == list(range(n))  # offset == frame number
    cams = [unique("fifo") for _ in range(count)]
    for cam in cams:
        publish(lambda: iter(clip), cam, bootstrap_servers=bootstrap, rate="max")
    # The model is slightly slower than decoding: a batch of `count` frames costs it 1.5x what
    # decoding them costs on every core (measured here with PyAV), so backpressure must engage.
    timings = []
    for _ in range(3):  # the fastest of three: what the CPU can do, not a busy moment
        started = time.perf_counter()
        direct_decode(clip[: 2 * FPS])
        timings.append((time.perf_counter() - started) / (2 * FPS))
    per_frame = min(timings)
    compute = max(0.005, 1.5 * count * per_frame / (os.cpu_count() or 1))

    # Memory it may take: the batch buffers, a few decoded yuv420p frames per camera waiting
    # for a free row (bounded by 4 * fifo_depth here, generously), the compressed backlog
    # itself (an upper bound on the packet queues), and 64 MB for codec contexts, librdkafka's
    # buffers, thread stacks and allocator slack. Decoding the whole backlog ahead would take
    # count * n yuv frames (250 MB at n=120): more than this bound.
    slot, yuv = width * height * 3, width * height * 3 // 2
    compressed = count * sum(len(p.data) for p in clip)
    bound = buffers * count * slot + count * 4 * fifo_depth * yuv + compressed + 64 * 2**20

    seen: dict[str, list[int]] = {c: [] for c in cams}
    wrong_pixels: list[tuple[str, int, int]] = []
    batches = 0
    with RssSampler() as rss, Comux(cams, "raw.:cam_id", "out.:cam_id", "WARNING") as cameras:
        cameras.setup_consumers(bootstrap, end=False, max_offset_diff=None, **own_group())
        cameras.setup_decoders(
            rate=None,
            W=width,
            H=height,
            policy="fifo",
            buffers=buffers,
            fifo_depth=fifo_depth,
        )
        cameras.start()
        t0 = time.monotonic()
        deadline = t0 + pick(20, 60)
        idle = 0
        while time.monotonic() < deadline:
            if all(len(seen[c]) >= n for c in cams):
                break
            batch = cameras.get_batch(timeout=3, stacked=True)
            if batch is None:
                idle += 1
                stats = cameras.stats()
                if idle >= 2 or all(stats[c]["packets"] >= n for c in cams):
                    break  # nothing for 3 s after everything was read (or for 6 s): over
                continue
            idle = 0
            with batch:
                batches += 1
                for i, cam in enumerate(batch.cam_ids):
                    if not batch.valid[i]:
                        continue
                    index = int(batch.indices[i])
                    seen[cam].append(index)
                    number = read_frame_number(batch.frames[i])
                    if not 0 <= index < n or number != clip[index].pts:
                        wrong_pixels.append((cam, index, number))
            time.sleep(compute)  # the model's compute time
        elapsed = time.monotonic() - t0
        stats_line = _stats_line(cameras)
    got = {c: len(seen[c]) for c in cams}
    missing = {c[-8:]: len(set(range(n)) - set(seen[c])) for c in cams}
    dupes = {c[-8:]: len(seen[c]) - len(set(seen[c])) for c in cams}
    disorder = {
        c[-8:]: sum(1 for a, b in zip(seen[c], seen[c][1:], strict=False) if b <= a) for c in cams
    }
    print(
        f"\nfifo backlog: {count} cameras x {n} frames in {elapsed:.1f} s, {batches} batches, "
        f"model {compute * 1e3:.1f} ms/batch; valid frames per camera {list(got.values())}; "
        f"missing {missing}; duplicated {dupes}; out of order {disorder}; "
        f"RSS growth {rss.growth / 2**20:.1f} MB (bound {bound / 2**20:.1f} MB, "
        f"{rss.samples} samples); {stats_line}"
    )
    for cam in cams:
        assert seen[cam] == list(range(n)), (
            f"{cam}: offsets must be 0..{n - 1} once each, in order: {len(seen[cam])} valid, "
            f"{missing[cam[-8:]]} missing, {dupes[cam[-8:]]} duplicated, "
            f"{disorder[cam[-8:]]} out of order"
        )
    assert not wrong_pixels, f"frames whose pixels belong to another frame: {wrong_pixels[:5]}"
    assert rss.growth < bound, f"RSS grew {rss.growth / 2**20:.1f} MB, bound {bound / 2**20:.1f} MB"


# -- 3. camera changes while the model waits -----------------------------------------------------


def _idle_cameras(bootstrap: str, count: int = 2) -> Comux:
    """Running cameras whose topics exist and stay empty: get_batch can only time out."""
    cams = [unique("idle") for _ in range(count)]
    create_topics(bootstrap, [f"raw.{c}" for c in cams])
    cameras = Comux(cams, "raw.:cam_id", "out.:cam_id", "WARNING")
    cameras.setup_consumers(bootstrap, end=True, **_group())
    cameras.setup_decoders(rate=10, W=160, H=120)
    cameras.start()
    return cameras


def test_camera_changes_do_not_wait_for_get_batch(kafka_broker):
    cameras = _idle_cameras(kafka_broker.bootstrap)
    model = ModelLoop(cameras, timeout=10).start()
    lines = []
    try:
        wait_blocked_in(model.thread, "get_batch")
        new = unique("new")
        add = timed("add_cameras(['new'])", lambda: cameras.add_cameras([new]))
        add.wait(3.0)
        lines.append(add.describe(3.0))
        assert add.elapsed is not None and add.elapsed < 0.5, (
            f"{lines[-1]} while the model waited in get_batch(timeout=10) (target 10 ms)"
        )
        assert add.error is None and add.result["created"] == [new], (add.error, add.result)
        assert wait_blocked_in(model.thread, "get_batch") == "blocked"
        kill = timed("kill('new')", lambda: cameras.kill(new))
        kill.wait(3.0)
        lines.append(kill.describe(3.0))
        assert kill.elapsed is not None and kill.elapsed < 0.5, (
            f"{lines[-1]} while the model waited in get_batch(timeout=10) (target 10 ms)"
        )
        assert kill.error is None, repr(kill.error)
        assert new not in cameras.cam_ids and new not in cameras.stats()
    finally:
        print("\ncamera changes during get_batch(timeout=10): " + "; ".join(lines))
        model.close()
    assert model.error is None, repr(model.error)


def test_adding_100_cameras_does_not_wait_for_get_batch(kafka_broker):
    cameras = _idle_cameras(kafka_broker.bootstrap)
    model = ModelLoop(cameras, timeout=0.5).start()
    ids = [unique("many") for _ in range(100)]
    try:
        wait_blocked_in(model.thread, "get_batch")
        add = timed("add_cameras(100 ids)", lambda: cameras.add_cameras(ids))
        add.wait(10.0)
        print(f"\n{add.describe(10.0)} while get_batch(timeout=0.5) loops ({model.nones} timeouts)")
        assert add.elapsed is not None and add.elapsed < 2.0, add.describe(10.0)
        assert add.error is None and add.result["created"] == ids, repr(add.error)
        assert set(ids) <= set(cameras.cam_ids)
    finally:
        model.close()
    assert model.error is None, repr(model.error)


def test_close_from_another_thread_does_not_wait_for_get_batch(kafka_broker):
    cameras = _idle_cameras(kafka_broker.bootstrap)
    model = ModelLoop(cameras, timeout=10).start()
    try:
        wait_blocked_in(model.thread, "get_batch")
        add = timed("add_cameras(['late'])", lambda: cameras.add_cameras([unique("late")]))
        add_state = wait_blocked_in(add.thread, "add_cameras")
        model.stop.set()
        close = timed("close(timeout=2)", lambda: cameras.close(timeout=2))
        close.wait(12.0)
        model_done = model.halt(max(0.0, close.started + 12.0 - time.monotonic()))
        model_after = time.monotonic() - close.started
        print(
            f"\n{close.describe(12.0)} from a third thread while the model waited in "
            f"get_batch(timeout=10) and add_cameras was {add_state}; the model's get_batch "
            f"{'returned' if model_done else 'had not returned'} {model_after:.2f} s after close "
            f"began"
        )
        assert close.elapsed is not None and close.elapsed < 3.0, close.describe(12.0)
        assert close.error is None, repr(close.error)
    finally:
        cameras.close(timeout=2)
        model.halt(12)
    assert model.error is None, repr(model.error)


# -- 4. damaged GOPs -----------------------------------------------------------------------------


def test_damaged_gops_yield_no_valid_frame(kafka_broker):
    bootstrap = kafka_broker.bootstrap
    gop, gops = 25, 5
    clip = list(synthetic_packets(320, 240, gop * gops, fps=FPS, gop=gop, bframes=2))
    assert [i for i, p in enumerate(clip) if p.keyframe] == [k * gop for k in range(gops)]
    expected = direct_decode(clip)  # the intact stream, frames keyed by their packet's offset
    messages = [(p.data, p.headers()) for p in clip]
    # GOP 1: its keyframe cut in half.
    key1 = clip[gop]
    messages[gop] = (key1.data[: len(key1.data) // 2], key1.headers())
    # GOP 3: garbage where its keyframe was, then a P-frame whose header claims a keyframe,
    # then the rest of the GOP. The garbage has no zero byte, so no start code either.
    rng = np.random.default_rng(7)
    garbage = bytes(rng.integers(1, 256, len(clip[3 * gop].data), dtype=np.uint8))
    messages[3 * gop] = (garbage, clip[3 * gop].headers())
    liar = clip[3 * gop + 1]
    assert not liar.keyframe
    messages[3 * gop + 1] = (
        liar.data,
        [(k, b"1" if k == "keyframe" else v) for k, v in liar.headers()],
    )
    damaged = set(range(gop, 2 * gop)) | set(range(3 * gop, 4 * gop))
    intact = {o: f for o, f in expected.items() if o not in damaged}
    cam = unique("damaged")
    produce(bootstrap, f"raw.{cam}", cam, messages)

    got: dict[int, np.ndarray] = {}
    nones: list[int] = []
    repeats: list[int] = []
    with Comux([cam], "raw.:cam_id", "out.:cam_id", "WARNING") as cameras:
        cameras.setup_consumers(bootstrap, end=False, max_offset_diff=None, **own_group())
        cameras.setup_decoders(rate=None, W=320, H=240, policy="fifo")
        cameras.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            batch = cameras.get_batch(timeout=2)
            if batch is None:
                if cameras.stats()[cam]["packets"] >= len(messages):
                    break  # everything read, nothing more for 2 s
                continue
            for _, index, frame in batch:
                if frame is None:
                    nones.append(index)
                    continue
                if index in got:
                    repeats.append(index)
                got[index] = frame
        stats = cameras.stats()[cam]
    in_damaged = sorted(o for o in got if o in damaged)
    missing = sorted(set(intact) - set(got))
    diffs = {
        o: int(np.abs(got[o].astype(np.int16) - intact[o].astype(np.int16)).max())
        for o in intact
        if o in got
    }
    off = {o: d for o, d in diffs.items() if d > 2}
    print(
        f"\ndamaged GOPs: {len(got)} valid frames; {len(in_damaged)} of them inside the damaged "
        f"GOPs {in_damaged[:12]}{'...' if len(in_damaged) > 12 else ''}; intact frames expected "
        f"{len(intact)}, missing {len(missing)} {missing[:12]}; worst pixel difference "
        f"{max(diffs.values(), default=None)}; None slots {len(nones)}; "
        f"decode_errors={stats['decode_errors']}, "
        f"skipped_before_keyframe={stats['skipped_before_keyframe']}, "
        f"last_error={stats['last_error']!r}"
    )
    assert not in_damaged, f"valid frames with an index inside a damaged GOP: {in_damaged}"
    # Frames the decoder still held when a packet failed are never valid, by rule (they are
    # counted): with two B-frames, at most the last few frames before each damaged GOP.
    held = {o for o in missing if any(0 < start - o <= 4 for start in (gop, 3 * gop))}
    assert set(missing) == held, f"intact frames that never arrived valid: {missing}"
    assert stats["invalid_after_error"] >= len(held), stats
    assert not off, f"intact frames whose pixels differ from a direct decode by > 2: {off}"
    assert not repeats, f"offsets handed out twice: {repeats}"


# -- 5. the usage block as first written ----------------------------------------------------------


def _usage_run(bootstrap: str, rate: float | None, frames: int) -> tuple[list, dict, dict, float]:
    """Publish a clip per camera, then run the usage block of examples/usage.py, end=False."""
    clip = list(synthetic_packets(320, 240, frames, fps=FPS, gop=FPS, bframes=0))
    cam_ids = [unique("usage") for _ in range(3)]
    for cam in cam_ids:
        publish(lambda: iter(clip), cam, bootstrap_servers=bootstrap, rate="max")
    consume_schema, produce_schema = "raw.:cam_id", "out.:cam_id"
    seen: dict[str, list[int]] = {c: [] for c in cam_ids}

    cameras = Comux(cam_ids, consume_schema, produce_schema, "ERROR")
    cameras.setup_consumers(
        bootstrap,
        overwrite=True,
        end=False,
        max_offset_diff=20,
        strict_on_fail=True,
        over_write=False,
        **_group(),
    )
    cameras.setup_decoders(rate=rate, W=320, H=240, de_codec="h264", pix_fmt="rgb24")
    cameras.setup_producer(bootstrap)
    cameras.start()
    t0 = time.monotonic()
    stats: dict = {}
    try:
        deadline = t0 + 60

        def accounted() -> bool:
            s = cameras.stats()
            return all(
                len(seen[c])
                + s[c]["rate_limited"]
                + s[c]["skipped_not_due"]
                + s[c]["skipped_to_keyframe"]
                >= frames
                for c in cam_ids
            )

        def all_read() -> bool:
            s = cameras.stats()
            return all(s[c]["packets"] >= frames and not s[c].get("queued") for c in cam_ids)

        while time.monotonic() < deadline:
            # Once every packet was read, the last one's counters settle within moments.
            if accounted() or (all_read() and poll_until(accounted, 2.0)):
                break
            batch = cameras.get_batch(timeout=10)
            if batch is None:
                break  # 10 s without a frame: nothing more is coming
            for cam_id, index, frame in batch:
                if frame is not None:
                    seen[cam_id].append(index)
        stats = cameras.stats()
    finally:
        cameras.close()
    return cam_ids, seen, stats, time.monotonic() - t0


def test_usage_block_with_end_false_delivers_backlog(kafka_broker):
    frames = 132
    cam_ids, seen, stats, elapsed = _usage_run(kafka_broker.bootstrap, None, frames)
    print(
        f"\nusage block, rate=None, end=False, max_offset_diff=20: valid frames per camera "
        f"{[len(seen[c]) for c in cam_ids]} of {frames} in {elapsed:.1f} s; "
        + "; ".join(
            f"lag_unread={stats[c]['lag_unread']}, lag_dropped={stats[c]['lag_dropped']}, "
            f"replaced={stats[c]['replaced']}"
            for c in cam_ids
        )
    )
    for cam in cam_ids:
        missing = sorted(set(range(frames)) - set(seen[cam]))
        assert not missing, f"{cam}: {len(missing)} of {frames} offsets never arrived valid"
        assert len(seen[cam]) == frames, f"{cam}: offsets handed out twice"


def test_usage_block_rate_10_caps_by_capture_time(kafka_broker):
    frames, rate = 132, 10
    capture = frames / FPS  # seconds of video in the clip
    low, high = (rate - 1) * capture, (rate + 1) * capture
    cam_ids, seen, stats, elapsed = _usage_run(kafka_broker.bootstrap, rate, frames)
    print(
        f"\nusage block, rate={rate}, end=False: valid frames per camera "
        f"{[len(seen[c]) for c in cam_ids]} (want {low:.1f}..{high:.1f} for {capture:.2f} s of "
        f"capture) in {elapsed:.1f} s; rate_limited {[stats[c]['rate_limited'] for c in cam_ids]}; "
        f"lag_unread {[stats[c]['lag_unread'] for c in cam_ids]}; "
        f"replaced {[stats[c]['replaced'] for c in cam_ids]}"
    )
    for cam in cam_ids:
        count = len(seen[cam])
        assert len(set(seen[cam])) == count, f"{cam}: offsets handed out twice"
        assert low <= count <= high, (
            f"{cam}: {count} frames for {capture:.2f} s of capture at rate={rate} "
            f"(want {rate} +- 1 per second: {low:.1f}..{high:.1f})"
        )
        # Not due: decoded and dropped, or never decoded at all (nothing due needed them).
        s = stats[cam]
        limited = s["rate_limited"] + s["skipped_not_due"] + s["skipped_to_keyframe"]
        assert count + limited == frames, (
            f"{cam}: {count} batched + {limited} rate-limited or skipped != {frames} offsets"
        )
