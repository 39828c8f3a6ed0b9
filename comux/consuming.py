"""Kafka side of the cameras: one consumer per process, a poll thread, decode worker threads.

One librdkafka consumer serves every camera of the process: at 64 cameras, 64 clients would mean
64 sets of broker connections, fetch threads and prefetch buffers. The poll thread only queues
each message on its camera; decoding runs on a fixed pool of worker threads (one per core by
default), which give the cameras turns, one thread at a time per camera so its packets stay in
order. A camera whose queue
is full has its partition paused; what librdkafka had already handed over stays queued.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_STORED,
    Consumer,
    KafkaException,
    TopicPartition,
)
from confluent_kafka import KafkaError as RdKafkaError

from . import kafka
from .camera import AGAIN, IDLE, QUEUED, RUNNING, Camera
from .config import TopicSchema
from .errors import BrokerUnavailableError
from .logs import COUNT_REPEATS
from .offsets import done_metadata, parse_done

__all__ = [
    "CameraConsumer",
    "ConsumerSettings",
    "DecodePool",
    "DecodeWorker",
]

log = logging.getLogger("comux.consuming")

_STOP = object()
_PROBE_S = 3.0  # with no other sign of the broker for this long, ask it for metadata
_PROBE_TIMEOUT_S = 0.2  # the poll thread waits at most this long on an unreachable broker
_COMMITTED_TIMEOUT_S = 5.0  # reading the group's commits on assignment


def commit_offset(topic: str, point: tuple[int, int]) -> TopicPartition:
    """A ledger's commit point as Kafka takes it: the keyframe offset, the done point in its
    metadata (comux/offsets.py)."""
    offset, done = point
    return TopicPartition(topic, 0, offset, metadata=done_metadata(done))


START = ("end", "earliest", "committed")


@dataclass
class ConsumerSettings:
    """What ``setup_consumers`` chose; ``options`` go to librdkafka untouched.

    ``start`` is where a camera starts when it is assigned: the ``"end"`` of its topic (live),
    the ``"earliest"`` offset, or where the group ``"committed"`` last, falling back to the end
    (``end=True``) or the earliest offset when the group has no commit for it.
    """

    bootstrap_servers: str
    end: bool = True
    max_offset_diff: int | None = 20
    strict_on_fail: bool = True
    options: Mapping[str, Any] | None = None
    connect_timeout: float = 10.0
    start: str = "end"
    group_id: str = "comux"
    instance_id: str | None = None
    commit_interval: float = 1.0
    topic_pattern: str | None = None  # a librdkafka regex: cameras found as topics appear

    @property
    def cooperative(self) -> bool:
        """Whether the group hands out partitions incrementally (KIP-848 or cooperative-sticky)."""
        config = self.librdkafka_config()
        return config.get("group.protocol") == "consumer" or "cooperative" in str(
            config.get("partition.assignment.strategy", "")
        )

    def librdkafka_config(self) -> dict[str, Any]:
        defaults: dict[str, Any] = {
            "group.id": self.group_id,
            # Offsets are committed explicitly, from the ledger of delivered results
            # (comux/offsets.py): neither auto-commit nor a stored offset can know when a
            # frame's results were delivered.
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "latest" if self.end else "earliest",
            "topic.metadata.refresh.interval.ms": 10_000,
            "fetch.wait.max.ms": 10,
            # Adding a camera must not stop the others: only the new partitions move.
            "partition.assignment.strategy": "cooperative-sticky",
            # A worker killed with -9 releases its cameras after 6 s (the broker's minimum),
            # not 45; the broker also holds a regrouping after its own restart that long.
            "session.timeout.ms": 6_000,
            "heartbeat.interval.ms": 1_000,
            # librdkafka backs off reconnects up to 10 s: a broker back from a restart would
            # wait that long for its cameras' consumer.
            "reconnect.backoff.max.ms": 1_000,
            "client.id": f"comux-{os.getpid()}",
        }
        if self.instance_id is not None:
            # Static membership: a worker restarted under the same id takes its cameras back
            # at once instead of waiting for the dead member's session to time out.
            defaults["group.instance.id"] = self.instance_id
        config = kafka.config(self.bootstrap_servers, self.options, defaults=defaults)
        if config.get("group.protocol") == "consumer":
            # The broker assigns and times sessions out under KIP-848.
            for key in (
                "partition.assignment.strategy",
                "session.timeout.ms",
                "heartbeat.interval.ms",
            ):
                config.pop(key, None)
        return config

    def __repr__(self) -> str:
        return kafka.describe(
            "ConsumerSettings",
            self.bootstrap_servers,
            self.options,
            start=self.start,
            group_id=self.group_id,
            max_offset_diff=self.max_offset_diff,
        )


class DecodePool:
    """Decode threads that give cameras turns; a camera is never decoded by two at once.

    Cameras are not pinned to a thread: whichever thread is free takes the next camera with
    work, in turn, so a camera that fell behind never waits behind another on a busy thread
    while a second thread idles.
    """

    def __init__(self, threads: int) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()  # a camera's turn state
        self.workers = [DecodeWorker(i, self) for i in range(threads)]

    def schedule(self, camera: Camera) -> None:
        """Give ``camera`` a turn: now if it has none, after its current one if it is running."""
        with self._lock:
            if camera.turn == IDLE:
                camera.turn = QUEUED
                self._queue.put(camera)
            elif camera.turn == RUNNING:
                camera.turn = AGAIN

    def _take(self) -> Camera | None:
        item = self._queue.get()
        if item is _STOP:
            return None
        camera: Camera = item
        with self._lock:
            camera.turn = RUNNING
        return camera

    def _done(self, camera: Camera) -> None:
        with self._lock:
            if camera.turn == AGAIN:
                camera.turn = QUEUED
                self._queue.put(camera)
            else:
                camera.turn = IDLE

    def start(self) -> None:
        for worker in self.workers:
            if not worker.is_alive():
                worker.start()

    def stop(self, deadline: float) -> None:
        for _ in self.workers:
            self._queue.put(_STOP)
        for worker in self.workers:
            if worker.is_alive():
                worker.join(max(0.0, deadline - time.monotonic()))


class DecodeWorker(threading.Thread):
    """One thread of the decode pool."""

    def __init__(self, number: int, pool: DecodePool) -> None:
        super().__init__(name=f"comux-decode-{number}", daemon=True)
        self.pool = pool
        self.crashes = 0

    def run(self) -> None:
        while (camera := self.pool._take()) is not None:
            camera.thread = self
            try:
                camera.run()
            except Exception:  # a bug must not kill the thread serving other cameras
                self.crashes += 1
                log.exception(
                    "camera %s: decoder failed", camera.cam_id, extra={"cam_id": camera.cam_id}
                )
            finally:
                self.pool._done(camera)


class CameraConsumer:
    """Poll every camera topic with one consumer and hand messages to the decode workers."""

    def __init__(
        self,
        settings: ConsumerSettings,
        schema: TopicSchema,
        *,
        decode_threads: int | None = None,
    ) -> None:
        self.settings = settings
        self.schema = schema
        self._consumer = kafka.consumer(
            settings.librdkafka_config(), errors=log, on_commit=self._on_commit
        )
        self._cameras: dict[str, Camera] = {}
        self._next_fetch: dict[tuple[str, int], int] = {}
        threads = decode_threads or os.cpu_count() or 1
        self.decoders = DecodePool(threads)
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="comux-consumer", daemon=True)
        self._subscribed: list[str] = []
        self._subscription_dirty = False
        self._rebalance_since: float | None = None  # set by a subscription change until assigned
        self.unknown_topic_errors = 0
        self.poll_errors = 0
        self.commit_errors = 0
        self.refused_partitions: set[tuple[str, int]] = set()
        # Set by Comux: wait for the results of cameras about to be revoked (bounded).
        self.before_revoke: Callable[[list[Camera]], None] | None = None
        self.commits = True  # False while a transactional producer commits the offsets
        # Set by Comux with ``topic_pattern``: make the camera of a topic the group assigned.
        self.discover: Callable[[str], Camera | None] | None = None
        self._pattern = re.compile(settings.topic_pattern) if settings.topic_pattern else None
        self._subscription_dirty = self._pattern is not None
        self._group_metadata: Any = None
        self._rebalanced = True  # the group metadata is to be read again
        self.broker_seen_at: float | None = None  # monotonic: the broker last answered

    # -- setup -------------------------------------------------------------------------------

    def check(self) -> None:
        settings = self.settings
        kafka.probe(self._consumer, settings.bootstrap_servers, settings.connect_timeout)
        self.broker_seen_at = time.monotonic()

    def end_offset(self, topic: str, partition: int = 0) -> int | None:
        """The partition's end (high watermark) as the last fetch saw it; None when unknown.

        Cached by librdkafka: it asks the broker nothing, so any thread may call it.
        """
        try:
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, partition), cached=True
            )
        except (KafkaException, RuntimeError):  # RuntimeError: the consumer is closed
            return None
        return high if high is not None and high >= 0 else None

    def _probe(self) -> None:
        """Poll thread: ask for one camera topic's metadata, to know the broker still answers.

        Only when nothing else said so lately (messages, commits, a rebalance), and bounded:
        an unreachable broker holds the poll thread for ``_PROBE_TIMEOUT_S`` at most.
        """
        topic = next((camera.topic for camera in list(self._cameras.values())), None)
        if topic is None:
            return
        try:
            kafka.probe(
                self._consumer, self.settings.bootstrap_servers, _PROBE_TIMEOUT_S, topic=topic
            )
        except BrokerUnavailableError:
            return
        self.broker_seen_at = time.monotonic()

    def add(self, camera: Camera) -> None:
        """Give ``camera`` to the decode threads and subscribe to its topic."""
        camera.decoder.max_offset_diff = self.settings.max_offset_diff
        # A backlog asked for (earliest, committed) is read before max_offset_diff applies.
        camera.armed = self.settings.start == "end"
        camera.on_fetch = self._request_resume
        camera.scheduler = self.decoders
        camera.thread = self.decoders.workers[0]
        self._cameras[camera.cam_id] = camera
        self._resubscribe()

    def remove(self, cam_id: str) -> None:
        camera = self._cameras.pop(cam_id, None)
        if camera is not None:
            camera.close()
        self._resubscribe()

    def _resubscribe(self) -> None:
        # Only the poll thread subscribes, reading the set when it does, and never while the
        # previous change is still rebalancing: a burst of changes (all cameras at start, a
        # create with many ids) becomes one rejoin. Overlapping rejoins can leave a pending
        # member on the broker that stalls the whole group until the broker gives up on it.
        self._subscription_dirty = True

    def pause(self, cam_id: str, pause: bool = True, timeout: float = 1.0) -> None:
        """Stop (or restart) fetching ``cam_id``'s partitions for the user (control ``pause``).

        Returns once the poll thread has done it, or after ``timeout``.
        """
        camera = self._cameras.get(cam_id)
        if camera is None:
            return
        camera.user_paused = pause
        done = threading.Event()

        def apply() -> None:
            # Here, not in the caller's thread: an assignment in between would miss it.
            if not pause and camera.assigned and camera.rows.slot < 0 and not camera.closed:
                camera.join_batches()  # with its policy now: update() may have changed it
            self._apply_pause(camera)
            done.set()

        self._commands.put(apply)
        if self._thread.is_alive():
            done.wait(timeout)

    def _request_resume(self, camera: Camera) -> None:
        """Called by a decode worker once the camera's queue has room again."""
        camera.fetch_paused = False
        self._commands.put(lambda: self._apply_pause(camera))

    def _apply_pause(self, camera: Camera) -> None:
        """Pause or resume the camera's partitions as its flags say (poll thread only)."""
        paused = camera.fetch_paused or camera.user_paused
        partitions = [tp for tp in self._consumer.assignment() if tp.topic == camera.topic]
        if not partitions or self._cameras.get(camera.cam_id) is not camera:
            return
        try:
            if paused:
                self._consumer.pause(partitions)
            else:
                self._consumer.resume(partitions)
                # Pausing dropped what librdkafka had prefetched; a seek to the next offset
                # makes it fetch again at once rather than at its next idle wake-up (~1 s).
                # A camera that fell too far behind while paused jumps instead.
                for tp in partitions:
                    self._maybe_jump(camera, tp.partition, camera.decoder.last_offset, fresh=True)
                    offset = self._next_fetch.get((tp.topic, tp.partition))
                    if offset is not None:
                        self._consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
        except KafkaException as exc:
            log.warning("%s %s failed: %s", "pause" if paused else "resume", camera.topic, exc)
            return
        log.debug("%s %s", "paused" if paused else "resumed", camera.topic)

    def _subscribe(self) -> None:
        topics = sorted(camera.topic for camera in list(self._cameras.values()))
        for key in [k for k in self._next_fetch if k[0] not in topics]:
            del self._next_fetch[key]  # a camera created again starts afresh
        if self._pattern is not None:
            # Topics the pattern covers come with it: a discovered camera changes nothing.
            pattern = self.settings.topic_pattern
            topics = [t for t in topics if not self._pattern.match(t)] + [pattern]  # type: ignore[list-item]
        if topics == self._subscribed:
            return
        self._subscribed = topics
        if topics:
            self._rebalance_since = time.monotonic()
            self._consumer.subscribe(
                topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
            )
        else:
            self._consumer.unsubscribe()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._rebalance_since = None
        self.broker_seen_at = time.monotonic()
        self._rebalanced = True
        start = {"end": OFFSET_END, "earliest": OFFSET_BEGINNING, "committed": OFFSET_STORED}[
            self.settings.start
        ]
        taken = []
        known = {camera.topic for camera in list(self._cameras.values())}
        for tp in partitions:
            if tp.topic not in known and self.discover is not None:
                try:
                    self.discover(self.schema.cam_id(tp.topic))
                except Exception:  # a bad name must not stop the assignment
                    log.exception("no camera for topic %s", tp.topic)
            if tp.partition != 0:
                self._refuse(tp)
                continue
            # A partition this process already read (an eager rebalance) resumes where it was.
            tp.offset = self._next_fetch.get((tp.topic, tp.partition), start)
            taken.append(tp)
        self._resume_done(consumer, taken)
        try:
            if self.settings.cooperative:
                consumer.incremental_assign(taken)
            else:
                consumer.assign(taken)
        except KafkaException as exc:  # raising here would kill the poll thread
            log.warning("assignment failed (closing?): %s", exc)
            return
        log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]" for p in taken))
        topics = {tp.topic for tp in taken}
        for camera in list(self._cameras.values()):
            if camera.topic not in topics:
                continue
            camera.assigned, camera.leaving = True, False
            if camera.rows.slot < 0 and not camera.user_paused and not camera.closed:
                camera.join_batches()  # it was revoked earlier: it joins the batches again
            if camera.fetch_paused or camera.user_paused:
                self._apply_pause(camera)

    def _resume_done(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Tell each decoder where the group's commit says results were delivered up to."""
        done = {tp.topic: -1 for tp in partitions}
        stored = [TopicPartition(tp.topic, 0) for tp in partitions if tp.offset == OFFSET_STORED]
        if stored:
            try:
                for tp in consumer.committed(stored, timeout=_COMMITTED_TIMEOUT_S):
                    done[tp.topic] = parse_done(tp.metadata) if tp.error is None else -1
            except KafkaException as exc:
                log.warning(
                    "committed offsets not read (%s): the last partial GOP's results may come "
                    "twice",
                    exc,
                )
        for camera in list(self._cameras.values()):
            if camera.topic in done:
                camera.decoder.done_below = done[camera.topic]

    def _refuse(self, tp: TopicPartition) -> None:
        """A camera is one topic read in order by one process: partitions past 0 are left alone."""
        if (tp.topic, tp.partition) not in self.refused_partitions:
            self.refused_partitions.add((tp.topic, tp.partition))
            log.error(
                "topic %s has more than one partition: comux reads partition 0 only, %d is "
                "not consumed (a camera's packets must stay in order in one partition)",
                tp.topic,
                tp.partition,
            )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Another member takes these cameras: hand in their results and commit, then let go.

        The results already sent are waited for (bounded by ``before_revoke``) so that the
        commit covers them; then the cameras leave the batches and their partitions go.
        """
        self._rebalanced = True
        revoked = self._cameras_of(partitions)
        for camera in revoked:
            camera.leaving = True
        if revoked and self.before_revoke is not None:
            # A transaction's offsets carry the group's generation: the one read at the last
            # assignment is stale by now, and the broker would refuse the commit.
            try:
                self._group_metadata = consumer.consumer_group_metadata()
            except KafkaException as exc:
                log.warning("group metadata not read on revocation: %s", exc)
            self.before_revoke(revoked)
        self._commit(revoked, asynchronous=False)
        self._let_go(consumer, partitions, revoked)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """The session timed out (a broker outage, a stalled process): nothing may be committed.

        The fetch positions are kept: given the cameras back, this process goes on where it
        was, and a camera that fell too far behind jumps, counted, as any other.
        """
        revoked = self._cameras_of(partitions)
        log.warning("lost %d partitions to the group: not committing them", len(partitions))
        self._let_go(consumer, partitions, revoked, forget=False)

    def _cameras_of(self, partitions: list[TopicPartition]) -> list[Camera]:
        topics = {tp.topic for tp in partitions if tp.partition == 0}
        return [c for c in list(self._cameras.values()) if c.topic in topics]

    def _let_go(
        self,
        consumer: Consumer,
        partitions: list[TopicPartition],
        cameras: list[Camera],
        *,
        forget: bool = True,
    ) -> None:
        for camera in cameras:
            camera.leaving = True
            camera.assigned = False
            camera.revoked()
        if forget:  # another member reads them now: a later assignment starts afresh
            for tp in partitions:
                self._next_fetch.pop((tp.topic, tp.partition), None)
        mine = [tp for tp in partitions if tp.partition == 0]
        try:
            if self.settings.cooperative:
                consumer.incremental_unassign(mine)
            else:
                consumer.unassign()
        except KafkaException as exc:
            log.warning("unassign failed: %s", exc)
        if mine:
            log.info("revoked %s", ", ".join(tp.topic for tp in mine))

    def _commit(self, cameras: list[Camera], *, asynchronous: bool = True) -> None:
        """Commit each camera's done offsets (see comux/offsets.py); never one it committed."""
        if not self.commits:
            return
        offsets = []
        for camera in cameras:
            ledger = camera.ledger
            point = ledger.commit_point()
            if point is not None and point != ledger.requested and camera.committable:
                ledger.requested = point
                offsets.append(commit_offset(camera.topic, point))
        if not offsets:
            return
        try:
            if asynchronous:
                self._consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self._on_commit(None, self._consumer.commit(offsets=offsets, asynchronous=False))
        except KafkaException as exc:
            self._on_commit(exc.args[0], offsets)

    def _on_commit(self, err: RdKafkaError | None, partitions: list[TopicPartition]) -> None:
        failed = err is not None and err.code() != RdKafkaError._NO_OFFSET
        if failed:
            self.commit_errors += 1
            log.warning("commit failed: %s", err, extra=COUNT_REPEATS)
        else:
            self.broker_seen_at = time.monotonic()
        for tp in partitions:
            try:
                camera = self._cameras.get(self.schema.cam_id(tp.topic))
            except ValueError:
                continue
            if camera is None:
                continue
            if failed or tp.error is not None:
                camera.ledger.requested = None  # try again at the next round
            else:
                camera.ledger.confirm(tp.offset, parse_done(tp.metadata))

    # -- running -----------------------------------------------------------------------------

    def start(self) -> None:
        self.decoders.start()
        if not self._thread.is_alive():
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop polling and decoding, commit what is done and close, within ``timeout`` seconds.

        librdkafka's close can wait on the group coordinator and on commits for long when the
        brokers are down: it runs in a thread given what is left of ``timeout``.
        """
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        self.decoders.stop(deadline)
        if not self._thread.is_alive():
            kafka.close_within(
                self._consumer, deadline - time.monotonic(), before=self._final_commit, log=log
            )

    def _final_commit(self) -> None:
        self._commit(list(self._cameras.values()), asynchronous=False)

    def group_metadata(self) -> Any:
        """For a transactional producer's ``send_offsets_to_transaction``.

        Read by the poll thread after each rebalance: the client's call blocks while another
        thread is inside ``consume``.
        """
        return self._group_metadata

    def commit(self) -> None:
        """Ask the poll thread to commit every camera's done offsets now (asynchronously)."""
        self._commands.put(lambda: self._commit(list(self._cameras.values())))

    def _run(self) -> None:
        next_lag_check = next_probe = 0.0
        next_commit = time.monotonic() + self.settings.commit_interval
        while not self._stop.is_set():
            while True:
                try:
                    self._commands.get_nowait()()
                except queue.Empty:
                    break
            since = self._rebalance_since
            if self._subscription_dirty and (since is None or time.monotonic() - since > 10):
                self._subscription_dirty = False
                self._subscribe()
            try:
                if self._rebalanced:
                    self._rebalanced = False
                    self._group_metadata = self._consumer.consumer_group_metadata()
                messages = self._consumer.consume(num_messages=256, timeout=0.05)
            except Exception as exc:  # librdkafka raises KafkaError itself from callbacks
                self.poll_errors += 1
                log.error("consume failed: %s", exc, extra=COUNT_REPEATS)
                self._stop.wait(0.1)
                continue
            run: list[Any] = []  # consecutive messages of one partition, routed together
            for msg in messages:
                if msg.error():
                    self._route(run)
                    run = []
                    self._message_error(msg)
                    continue
                if run and (msg.topic() != run[0].topic() or msg.partition() != run[0].partition()):
                    self._route(run)
                    run = []
                run.append(msg)
            self._route(run)
            now = time.monotonic()
            if messages:
                self.broker_seen_at = now
            elif now >= next_probe:
                next_probe = now + _PROBE_S
                seen = self.broker_seen_at
                if seen is None or now - seen > _PROBE_S:
                    self._probe()
            if now >= next_lag_check:
                next_lag_check = now + 0.05
                self._check_lag()
            if now >= next_commit:
                next_commit = now + self.settings.commit_interval
                self._commit(list(self._cameras.values()))

    def _route(self, run: list[Any]) -> None:
        """Hand one partition's consecutive messages to its camera."""
        if not run:
            return
        msg = run[0]
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        key = (topic, partition)
        first = key not in self._next_fetch
        self._next_fetch[key] = run[-1].offset() + 1
        try:
            cam_id = self.schema.cam_id(topic)
        except ValueError:
            return
        camera = self._cameras.get(cam_id)
        if camera is None:
            return
        if first:  # a backlog at start is skipped before any of it is decoded
            self._maybe_jump(camera, partition, max(camera.decoder.last_offset, offset - 1))
        if camera.offer_run(run) and not camera.fetch_paused:
            camera.fetch_paused = True
            self._apply_pause(camera)
            camera.wake()  # its worker may have emptied the queue meanwhile: look again

    def _check_lag(self) -> None:
        """Jump cameras too far behind to near the end; flush those whose topic ended.

        Flushing hands out the frames a decoder holds back for B-frames, which would otherwise
        wait for the next packet; the camera then decodes again from its next keyframe.
        """
        now = time.monotonic()
        for topic, partition in list(self._next_fetch):
            try:
                camera = self._cameras.get(self.schema.cam_id(topic))
            except ValueError:
                continue
            if camera is None:
                continue
            end = self.end_offset(topic, partition)
            if end is not None:
                camera.end_offset = end
            self._maybe_jump(camera, partition, camera.decoder.last_offset)
            if (
                camera.decoder.holds_frames
                and not camera.inbox
                and now - camera.last_packet_at > camera.silent_for()
                and self._at_end(topic, partition, camera.decoder.last_offset)
            ):
                camera.flush_due = True
                camera.wake()

    def _at_end(self, topic: str, partition: int, offset: int) -> bool:
        _, high = self._consumer.get_watermark_offsets(
            TopicPartition(topic, partition), cached=True
        )
        return high is not None and high == offset + 1

    def _maybe_jump(self, camera: Camera, partition: int, done: int, fresh: bool = False) -> None:
        """Seek near the end when the offset decoded last, ``done``, is too far behind.

        A camera started at the earliest offset reads its backlog first: the limit applies
        once it has caught up with the end of its topic.
        """
        decoder, topic = camera.decoder, camera.topic
        limit = decoder.max_offset_diff
        if limit is None or done < decoder.skip_below:
            return  # never jumps, or still catching up with the previous jump
        try:  # cached: what the last fetch said; fresh: ask the broker (a paused partition)
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, partition), cached=not fresh, timeout=1.0
            )
        except KafkaException as exc:
            log.debug("watermarks of %s[%d]: %s", topic, partition, exc)
            return
        if high is None or high < 0:
            return
        if high - 1 - done <= limit:
            camera.armed = True
            return
        if not camera.armed:
            return
        # Keep one GOP (or half the limit while the GOP is unknown) so that a keyframe is
        # likely inside the kept window and decoding resumes at once.
        keep = decoder.gop if 0 < decoder.gop <= limit else max(1, limit // 2)
        target = high - keep
        fetched = self._next_fetch.get((topic, partition), 0)
        if target > fetched:  # the backlog is still in Kafka: do not read it at all
            try:
                self._consumer.seek(TopicPartition(topic, partition, target))
            except KafkaException as exc:
                log.debug("seek %s[%d] failed: %s", topic, partition, exc)
                return
            decoder.stats.lag_unread += target - fetched
            self._next_fetch[(topic, partition)] = target
        decoder.skip_below = target
        log.info(
            "camera %s fell %d behind: jumped to offset %d",
            camera.cam_id,
            high - 1 - done,
            target,
            extra={"cam_id": camera.cam_id},
        )

    def _message_error(self, msg: Any) -> None:
        err = msg.error()
        if err.code() == RdKafkaError._PARTITION_EOF:
            return
        if err.code() == RdKafkaError.UNKNOWN_TOPIC_OR_PART:
            self.unknown_topic_errors += 1
        log.warning("consumer: %s", err, extra=COUNT_REPEATS)
