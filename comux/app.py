"""The front door: ``Comux`` ties consumers, decoders, batches and the producer together."""

from __future__ import annotations

import logging
import operator
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, overload

from .acts import Act, Acts
from .batching import POLICIES, Allocator, Batch, BatchPool, Entry, Policy, frame_writer
from .camera import Camera
from .config import CAM_ID_PATTERN, TopicSchema, resolve_bootstrap_servers
from .consuming import START, CameraConsumer, ConsumerSettings, DecodeWorker, commit_offset
from .control import Control
from .decoding import DecoderConfig, PixFmt
from .errors import ConfigError, KafkaError, StateError, UnknownCameraError, UnknownIndexError
from .logs import configure_logging
from .registry import CameraSync, MongoConnect, sync_cameras
from .results import HeaderValue, ResultProducer

if TYPE_CHECKING:
    from .metrics import MetricsServer

__all__ = ["Comux"]

log = logging.getLogger("comux")

_REVOKE_FLUSH_S = 5.0  # results of revoked cameras waited for, inside the group's rebalance


def _as_index(index: Any) -> int:
    """A frame's index is the Kafka offset of its packet: an int (numpy ints too)."""
    if isinstance(index, bool):
        raise ConfigError(f"index must be an int (a Kafka offset from the batch), got {index!r}")
    try:
        return operator.index(index)
    except TypeError:
        raise ConfigError(
            f"index must be an int (a Kafka offset from the batch), got {index!r} "
            f"({type(index).__name__})"
        ) from None


class Comux:
    """Consume many cameras' encoded video from Kafka and serve their newest frames in batches.

    :param cam_ids: camera ids; each one names a topic through ``consume_schema``.
    :param consume_schema: input topic template holding ``:cam_id``, e.g. ``"raw.:cam_id"``.
    :param produce_schema: output topic template for :meth:`send`, e.g. ``"out.:cam_id"``.
    :param log_level: level of the ``comux`` logger.
    :param log_file: also write the log to this file (rotated at 20 MB, 5 old files kept;
        :func:`comux.logs.configure_logging` sets other sizes).
    :param log_format: ``"text"`` or ``"json"`` (one object per line) for comux's own handlers.
    :param decode_threads: decoder worker threads (default: one per core).

    Example::

        with Comux(["cam1", "cam2"], "raw.:cam_id", "out.:cam_id") as cameras:
            cameras.setup_consumers("127.0.0.1:9092")
            cameras.setup_decoders(rate=10, W=640, H=360)
            cameras.setup_producer("127.0.0.1:9092")
            cameras.start()
            for cam_id, index, frame in cameras.get_batch(timeout=5) or []:
                if frame is not None:
                    cameras.send(cam_id, index, {"people": 3})
    """

    def __init__(
        self,
        cam_ids: Iterable[str],
        consume_schema: str = "raw.:cam_id",
        produce_schema: str = "out.:cam_id",
        log_level: str | int = "ERROR",
        *,
        log_file: str | os.PathLike[str] | None = None,
        log_format: Literal["text", "json"] | None = None,
        decode_threads: int | None = None,
    ) -> None:
        if isinstance(cam_ids, str):
            raise ConfigError("cam_ids must be a list of camera ids, not one string")
        self.cam_ids: list[str] = []
        for cam_id in cam_ids:
            self._check_cam_id(cam_id)
            if cam_id not in self.cam_ids:
                self.cam_ids.append(cam_id)
        self.consume_schema = TopicSchema(consume_schema)
        self.produce_schema = TopicSchema(produce_schema)
        configure_logging(log_level, log_file, fmt=log_format)
        if decode_threads is not None and decode_threads < 1:
            raise ConfigError(f"decode_threads must be >= 1, got {decode_threads!r}")
        self._decode_threads = decode_threads
        self._consumer: CameraConsumer | None = None
        self._producer: ResultProducer | None = None
        self._decoder_config: DecoderConfig | None = None
        self._buffers = 3  # setup_decoders(buffers=...)
        self._cameras: dict[str, Camera] = {}
        self._pool: BatchPool | None = None
        self._policy: Policy | None = None
        self._fifo_depth = 256
        self._fifo_bytes = 4 << 20
        self._paused: set[str] = set()
        self._in_hand: list[tuple[Camera, int]] = []  # the frames of the last batch handed out
        self._batch_observers: tuple[Callable[[Batch, float], None], ...] = ()  # copy on write
        self._last_batch_at: float | None = None  # monotonic: get_batch last handed one out
        self._on_delivery_error: Callable[[str, int, Exception], None] | None = None
        self.control: Control | None = None
        self.registry: MongoConnect | None = None
        self._sync: CameraSync | None = None
        self._sync_stop = threading.Event()
        self._lock = threading.RLock()
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"Comux(cameras={len(self.cam_ids)}, consume={self.consume_schema.template!r}, "
            f"produce={self.produce_schema.template!r}, started={self._started})"
        )

    @classmethod
    def from_mongo(
        cls,
        uri: str,
        database: str,
        collection: str,
        consume_schema: str = "raw.:cam_id",
        produce_schema: str = "out.:cam_id",
        log_level: str | int = "ERROR",
        *,
        query: Mapping[str, Any] | None = None,
        field: str = "cam_id",
        **kwargs: Any,
    ) -> Comux:
        """Build a Comux whose cameras are the ids found in a MongoDB collection.

        The registry stays at ``comux.registry``; :meth:`sync` keeps following it.
        """
        registry = MongoConnect(uri, database, collection, query, field)
        registry.connect()
        comux = cls(registry.ret_cam_ids(), consume_schema, produce_schema, log_level, **kwargs)
        comux.registry = registry
        return comux

    def sync(self, interval: float = 30.0) -> CameraSync:
        """Follow the registry: create and delete cameras as documents come and go."""
        if self.registry is None:
            raise StateError("sync() needs a registry: build with Comux.from_mongo()")
        if self._sync is None or not self._sync.is_alive():
            self._sync_stop.clear()
            self._sync = sync_cameras(self, self.registry, interval, stop=self._sync_stop)
        return self._sync

    # -- names -------------------------------------------------------------------------------

    def get_topic_from_cam_id(self, cam_id: str) -> str:
        return self.consume_schema.topic(cam_id)

    def get_cam_id_from_topic(self, topic: str) -> str:
        return self.consume_schema.cam_id(topic)

    @staticmethod
    def _check_cam_id(cam_id: Any) -> None:
        if not isinstance(cam_id, str) or not cam_id:
            raise ConfigError(f"a cam_id must be a non-empty str, got {cam_id!r}")

    def _known(self, cam_id: str) -> None:
        if cam_id not in self.cam_ids:
            raise UnknownCameraError(cam_id, self.cam_ids)

    # -- setup -------------------------------------------------------------------------------

    def setup_consumers(
        self,
        bootstrap_servers: str | Iterable[str] | None = None,
        end: bool = True,
        max_offset_diff: int | None = 20,
        strict_on_fail: bool = True,
        over_write: bool = False,
        *,
        overwrite: bool | None = None,
        connect_timeout: float = 10.0,
        start: str | None = None,
        group_id: str = "comux",
        instance_id: str | None = None,
        commit_interval: float = 1.0,
        topic_pattern: str | None = None,
        **consumer_options: Any,
    ) -> None:
        """Create the Kafka consumer and check that a broker answers.

        :param bootstrap_servers: list or comma-separated string
            (default: ``$COMUX_BOOTSTRAP_SERVERS``).
        :param end: start from the end of each topic (live); False starts from the earliest offset.
        :param start: ``"end"``, ``"earliest"`` or ``"committed"``: resume each camera where the
            group committed last (after its results were delivered), falling back to the end, or
            to the earliest offset with ``end=False``, when it has no commit. Default: ``end``.
        :param group_id: the Kafka consumer group; processes sharing it share the cameras.
        :param instance_id: a stable name for this worker (static membership): restarted under
            the same name, it takes its cameras back at once instead of after the session
            timeout. Unique per worker.
        :param commit_interval: seconds between commits of done offsets.
        :param topic_pattern: a regex for the cam id part of ``consume_schema``: every topic it
            matches becomes a camera when the group assigns it (found within the metadata
            refresh, 10 s), with no id listed. Plain regex syntax: librdkafka's has no
            ``(?...)`` groups.
        :param max_offset_diff: when a camera falls further behind the end of its topic, jump
            forward to near the end and count the skipped messages; None never jumps.
        :param strict_on_fail: raise BrokerUnavailableError when no broker answers within
            ``connect_timeout`` seconds; otherwise log it and keep retrying in the background.
        :param over_write: replace an existing consumer (``overwrite`` is accepted too).
        :param consumer_options: librdkafka options, passed through untouched.
        """
        if max_offset_diff is not None and max_offset_diff < 1:
            raise ConfigError(f"max_offset_diff must be >= 1 or None, got {max_offset_diff!r}")
        if start is None:
            start = "end" if end else "earliest"
        if start not in START:
            raise ConfigError(f"start must be one of {', '.join(START)}, got {start!r}")
        if not isinstance(group_id, str) or not group_id:
            raise ConfigError(f"group_id must be a non-empty str, got {group_id!r}")
        if not commit_interval > 0:
            raise ConfigError(f"commit_interval must be > 0, got {commit_interval!r}")
        pattern = None
        if topic_pattern is not None:
            try:
                re.compile(topic_pattern)
            except (re.error, TypeError) as exc:
                raise ConfigError(f"topic_pattern is not a regex: {exc}") from None
            pattern = self.consume_schema.pattern(topic_pattern)
        with self._lock:
            replace = over_write if overwrite is None else overwrite
            if self._consumer is not None:
                if not replace:
                    return
                self._consumer.close()
                for camera in self._cameras.values():
                    camera.close()
                self._cameras.clear()
            settings = ConsumerSettings(
                resolve_bootstrap_servers(bootstrap_servers),
                end=end,
                max_offset_diff=max_offset_diff,
                strict_on_fail=strict_on_fail,
                options=consumer_options,
                connect_timeout=connect_timeout,
                start=start,
                group_id=group_id,
                instance_id=instance_id,
                commit_interval=commit_interval,
                topic_pattern=pattern,
            )
            consumer = CameraConsumer(
                settings, self.consume_schema, decode_threads=self._decode_threads
            )
            consumer.before_revoke = self._before_revoke
            consumer.discover = self._discover
            try:
                consumer.check()
            except Exception:
                if strict_on_fail:
                    consumer.close(timeout=1.0)
                    raise
                log.exception("consumers: broker not reachable yet; retrying in the background")
            self._consumer = consumer
            self._wire()
            if self._started:
                self.start()

    def setup_decoders(
        self,
        rate: float | None = 10,
        W: int = 1920,
        H: int = 1080,
        de_codec: str = "h264",
        pix_fmt: PixFmt = "rgb24",
        *,
        policy: Policy | None = None,
        max_wait: float | None = None,
        max_staleness: float | None = None,
        stall_timeout: float | None = None,
        repeat_last: bool = False,
        buffers: int = 3,
        allocator: Allocator | None = None,
        fifo_depth: int = 256,
        fifo_bytes: int = 4 << 20,
    ) -> None:
        """Choose the output frames and how they are batched.

        :param rate: cap on frames per second delivered per camera (None: every frame).
        :param W: output width; frames of another size are scaled.
        :param H: output height.
        :param de_codec: ``"h264"`` or ``"hevc"``.
        :param pix_fmt: ``"rgb24"``, ``"bgr24"``, ``"yuv420p"`` (I420 in an (H*3/2, W) array)
            or ``"gray"``.
        :param policy: ``"latest"`` keeps each camera's newest frame (older ones are counted as
            replaced); ``"fifo"`` hands out every frame once, in order, each in its own batch.
            Default: ``"fifo"`` when a backlog was asked for (``start="earliest"`` or
            ``"committed"``), ``"latest"`` when starting at the end.
        :param max_wait: release a batch this long after its first frame even when some cameras
            have no frame yet (their slots are marked invalid).
        :param stall_timeout: a camera with no new frame for this long stops holding batches
            back until its next frame (default: three of its frame intervals, 0.05 to 1 s).
        :param fifo_depth: packets queued per camera for its decoder before its partition is
            paused (it resumes at half). Deep enough to hide the refetch after a pause.
        :param fifo_bytes: the same bound in bytes (4 MiB), whichever comes first: with
            ``fifo_depth`` it bounds the memory a backlog can take, per camera.
        :param max_staleness: leave a slot empty when its frame is older than this (counted).
        :param repeat_last: fill an empty slot with the camera's previous frame instead.
        :param buffers: preallocated batch buffers; each Batch held by the caller keeps one.
        :param allocator: ``f(shape) -> uint8 memory`` for the buffers, e.g. pinned memory.
        """
        if self._pool is not None:
            raise StateError("setup_decoders() was already called")
        if policy is not None and policy not in POLICIES:
            raise ConfigError(f"policy must be 'latest' or 'fifo', got {policy!r}")
        for name, value in (("fifo_depth", fifo_depth), ("fifo_bytes", fifo_bytes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
        config = DecoderConfig(rate=rate, width=W, height=H, codec=de_codec, pix_fmt=pix_fmt)
        pool = BatchPool(
            config.shape,
            buffers=buffers,
            capacity=max(1, len(self.cam_ids)),
            max_wait=max_wait,
            max_staleness=max_staleness,
            repeat_last=repeat_last,
            allocator=allocator,
            writer=frame_writer(pix_fmt),
            stall_timeout=stall_timeout,
        )
        self._decoder_config = config
        self._buffers = buffers
        self._policy = policy
        self._fifo_depth = fifo_depth
        self._fifo_bytes = fifo_bytes
        self._pool = pool

    def batch_layout(self) -> tuple[tuple[int, ...], int]:
        """The shape of one frame in the batches and how many batch buffers there are: what
        ``setup_decoders`` chose, or its defaults before it is called."""
        return (self._decoder_config or DecoderConfig()).shape, self._buffers

    def _default_policy(self) -> Policy:
        if self._policy is not None:
            return self._policy
        start = self._consumer.settings.start if self._consumer is not None else "end"
        return "latest" if start == "end" else "fifo"

    def setup_producer(
        self,
        bootstrap_servers: str | Iterable[str] | None = None,
        strict_on_fail: bool = True,
        over_write: bool = False,
        *,
        overwrite: bool | None = None,
        connect_timeout: float = 10.0,
        transactional_id: str | None = None,
        on_delivery_error: Callable[[str, int, Exception], None] | None = None,
        **producer_options: Any,
    ) -> None:
        """Create the idempotent producer used by :meth:`send`.

        :param transactional_id: exactly-once: the results of each batch and its input offsets
            are committed in one transaction when the model moves past the batch. Unique per
            worker and stable across its restarts.
        :param on_delivery_error: ``f(cam_id, index, error)`` for each result Kafka did not
            take; it is also counted per camera and its offset is never committed.
        :param producer_options: librdkafka options, passed through untouched.
        """
        with self._lock:
            replace = over_write if overwrite is None else overwrite
            if self._producer is not None:
                if not replace:
                    return
                self._producer.close()
            self._producer = ResultProducer(
                resolve_bootstrap_servers(bootstrap_servers),
                strict_on_fail=strict_on_fail,
                options=producer_options,
                connect_timeout=connect_timeout,
                transactional_id=transactional_id,
            )
            self._on_delivery_error = on_delivery_error
            self._wire()

    def _wire(self) -> None:
        """With a transactional producer the offsets go into its transactions instead."""
        if self._consumer is not None:
            self._consumer.commits = not (self._producer and self._producer.transactional)

    def setup_controller(
        self,
        control_topic: str,
        control_bootstrap_servers: str | Iterable[str] | None = None,
        acts: Mapping[str, Act[Comux]] | None = None,
        **options: Any,
    ) -> Control:
        """Start the control thread on ``control_topic`` (see :class:`comux.control.Control`).

        :param acts: action name → ``f(comux, value)``, added to the built-in ``create``,
            ``delete``, ``update``, ``list``, ``pause`` and ``resume``.
        :param options: ``max_cameras`` (see :class:`comux.acts.Acts`); ``reply_topic``,
            ``instance_id``, ``groups``, ``filter``, ``secret``, ``max_skew``, ``max_payload``,
            ``replay_window``, ``max_reply``, ``connect_timeout``; the rest go to librdkafka.
        """
        dispatch = Acts(self, acts, max_cameras=options.pop("max_cameras", None))
        control = Control(
            control_topic, dispatch, bootstrap_servers=control_bootstrap_servers, **options
        )
        # The old controller is stopped without the lock: its thread may be waiting for it
        # between two steps of a big create, and stop() must not wait on that.
        with self._lock:
            old, self.control = self.control, None
        if old is not None:
            old.stop()
        control.start()
        with self._lock:
            old, self.control = self.control, control
        if old is not None:  # another setup_controller ran meanwhile: the last one wins
            old.stop()
        return control

    # -- cameras -----------------------------------------------------------------------------

    @property
    def consumers(self) -> Mapping[str, CameraConsumer]:
        """The consumer serving each connected camera (one shared consumer per process)."""
        consumer = self._consumer
        return {c: consumer for c in self._cameras} if consumer else {}

    @property
    def assigned(self) -> frozenset[str]:
        """The cameras whose topics the consumer group gave this process now."""
        return frozenset(c for c, camera in list(self._cameras.items()) if camera.assigned)

    @property
    def threads(self) -> Mapping[str, DecodeWorker]:
        """The decode thread of each connected camera's last turn (cameras are not pinned)."""
        return {cam_id: camera.thread for cam_id, camera in self._cameras.items()}

    def connect(self, cam_id: str, overwrite: bool = False) -> None:
        """Subscribe to ``cam_id``'s topic and give it a decoder (adds unknown cameras)."""
        self._check_cam_id(cam_id)
        with self._lock:
            consumer = self._require_consumer()
            if cam_id in self._cameras:
                if not overwrite:
                    return
                self._disconnect(cam_id)
            if cam_id not in self.cam_ids:
                self.cam_ids.append(cam_id)
            if self._pool is None:
                self.setup_decoders()
            assert self._pool is not None and self._decoder_config is not None
            camera = Camera(
                cam_id,
                self.consume_schema.topic(cam_id),
                self._decoder_config,
                self._pool,
                policy=self._default_policy(),
                depth=self._fifo_depth,
                max_bytes=self._fifo_bytes,
            )
            self._cameras[cam_id] = camera
            consumer.add(camera)

    def _discover(self, cam_id: str) -> Camera | None:
        """Poll thread: a topic of ``topic_pattern`` was assigned; its camera joins."""
        if not CAM_ID_PATTERN.fullmatch(cam_id):
            log.warning("topic for %r matches topic_pattern but is no valid cam id", cam_id[:64])
            return None
        self.connect(cam_id)
        log.info("camera %s discovered", cam_id)
        return self._cameras.get(cam_id)

    def connect_all(self) -> None:
        for cam_id in list(self.cam_ids):
            self.connect(cam_id)

    def listen(self, cam_id: str) -> None:
        """Start delivering ``cam_id``'s frames (connects it first when needed)."""
        self._known(cam_id)
        self.connect(cam_id)
        self._require_consumer().start()

    def start(self) -> None:
        """Connect every camera and start the consumer and decoder threads."""
        with self._lock:
            if self._closed:
                raise StateError("this Comux is closed")
            self.connect_all()
            self._require_consumer().start()
            self._started = True

    def kill(self, cam_id: str) -> None:
        """Stop consuming ``cam_id``; it leaves the next batch."""
        with self._lock:
            self._known(cam_id)
            self._disconnect(cam_id)
            self.cam_ids.remove(cam_id)

    def add_cameras(self, cam_ids: Iterable[str]) -> dict[str, list[str]]:
        """Add cameras while running; they join the next batch once their first frame is decoded.

        Every id is checked before any is added. Many ids are added 64 at a time, and the lock
        is let go between steps, so a big create never holds up pause, kill or setup for long.
        """
        ids = list(dict.fromkeys(cam_ids))
        for cam_id in ids:
            self._check_cam_id(cam_id)
        created: list[str] = []
        existing: list[str] = []
        step = 64
        for first in range(0, len(ids), step):
            if first:
                time.sleep(0.001)  # let a thread waiting for the lock have it
            with self._lock:
                if self._closed:
                    raise StateError(f"this Comux closed after {len(created)} cameras were added")
                known = set(self.cam_ids)
                for cam_id in ids[first : first + step]:
                    if cam_id in self._cameras or (not self._started and cam_id in known):
                        existing.append(cam_id)
                        continue
                    if self._started:
                        self.connect(cam_id)
                    elif cam_id not in known:
                        self.cam_ids.append(cam_id)
                        known.add(cam_id)
                    created.append(cam_id)
        return {"created": created, "existing": existing}

    def update(
        self,
        cam_id: str,
        *,
        rate: float | object | None = ...,
        max_offset_diff: int | object | None = ...,
        policy: Policy | object = ...,
    ) -> None:
        """Change one running camera's settings; arguments left out stay as they are.

        Every argument is checked before any is applied: a bad one changes nothing.
        """
        if (
            rate is not ...
            and rate is not None
            and (
                isinstance(rate, bool)
                or not isinstance(rate, int | float)
                or not 0 < rate < float("inf")
            )
        ):
            raise ConfigError(f"rate must be a number > 0 or None, got {rate!r}")
        if (
            max_offset_diff is not ...
            and max_offset_diff is not None
            and (
                isinstance(max_offset_diff, bool)
                or not isinstance(max_offset_diff, int)
                or max_offset_diff < 1
            )
        ):
            raise ConfigError(f"max_offset_diff must be >= 1 or None, got {max_offset_diff!r}")
        if policy is not ... and policy not in POLICIES:
            raise ConfigError(f"policy must be 'latest' or 'fifo', got {policy!r}")
        with self._lock:
            self._known(cam_id)
            camera = self._cameras.get(cam_id)
            if camera is None:
                raise StateError(f"camera {cam_id!r} is not connected: call start() first")
            if rate is not ...:
                camera.decoder.set_rate(rate)
            if max_offset_diff is not ...:
                camera.decoder.max_offset_diff = max_offset_diff
            if policy is not ...:
                camera.set_policy(policy)  # type: ignore[arg-type]

    def pause(self, cam_id: str) -> None:
        """Stop fetching ``cam_id``; its slot leaves the batches until :meth:`resume`."""
        with self._lock:
            self._known(cam_id)
            consumer = self._require_consumer()
            camera = self._cameras.get(cam_id)
            if cam_id in self._paused or camera is None:
                return
            self._paused.add(cam_id)
            consumer.pause(cam_id, True)
            camera.leave_batches()

    def resume(self, cam_id: str) -> None:
        with self._lock:
            self._known(cam_id)
            consumer = self._require_consumer()
            camera = self._cameras.get(cam_id)
            if cam_id not in self._paused or camera is None:
                return
            self._paused.discard(cam_id)
            consumer.pause(cam_id, False)  # it joins the batches again if it is assigned

    def _disconnect(self, cam_id: str) -> None:
        self._paused.discard(cam_id)
        camera = self._cameras.pop(cam_id, None)
        if camera is None:
            return
        if self._consumer is not None:
            self._consumer.remove(cam_id)
        camera.close()

    def _require_consumer(self) -> CameraConsumer:
        if self._consumer is None:
            raise StateError("call setup_consumers() first")
        return self._consumer

    # -- frames ------------------------------------------------------------------------------

    def get(self, cam_id: str, timeout: float | None = None) -> Entry | None:
        """Return ``(cam_id, index, frame or None)`` of the camera's next frame, or None on timeout.

        The frame is a copy, and it leaves the camera's slot of the next batch empty. A camera
        whose partition is not assigned to this process (yet) gives None after ``timeout``.
        """
        self._known(cam_id)
        pool = self._pool
        if pool is None or not self._started:
            raise StateError(f"camera {cam_id!r} is not connected: call start() first")
        deadline = None if timeout is None else time.monotonic() + timeout
        if not pool.wait_joined(cam_id, timeout):
            return None
        self._move_on()
        try:
            entry = pool.take(cam_id, None if deadline is None else deadline - time.monotonic())
        except UnknownCameraError:  # revoked or paused meanwhile
            return None
        camera = self._cameras.get(cam_id)
        if entry is not None and camera is not None:
            self._in_hand = [(camera, entry[1])]
        return entry

    @overload
    def get_batch(
        self, timeout: float | None = ..., *, stacked: Literal[False] = ...
    ) -> list[Entry] | None: ...
    @overload
    def get_batch(self, timeout: float | None = ..., *, stacked: Literal[True]) -> Batch | None: ...

    def get_batch(
        self, timeout: float | None = None, *, stacked: bool = False
    ) -> list[Entry] | Batch | None:
        """Return the newest frame of every running camera, or None when none came in ``timeout``.

        Waits until every camera has a new frame (or ``max_wait`` after the first one). With
        ``stacked=True`` the result is a :class:`Batch`: ``batch.frames`` is one (N, H, W, C)
        array in preallocated memory, shared without a copy (``torch.from_dlpack(batch.frames)``);
        call ``batch.release()`` or use ``with`` when done. Without it, a list of
        ``(cam_id, index, frame or None)`` with frames copied out.

        Calling it again says the model is done with the previous batch (see :meth:`ack`).
        """
        if self._closed:
            raise StateError("this Comux is closed")
        if self._pool is None or not self._started:
            raise StateError("call setup_decoders() and start() first")
        called = time.monotonic()
        self._move_on()
        batch = self._pool.seal(timeout)
        if batch is None:
            return None
        self._last_batch_at = now = time.monotonic()
        for observer in self._batch_observers:
            try:
                observer(batch, now - called)
            except Exception:  # metrics must never cost the model its batch
                log.exception("batch observer failed")
        cameras = self._cameras
        in_hand = [
            (cameras[c], i)
            for c, i in zip(batch.cam_ids, batch.indices.tolist(), strict=True)
            if i >= 0 and c in cameras
        ]
        self._in_hand = in_hand
        batch.on_ack = lambda: self._ack(in_hand)
        if stacked:
            return batch
        with batch:
            return [(c, i, None if f is None else f.copy()) for c, i, f in batch]

    def ack(self, cam_id: str, index: int) -> None:
        """Say the model is done with ``cam_id``'s frame ``index``: once the results sent for it
        are delivered, its input offset may be committed. ``get_batch`` does it for the previous
        batch; call it (or ``batch.ack()``) to commit sooner.
        """
        camera = self._cameras.get(cam_id)
        if camera is None:
            raise UnknownCameraError(cam_id, self.cam_ids)
        camera.ledger.ack(_as_index(index))

    def _ack(self, frames: list[tuple[Camera, int]]) -> None:
        for camera, index in frames:
            camera.ledger.ack(index)

    def _move_on(self) -> None:
        """The model is done with the last batch: ack it, and commit it when transactional."""
        frames, self._in_hand = self._in_hand, []
        self._ack(frames)
        producer = self._producer
        if producer is not None and producer.transactional and frames:
            self._commit_transaction(list(self._cameras.values()))

    def _commit_transaction(self, cameras: list[Camera]) -> None:
        """Exactly-once: the batch's results and the done input offsets in one transaction."""
        producer, consumer = self._producer, self._consumer
        assert producer is not None
        if consumer is None:
            return
        producer.flush(10.0)  # the delivery reports decide which offsets are done
        points = [(c, c.ledger.commit_point()) for c in cameras if c.committable]
        offsets = [commit_offset(c.topic, p) for c, p in points if p is not None]
        if producer.commit_transaction(offsets, consumer.group_metadata()):
            for camera, point in points:
                if point is not None:
                    camera.ledger.confirm(*point)

    def _before_revoke(self, cameras: list[Camera]) -> None:
        """Poll thread, before cameras move to another worker: their results go out first, and
        their frames in the model's hands that have a delivered result are done (a later send
        for them is dropped under exactly-once, delivered untracked otherwise)."""
        producer = self._producer
        if producer is None:
            return
        producer.flush(_REVOKE_FLUSH_S)
        for camera, index in list(self._in_hand):
            if camera in cameras:
                camera.ledger.ack(index, if_delivered=True)
        if producer.transactional:
            # Commit, not abort: the open transaction holds results of the cameras that stay
            # too, whose offsets later transactions commit.
            self._commit_transaction(list(self._cameras.values()))

    def send(
        self, cam_id: str, index: int, headers: Mapping[str, HeaderValue] | None = None
    ) -> None:
        """Produce the original packet of ``index`` to the output topic, with ``headers``.

        Call it before the next ``get_batch``: then the packet's input offset is committed only
        once this result is delivered. Header values: str and bytes as they are, anything else
        as JSON (NaN and infinities as the strings "NaN", "Infinity", "-Infinity"); names
        starting with ``comux-`` are reserved.
        """
        if self._closed:
            raise StateError("this Comux is closed")
        self._known(cam_id)
        index = _as_index(index)
        if self._producer is None:
            raise StateError("call setup_producer() first")
        camera = self._cameras.get(cam_id)
        msg = camera.cache.get(index) if camera is not None else None
        if camera is None or msg is None:
            raise UnknownIndexError(cam_id, index)
        ledger = camera.ledger
        tracked = ledger.sending(index)
        on_error = self._on_delivery_error
        keep: Callable[[], bool] | None = None
        if self._producer.transactional:

            def still_ours() -> bool:
                # Revoked: the next owner reads the frame again (unless the revocation
                # committed a result for it), and its result is the one committed.
                if camera.leaving:
                    camera.revoked_sends += 1
                    return False
                return True

            keep = still_ours

        def delivered(err: Any) -> None:
            if tracked:
                ledger.delivered(index, err is None)
            if err is not None and on_error is not None:
                on_error(cam_id, index, KafkaError(str(err), err.code()))

        try:
            sent = self._producer.send(
                self.produce_schema.topic(cam_id),
                msg,
                headers,
                key=msg.key(),
                on_delivery=delivered,
                keep=keep,
            )
        except Exception:
            if tracked:
                ledger.delivered(index, False)  # never committed past a result not sent
            raise
        if not sent and tracked:
            ledger.delivered(index, None)  # dropped on purpose: nothing to wait for

    def flush(self, timeout: float = 10.0) -> int:
        """Wait for the results sent so far; return how many are still undelivered."""
        if self._producer is None:
            return 0
        return self._producer.flush(timeout)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Counters per camera: packets, frames delivered, errors and every kind of skip."""
        return {cam_id: dict(camera.stats()) for cam_id, camera in list(self._cameras.items())}

    def process_stats(self) -> dict[str, Any]:
        """Counters of the whole process: batches, consumer and producer, and how long ago
        (seconds, None: never) a batch was handed out, the waiting batch's first frame came
        and the broker last answered. Reads counters only: it never waits on a lock."""
        now = time.monotonic()
        pool, consumer, producer = self._pool, self._consumer, self._producer
        cameras = list(self._cameras.values())

        def since(t: float | None) -> float | None:
            return None if t is None else round(max(0.0, now - t), 3)

        return {
            "started": self._started,
            "closed": self._closed,
            "cameras": len(cameras),
            "assigned": sum(1 for camera in cameras if camera.assigned),
            "batches": pool.batches if pool is not None else 0,
            "last_batch_age": since(self._last_batch_at),
            "frames_waiting": since(pool.waiting_since if pool is not None else None),
            "broker_silence": since(consumer.broker_seen_at if consumer is not None else None),
            "poll_errors": consumer.poll_errors if consumer is not None else 0,
            "commit_errors": consumer.commit_errors if consumer is not None else 0,
            "decode_crashes": (
                sum(w.crashes for w in consumer.decoders.workers) if consumer is not None else 0
            ),
            "producer_sent": producer.sent if producer is not None else 0,
            "producer_delivered": producer.delivered if producer is not None else 0,
            "producer_failed": producer.failed if producer is not None else 0,
            "producer_queued": producer.queued if producer is not None else 0,
        }

    def observe_batches(self, observer: Callable[[Batch, float], None]) -> Callable[[], None]:
        """Call ``observer(batch, seconds waited)`` in ``get_batch`` for every batch handed out,
        before the caller sees it; return a function that stops it. Keep it quick."""
        self._batch_observers = (*self._batch_observers, observer)

        def stop() -> None:
            self._batch_observers = tuple(o for o in self._batch_observers if o is not observer)

        return stop

    def serve_metrics(self, port: int, host: str = "127.0.0.1", **options: Any) -> MetricsServer:
        """Serve ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz`` on ``host:port`` from a
        daemon thread (see :class:`comux.metrics.MetricsServer`); ``close()`` it when done."""
        from .metrics import MetricsServer

        return MetricsServer(self, port, host, **options)

    # -- lifetime ----------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> int:
        """Stop every thread, deliver the results sent, commit what is done and close the
        clients, all within ``timeout``; return how many results could not be delivered.

        The batch in the model's hands when it closes is not done: its offsets stay
        uncommitted and a restart with ``start="committed"`` reads it again.
        """
        deadline = time.monotonic() + timeout
        # Never wait on another thread's setup for long: closing must work from any thread.
        locked = self._lock.acquire(timeout=timeout / 10)
        undelivered = 0
        try:
            if self._closed:
                return 0
            self._closed = True
            self._sync_stop.set()
            if self._pool is not None:
                self._pool.close()
            if self.registry is not None:
                self.registry.close()
            if self.control is not None:
                self.control.stop(timeout / 5)
            if self._producer is not None:
                # Deliveries first: the consumer's last commit counts only delivered results.
                self._producer.flush(max(0.0, (deadline - time.monotonic()) / 3))
            if self._consumer is not None:
                self._consumer.close(max(0.0, (deadline - time.monotonic()) * 2 / 3))
            if self._producer is not None:
                undelivered = self._producer.close(max(0.0, deadline - time.monotonic()))
        finally:
            if locked:
                self._lock.release()
        return undelivered

    def __enter__(self) -> Comux:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
