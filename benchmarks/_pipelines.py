"""The end-to-end pipelines the end-to-end benchmark compares, on the same Kafka backlog.

Each ``run_*`` consumes (or decodes) every camera's whole backlog once and returns a
:class:`~benchmarks._common.Sample` whose clock starts when the pipeline's FIRST frame is done
(decoded and converted) and stops when the pipeline's caller has the LAST frame of every camera:

* wall: perf_counter seconds; cpu: ``time.process_time`` seconds (this process, all threads:
  librdkafka's, the decoders', the caller's; the broker is another process, reported apart);
* units: frames the caller received after the first one: for comux and naive, frames that were
  in a batch the caller's loop got (valid slots); the ceilings have no batches, so for them
  every frame decoded and converted counts (that is what a ceiling is).

Starting at the first frame keeps the consumer group join, topic metadata and thread start-up
(the same for any pipeline, and not what is being compared) out of the numbers.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from benchmarks._common import Sample
from comux.config import TopicSchema

CODEC = "h264"


class FirstFrame:
    """When (wall, cpu) the first of any thread's frames was done; set once, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.at: tuple[float, float] | None = None

    def mark(self) -> None:
        if self.at is None:
            stamp = (time.perf_counter(), time.process_time())
            with self._lock:
                if self.at is None:
                    self.at = stamp

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any) -> Any:
            out = fn(*args)
            self.mark()
            return out

        return wrapped


class BrokerCPU:
    """CPU seconds the broker's JVM used, from /proc (None where it cannot be read)."""

    def __init__(self, pid_path: Path | None) -> None:
        self.pid: int | None = None
        if pid_path is not None:
            try:
                self.pid = int(Path(pid_path).read_text().strip())
            except (OSError, ValueError):
                self.pid = None
        self._tick = os.sysconf("SC_CLK_TCK")

    def seconds(self) -> float | None:
        if self.pid is None:
            return None
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / self._tick  # utime + stime


def _check_done(first: FirstFrame, name: str) -> tuple[float, float]:
    if first.at is None:
        raise RuntimeError(f"{name}: no frame was ever decoded")
    return first.at


class Received:
    """The Kafka offsets of every frame a caller received, per camera, in arrival order.

    A fifo run must hand over every offset exactly once, in order; :meth:`check` says whether
    it did (recorded, never asserted: losing or repeating frames is the library's failure,
    and the numbers are worth keeping either way).
    """

    def __init__(self, cams: Sequence[str]) -> None:
        self.offsets: dict[str, list[int]] = {c: [] for c in cams}
        self._seen: dict[str, set[int]] = {c: set() for c in cams}

    def add(self, cam: str, offset: int) -> None:
        self.offsets.setdefault(cam, []).append(offset)
        self._seen.setdefault(cam, set()).add(offset)

    def complete(self, cam: str, last: int) -> bool:
        """Every offset up to ``last`` arrived (with B-frames the last offset is not the last
        frame shown, so its arrival does not end the camera's stream)."""
        seen = self._seen.get(cam, set())
        return len(seen) > last and last in seen

    def add_batch(self, batch: Any) -> int:
        """Record the valid slots of a comux ``Batch``; returns how many there were."""
        n = 0
        for cam, index, ok in zip(
            batch.cam_ids, batch.indices.tolist(), batch.valid.tolist(), strict=True
        ):
            if ok:
                self.add(cam, index)
                n += 1
        return n

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.offsets.values())

    def check(self, last: Mapping[str, int]) -> dict[str, Any]:
        """Offsets 0..last[cam] each exactly once per camera, in order? What went wrong, counted.

        Only this run's cameras count: ``last`` may cover every published camera.
        """
        totals = {"missing": 0, "duplicates": 0, "unexpected": 0, "out_of_order": 0}
        wrong: dict[str, dict[str, int]] = {}
        for cam in self.offsets:
            end = last[cam]
            got = self.offsets.get(cam, [])
            seen, expected = set(got), set(range(end + 1))
            counts = {
                "missing": len(expected - seen),
                "duplicates": len(got) - len(seen),
                "unexpected": len(seen - expected),
                "out_of_order": sum(1 for a, b in itertools.pairwise(got) if b <= a),
            }
            for key, n in counts.items():
                totals[key] += n
            if any(counts.values()):
                wrong[cam] = {"received": len(got), **counts}
        return {
            "every_offset_once": not (
                totals["missing"] or totals["duplicates"] or totals["unexpected"]
            ),
            "in_order": totals["out_of_order"] == 0,
            **totals,
            "cameras_wrong": wrong,
        }


# -- comux -------------------------------------------------------------------------------------


def run_comux(
    bootstrap: str,
    template: str,
    cams: Sequence[str],
    last: Mapping[str, int],
    width: int,
    height: int,
    threads: int,
    *,
    policy: Literal["latest", "fifo"] = "fifo",
    timeout: float = 300.0,
    stall_s: float = 20.0,
    writer: Callable[[Any, np.ndarray], None] | None = None,
) -> Sample:
    """``Comux`` with ``decode_threads`` workers, ``get_batch(stacked=True)`` until the caller
    has had every camera's last offset in a batch; only valid slots of those batches count.

    ``policy="fifo"`` (the throughput runs): every frame must reach a batch, so the run also
    checks that each offset arrived exactly once (``extra["offsets"]``, recorded only).
    Raises TimeoutError when no frame arrived for ``stall_s`` seconds (a lost last frame, a
    stalled batch) or after ``timeout``. ``writer`` replaces the pool's frame writer
    (what-if experiments only; None: comux's own).
    """
    from comux.app import Comux

    first = FirstFrame()
    got = Received(cams)
    cx = Comux(list(cams), consume_schema=template, decode_threads=threads)
    batches = 0
    try:
        options: dict[str, Any] = {"group.id": f"bench-comux-{uuid.uuid4().hex}"}
        cx.setup_consumers(bootstrap, end=False, max_offset_diff=None, **options)
        cx.setup_decoders(rate=None, W=width, H=height, policy=policy)
        # Mark the first frame written into a slot (a thin wrapper around the pool's writer);
        # without that hook the first batch's write stamps stand in, a little later.
        pool: Any = getattr(cx, "_pool", None)
        inner: Any = getattr(pool, "_writer", None)
        if writer is not None:
            inner = writer
        hooked = inner is not None
        writer_name = getattr(inner, "__qualname__", repr(inner))
        if hooked:
            pool._writer = first.wrap(inner)
        remaining = set(cams)
        fifo = policy == "fifo"
        cx.start()
        begun = progress = time.perf_counter()
        last_batch, max_gap = None, 0.0
        while remaining:
            batch = cx.get_batch(timeout=0.005, stacked=True)
            now = time.perf_counter()
            if batch is None:
                if now - progress > stall_s or now - begun > timeout:
                    raise TimeoutError(
                        f"comux ({policy}): no frame for {now - progress:.1f} s; still waiting "
                        f"for the last offset of {sorted(remaining)}; received "
                        f"{ {c: len(v) for c, v in got.offsets.items()} }; stats {cx.stats()}"
                    )
                continue
            with batch:
                batches += 1
                if last_batch is not None:
                    max_gap = max(max_gap, now - last_batch)
                last_batch = now
                if not hooked and first.at is None:
                    stamps = batch.timestamps[batch.valid]
                    if stamps.size:
                        ago = time.time() - float(stamps.min())
                        first.at = (time.perf_counter() - ago, time.process_time())
                if got.add_batch(batch):
                    progress = now
                for cam, index, ok in zip(
                    batch.cam_ids, batch.indices.tolist(), batch.valid.tolist(), strict=True
                ):
                    # fifo: every offset; latest: the last one, its older frames were replaced
                    done = got.complete(cam, last[cam]) if fifo else ok and index >= last[cam]
                    if done:
                        remaining.discard(cam)
        t1, c1 = time.perf_counter(), time.process_time()
        stats = cx.stats()
    finally:
        cx.close()
    t0, c0 = _check_done(first, "comux")
    received = got.total
    return Sample(
        t1 - t0,
        c1 - c0,
        received - 1,
        {
            "frames": received,  # valid slots of the batches the caller got
            # the old headline: frames converted into a slot (stats "delivered"); under
            # "latest" most of them are replaced before any batch holds them
            "frames_decoded": sum(s.get("delivered", 0) for s in stats.values()),
            "offsets": got.check(last),
            "batches": batches,
            "policy": policy,
            "decode_errors": sum(s.get("decode_errors", 0) for s in stats.values()),
            "replaced": sum(s.get("replaced", 0) for s in stats.values()),
            "writer": writer_name,
            # the longest wait between two batches: a stalled camera (a late partition
            # assignment, say) shows here rather than only as a slow round
            "max_batch_gap_s": round(max_gap, 4),
        },
    )


# -- the decode + convert ceiling ----------------------------------------------------------------


def _interleaved(
    packets: Mapping[str, Sequence[bytes]], cams: Sequence[str]
) -> Iterator[tuple[str, bytes]]:
    longest = max((len(packets[c]) for c in cams), default=0)
    for j in range(longest):
        for cam in cams:
            if j < len(packets[cam]):
                yield cam, packets[cam][j]


def run_ceiling(
    packets: Mapping[str, Sequence[bytes]],
    cams: Sequence[str],
    width: int,
    height: int,
    threads: int,
    cached: bool = True,
) -> Sample:
    """Packets already in memory; ``threads`` threads, cameras split among them round-robin;
    per camera one PyAV h264 context (thread_count=1, as comux) and swscale to rgb24, nothing else.

    ``cached``: one reused ``VideoReformatter`` per camera (the real floor of swscale); else
    ``frame.reformat(format="rgb24")``, which sets up a new swscale context for every new frame.
    """
    groups = [list(cams[i::threads]) for i in range(threads)]
    groups = [g for g in groups if g]
    first = FirstFrame()
    counts = [0] * len(groups)
    ready = threading.Barrier(len(groups) + 1)
    failures: list[BaseException] = []

    def work(k: int, group: list[str]) -> None:
        try:
            ctxs = {}
            scalers = {}
            for cam in group:
                ctx: Any = av.CodecContext.create(CODEC, "r")
                ctx.thread_count = 1
                ctxs[cam] = ctx
                scalers[cam] = VideoReformatter()
            order = list(_interleaved(packets, group))
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)
            ready.abort()
            return
        ready.wait()
        n = 0
        mark = first.mark
        ends = [(cam, None) for cam in group]  # the frames a decoder holds for B-frames
        for cam, data in [*order, *ends]:
            for frame in ctxs[cam].decode(None if data is None else av.Packet(data)):
                if cached:
                    scalers[cam].reformat(frame, format="rgb24", width=width, height=height)
                else:
                    frame.reformat(format="rgb24", width=width, height=height)
                mark()
                n += 1
        counts[k] = n

    workers = [
        threading.Thread(target=work, args=(k, g), daemon=True) for k, g in enumerate(groups)
    ]
    for t in workers:
        t.start()
    ready.wait()
    for t in workers:
        t.join()
    t1, c1 = time.perf_counter(), time.process_time()
    if failures:
        raise failures[0]
    t0, c0 = _check_done(first, "ceiling")
    frames = sum(counts)
    return Sample(t1 - t0, c1 - c0, frames - 1, {"frames": frames})


def run_ceiling_kafka(
    bootstrap: str,
    template: str,
    cams: Sequence[str],
    last: Mapping[str, int],
    total: int,
    width: int,
    height: int,
    threads: int,
    timeout: float = 300.0,
) -> Sample:
    """The ceiling fed by a plain consumer: one confluent_kafka Consumer polled by the caller
    routes each message to its camera's decode thread (a ``SimpleQueue`` each, cameras split
    round-robin), which decodes and converts with a reused swscale context, nothing else.

    What comux does minus its batching, timestamps and bookkeeping: comux/ceiling_kafka is the
    cost of comux's own machinery; ceiling_kafka/ceiling that of Kafka (client and broker)."""
    schema = TopicSchema(template)
    groups = [list(cams[i::threads]) for i in range(threads)]
    groups = [g for g in groups if g]
    worker_of = {cam: k for k, g in enumerate(groups) for cam in g}
    queues: list[queue.SimpleQueue[Any]] = [queue.SimpleQueue() for _ in groups]
    first = FirstFrame()
    counts = [0] * len(groups)
    done = threading.Semaphore(0)
    failures: list[BaseException] = []

    def work(k: int, group: list[str]) -> None:
        try:
            ctxs, scalers = {}, {}
            for cam in group:
                ctx: Any = av.CodecContext.create(CODEC, "r")
                ctx.thread_count = 1
                ctxs[cam], scalers[cam] = ctx, VideoReformatter()
            q = queues[k]
            n = 0
            while True:
                item = q.get()
                if item is None:
                    break
                cam, data, ends = item
                frames = list(ctxs[cam].decode(av.Packet(data)))
                if ends:  # its last packet: the frames held for B-frames come out too
                    frames += ctxs[cam].decode(None)
                for frame in frames:
                    scalers[cam].reformat(frame, format="rgb24", width=width, height=height)
                    first.mark()
                    n += 1
                    counts[k] = n
                    done.release()
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)
            done.release()

    workers = [
        threading.Thread(target=work, args=(k, g), daemon=True) for k, g in enumerate(groups)
    ]
    for t in workers:
        t.start()
    topic_cam = {schema.topic(c): c for c in cams}
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-ceilk-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.assign([TopicPartition(t, 0, OFFSET_BEGINNING) for t in topic_cam])
    deadline = time.perf_counter() + timeout
    frames = 0
    try:
        while frames < total:
            if failures:
                raise failures[0]
            if time.perf_counter() > deadline:
                raise TimeoutError(f"ceiling_kafka: {frames} of {total} frames")
            msg: Any
            for msg in consumer.consume(num_messages=256, timeout=0.005):
                if msg.error():
                    continue
                cam = topic_cam[msg.topic()]
                queues[worker_of[cam]].put((cam, msg.value(), msg.offset() >= last[cam]))
            while done.acquire(blocking=False):
                frames += 1
        t1, c1 = time.perf_counter(), time.process_time()
    finally:
        for q in queues:
            q.put(None)
        for t in workers:
            t.join(10)
        consumer.close()
    t0, c0 = _check_done(first, "ceiling_kafka")
    return Sample(t1 - t0, c1 - c0, sum(counts) - 1, {"frames": sum(counts)})


# -- the naive, seed-style pipeline ----------------------------------------------------------------


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Blocking put that still notices ``stop``; False when stopped first."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def run_naive(
    bootstrap: str,
    template: str,
    cams: Sequence[str],
    last: Mapping[str, int],
    width: int,
    height: int,
    *,
    depth: int = 8,
    wait: float = 0.05,
    timeout: float = 300.0,
    stall_s: float = 20.0,
) -> Sample:
    """One thread and one confluent_kafka Consumer per camera, ``to_ndarray(format="rgb24")``,
    a bounded ``queue.Queue`` per camera (``depth``, as comux's ``fifo_depth``), and a main loop
    that ``np.stack``s the next queued frame of every camera (waiting up to ``wait`` s for each):
    the fifo contract comux's throughput run keeps, written the obvious way. Counts the frames
    that were in a stack, and checks their offsets like comux's run."""
    schema = TopicSchema(template)
    group = f"bench-naive-{uuid.uuid4().hex}"
    stop = threading.Event()
    queues: dict[str, queue.Queue[tuple[int, np.ndarray]]] = {
        c: queue.Queue(maxsize=depth) for c in cams
    }
    counts: dict[str, int] = {}
    failures: list[BaseException] = []
    first = FirstFrame()

    def worker(cam: str) -> None:
        n = 0
        try:
            consumer = Consumer(
                {
                    "bootstrap.servers": bootstrap,
                    "group.id": group,
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                }
            )
            consumer.assign([TopicPartition(schema.topic(cam), 0, OFFSET_BEGINNING)])
            ctx: Any = av.CodecContext.create(CODEC, "r")
            q = queues[cam]
            try:
                while not stop.is_set():
                    msg: Any = consumer.poll(0.05)
                    if msg is None or msg.error():
                        continue
                    frames = list(ctx.decode(av.Packet(msg.value())))
                    if msg.offset() >= last[cam]:  # held for B-frames until the stream ends
                        frames += ctx.decode(None)
                    for frame in frames:
                        # No map from frame to packet here: the camera's k-th frame out counts
                        # as offset k (one frame per message), so every frame once reads as
                        # every offset once, B-frames or not.
                        offset = n
                        if frame.width != width or frame.height != height:
                            arr = frame.to_ndarray(format="rgb24", width=width, height=height)
                        else:
                            arr = frame.to_ndarray(format="rgb24")
                        first.mark()
                        n += 1
                        if not _put(q, (offset, arr), stop):
                            return
            finally:
                consumer.close()
        except BaseException as exc:  # pragma: no cover - reported by the main loop
            failures.append(exc)
        finally:
            counts[cam] = n

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in cams]
    for t in threads:
        t.start()
    got = Received(cams)
    remaining = set(cams)
    stacks = 0
    begun = progress = time.perf_counter()
    try:
        while remaining:
            if failures:
                raise failures[0]
            now = time.perf_counter()
            if now - progress > stall_s or now - begun > timeout:
                raise TimeoutError(f"naive: still waiting for {sorted(remaining)}")
            items: list[tuple[str, int, np.ndarray]] = []
            for cam in cams:
                if cam not in remaining:
                    continue
                try:
                    offset, arr = queues[cam].get(timeout=wait)
                except queue.Empty:
                    continue
                items.append((cam, offset, arr))
            if not items:
                continue
            batch = np.stack([arr for _, _, arr in items])
            stacks += 1
            del batch
            progress = time.perf_counter()
            for cam, offset, _ in items:
                got.add(cam, offset)
                if got.complete(cam, last[cam]):
                    remaining.discard(cam)
        t1, c1 = time.perf_counter(), time.process_time()
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    t0, c0 = _check_done(first, "naive")
    frames = got.total
    return Sample(
        t1 - t0,
        c1 - c0,
        frames - 1,
        {
            "frames": frames,
            "frames_decoded": sum(counts.values()),
            "offsets": got.check(last),
            "batches": stacks,
        },
    )


# -- fetching the backlog ------------------------------------------------------------------------


def fetch_backlog(
    bootstrap: str,
    template: str,
    cams: Sequence[str],
    expected: Mapping[str, int],
    timeout: float = 120.0,
) -> dict[str, list[bytes]]:
    """Every camera's messages (values), in offset order, read once with a plain consumer."""
    schema = TopicSchema(template)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-fetch-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    topic_cam = {schema.topic(c): c for c in cams}
    consumer.assign([TopicPartition(t, 0, OFFSET_BEGINNING) for t in topic_cam])
    out: dict[str, list[bytes]] = {c: [] for c in cams}
    deadline = time.monotonic() + timeout
    try:
        while any(len(out[c]) < expected[c] for c in cams):
            if time.monotonic() > deadline:
                raise TimeoutError({c: len(v) for c, v in out.items()})
            msg: Any
            for msg in consumer.consume(num_messages=500, timeout=0.2):
                if msg.error():
                    continue
                out[topic_cam[msg.topic()]].append(msg.value())
    finally:
        consumer.close()
    return out
