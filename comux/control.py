"""The control topic as a transport: messages in, actions dispatched, replies out.

A message's key names the action, its value is a JSON object. :class:`Control` reads the
topic in its own thread, checks each message (target, size, signature, nonce, JSON) and hands
``(action, value)`` to its ``dispatch``, usually a :class:`comux.acts.Acts` that knows what the
actions do; this module knows nothing of cameras. A reply (action, request id, ok or error,
result or error text) goes to ``<topic>.replies`` for every message meant for this instance,
including refused ones. A dispatch that returns :class:`NoSuchAction` is answered with the
error ``✘ No action '<name>' defined!``.

Where an instance starts reading: the consumer group is per instance
(``comux-control.<instance_id>``) and commits after each message, so a restarted controller
resumes after the last message it handled: old actions are never applied again. An instance
that has never committed (its first start under this ``instance_id``) starts at the first
message of the last ``replay_window`` seconds (by message timestamp, 300 s by default), so an
action sent shortly before it first came up is applied, and older history is not. With
``replay_window=0`` it starts at the end of the topic. Signed messages older than ``max_skew``
are still refused as stale.

Signed messages (``secret``) must carry a ``comux-request-id``, the nonce: it is part of the
signed bytes, and each nonce is remembered for twice ``max_skew`` (every timestamp that still
passes the skew check), so a replay is answered as a duplicate and never applied again.

Replies larger than ``max_reply`` bytes (librdkafka refuses messages over 1,000,000 bytes by
default) are cut down, never dropped: a ``list`` keeps as many cameras' stats as fit and says
``"truncated": true, "total": N``; another result is replaced by
``{"truncated": true, "bytes": size}``. A reply that still fails is logged and counted in
``counters["reply_errors"]``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from . import kafka
from .config import resolve_bootstrap_servers
from .errors import ComuxTimeoutError, ConfigError, KafkaError
from .logs import COUNT_REPEATS

__all__ = [
    "MAX_REPLY",
    "REQUEST_ID_HEADER",
    "SIGNATURE_HEADER",
    "TARGET_HEADER",
    "TIMESTAMP_HEADER",
    "Control",
    "Dispatch",
    "NoSuchAction",
    "sign",
]

log = logging.getLogger("comux.control")

REQUEST_ID_HEADER = "comux-request-id"
TARGET_HEADER = "comux-target"
SIGNATURE_HEADER = "comux-signature"
TIMESTAMP_HEADER = "comux-timestamp"
MAX_REPLY = 900_000  # bytes: under librdkafka's default message.max.bytes of 1,000,000
_MAX_NONCES = 100_000  # signed requests remembered at once (about 20 MB)
_REMEMBERED_REPLIES = 1024
_REMEMBERED_BYTES = 64 * 1024  # a bigger reply is remembered as its size only
_REPLY_WAIT_S = 1.0  # a full reply queue is waited on this long, then the reply is given up


@dataclass(frozen=True)
class NoSuchAction:
    """What a dispatch returns for an action it has no act for: answered as an error."""

    action: str

    def __str__(self) -> str:
        return f"✘ No action '{self.action}' defined!"


Dispatch = Callable[[str, Any], Any]
"""``dispatch(action, value)``: the reply's result, :class:`NoSuchAction`, or an exception
whose type and text become the error reply."""


def _signed_bytes(
    action: str, value: bytes, timestamp: str, target: str | None, request_id: str | None
) -> bytes:
    head = "\n".join([timestamp, action, target or "", request_id or ""])
    return head.encode() + b"\n" + value


def sign(
    secret: str | bytes,
    action: str,
    value: bytes,
    *,
    timestamp: float | None = None,
    target: str | None = None,
    request_id: str | None = None,
) -> list[tuple[str, bytes]]:
    """Return the headers that sign a control message (for senders; the CLI uses it too).

    The HMAC-SHA256 covers the timestamp, the action (key), the target and request id headers
    and the value, so none of them can be changed without the secret. The request id is the
    nonce that makes a replay inside ``max_skew`` a duplicate: a fresh uuid4 when none is given.
    """
    key = secret.encode() if isinstance(secret, str) else secret
    when = time.time() if timestamp is None else timestamp
    if not math.isfinite(when):
        raise ValueError(f"timestamp must be a finite number of seconds, got {timestamp!r}")
    stamp = f"{when:.3f}"
    request_id = request_id or uuid.uuid4().hex
    digest = hmac.new(key, _signed_bytes(action, value, stamp, target, request_id), hashlib.sha256)
    headers = [(SIGNATURE_HEADER, digest.hexdigest().encode()), (TIMESTAMP_HEADER, stamp.encode())]
    if target is not None:
        headers.append((TARGET_HEADER, target.encode()))
    headers.append((REQUEST_ID_HEADER, request_id.encode()))
    return headers


class Control:
    """Consume the control topic in a daemon thread and hand each action to ``dispatch``.

    The constructor only checks its arguments: :meth:`connect` creates the clients (and the
    topics when missing), :meth:`start` connects if need be and starts the thread, :meth:`stop`
    ends it. ``Comux.setup_controller`` does all of it.

    :param topic: the control topic.
    :param dispatch: ``f(action, value)``, usually a :class:`comux.acts.Acts`: returns the
        reply's result, or :class:`NoSuchAction`; an exception becomes an error reply.
    :param bootstrap_servers: the control broker (default ``$COMUX_BOOTSTRAP_SERVERS``).
    :param reply_topic: where replies go (default ``<topic>.replies``).
    :param instance_id: this process's name for ``comux-target`` (default: the host name).
    :param groups: further names this instance answers to in ``comux-target``.
    :param filter: ``f(action, value, headers) -> bool``; False ignores the message (counted).
    :param secret: HMAC-SHA256 key; when set, unsigned, badly signed or stale messages, and
        signed ones without a ``comux-request-id`` (the nonce), are refused; a nonce seen in
        the last ``2 * max_skew`` seconds is answered as a duplicate and not applied again.
    :param max_skew: seconds a signed message's timestamp may differ from this clock.
    :param max_payload: largest accepted value in bytes.
    :param replay_window: seconds of the topic's history that an instance with no committed
        offset (its first start under ``instance_id``) reads, by message timestamp, so an
        action sent shortly before it came up is applied; 0 starts at the end of the topic.
    :param max_reply: replies over this many bytes are truncated, with a marker saying so.
    :param connect_timeout: seconds to wait for the broker in :meth:`connect`.
    :param consumer_options: librdkafka options of the control consumer, passed untouched.

    Example::

        control = Control("comux.control", Acts(comux), bootstrap_servers="127.0.0.1:9092")
        control.start()
        ...
        control.stop()
    """

    def __init__(
        self,
        topic: str,
        dispatch: Dispatch,
        *,
        bootstrap_servers: str | Iterable[str] | None = None,
        reply_topic: str | None = None,
        instance_id: str | None = None,
        groups: Iterable[str] = (),
        filter: Callable[[str, Any, Mapping[str, bytes]], bool] | None = None,
        secret: str | bytes | None = None,
        max_skew: float = 30.0,
        max_payload: int = 64 * 1024,
        replay_window: float = 300.0,
        max_reply: int = MAX_REPLY,
        connect_timeout: float = 10.0,
        **consumer_options: Any,
    ) -> None:
        if not isinstance(topic, str) or not topic:
            raise ConfigError(f"control topic must be a non-empty str, got {topic!r}")
        if not callable(dispatch):
            raise ConfigError(f"dispatch must be callable, got {dispatch!r}")
        if not isinstance(replay_window, int | float) or not replay_window >= 0:
            raise ConfigError(f"replay_window must be >= 0 seconds, got {replay_window!r}")
        if not isinstance(max_reply, int) or max_reply < 1024:
            raise ConfigError(f"max_reply must be an int >= 1024 bytes, got {max_reply!r}")
        if not isinstance(max_skew, int | float) or not 0 < max_skew < math.inf:
            raise ConfigError(f"max_skew must be a finite number of seconds > 0, got {max_skew!r}")
        self.topic = topic
        self.reply_topic = reply_topic or f"{topic}.replies"
        self.dispatch = dispatch
        self.bootstrap_servers = resolve_bootstrap_servers(bootstrap_servers)
        self.instance_id = instance_id or socket.gethostname()
        self.names = {self.instance_id, *groups}
        self.filter = filter
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self.max_skew = max_skew
        self.max_payload = max_payload
        self.replay_window = replay_window
        self.max_reply = max_reply
        self.counters = {
            "applied": 0,
            "errors": 0,
            "ignored": 0,
            "duplicates": 0,
            "rejected": 0,
            "reply_errors": 0,
            "truncated": 0,
        }
        self._replies: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._nonces: OrderedDict[str, float] = OrderedDict()  # nonce -> forget after (monotonic)
        self._close_lock = threading.Lock()
        self._finished = False  # the thread has left its loop
        self._abandoned = False  # stop() gave up waiting: the thread closes its consumer itself
        self._offset: int | None = None
        self._stop = threading.Event()
        self.ready = threading.Event()  # set once the control partition is assigned
        self._thread: threading.Thread | None = None
        self._consumer: Any = None  # set by connect()
        self._producer: Any = None
        self._consumer_options = consumer_options
        self._connect_timeout = connect_timeout

    def __repr__(self) -> str:
        return kafka.describe(
            "Control",
            self.bootstrap_servers,
            self._consumer_options,
            topic=self.topic,
            instance_id=self.instance_id,
            signed=self._secret is not None,
        )

    # -- connecting, starting, stopping ----------------------------------------------------

    def connect(self) -> None:
        """Create the consumer and the reply producer, and subscribe; raise if no broker answers.

        The control and reply topics are created when missing, so no early message is missed.
        """
        if self._consumer is not None:
            return
        servers = self.bootstrap_servers
        defaults = {
            "group.id": f"comux-control.{self.instance_id}",
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
            "topic.metadata.refresh.interval.ms": 10_000,
        }
        consumer = kafka.consumer(
            kafka.config(servers, self._consumer_options, defaults=defaults), errors=log
        )
        try:
            kafka.probe(consumer, servers, self._connect_timeout)
            producer = kafka.producer(kafka.config(servers, defaults={"linger.ms": 0}), errors=log)
            self._ensure_topics(servers)
            consumer.subscribe([self.topic], on_assign=self._on_assign)
        except BaseException:
            kafka.close_within(consumer, 1.0, log=log)
            raise
        self._consumer, self._producer = consumer, producer

    def _ensure_topics(self, servers: str) -> None:
        """Create the control and reply topics when missing."""
        admin = kafka.admin(kafka.config(servers))
        existing = admin.list_topics(timeout=self._connect_timeout).topics
        missing = [t for t in (self.topic, self.reply_topic) if t not in existing]
        if not missing:
            return
        futures = admin.create_topics([NewTopic(t, 1) for t in missing])
        for topic, future in futures.items():
            try:
                future.result(self._connect_timeout)
            except KafkaException as exc:
                if exc.args[0].code() != RdKafkaError.TOPIC_ALREADY_EXISTS:
                    log.warning("could not create %s: %s", topic, exc)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Start at the committed offset, else ``replay_window`` back; then say we listen."""
        deadline = time.monotonic() + self._connect_timeout
        while True:
            try:
                committed = consumer.committed(partitions, timeout=self._connect_timeout)
                for tp, done in zip(partitions, committed, strict=True):
                    tp.offset = done.offset if done.offset >= 0 else self._first_offset(tp)
                consumer.assign(partitions)
                break
            except KafkaException as exc:  # raising here would kill the control thread
                if time.monotonic() > deadline or self._stop.is_set():
                    log.error("control assignment failed: %s", exc)
                    return
                # A topic created a moment ago may not have a leader yet.
                self._stop.wait(0.1)
        self.ready.set()

    def _first_offset(self, tp: TopicPartition) -> int:
        """Where an instance that never committed starts: the first message of the last
        ``replay_window`` seconds (by timestamp), else the end of the partition."""
        timeout = self._connect_timeout
        if self.replay_window > 0:
            since = int((time.time() - self.replay_window) * 1000)
            found = self._consumer.offsets_for_times(
                [TopicPartition(tp.topic, tp.partition, since)], timeout=timeout
            )
            if found and found[0].offset >= 0:
                return int(found[0].offset)
        _, high = self._consumer.get_watermark_offsets(tp, timeout=timeout)
        return int(high)

    def start(self) -> None:
        """Connect (when not yet) and listen in a daemon thread."""
        self.connect()
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._listen, name="comux-control", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the control thread; consuming control messages stops with it.

        A thread still inside an action after ``timeout / 2`` finishes it, replies, and then
        closes its consumer itself, so ``stop`` never waits on a long action.
        """
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout / 2)
        with self._close_lock:
            finished = self._thread is None or self._finished
            self._abandoned = not finished
        if finished and self._consumer is not None:
            kafka.close_within(self._consumer, (deadline - time.monotonic()) / 2, log=log)
        if self._producer is not None:
            self._producer.flush(max(0.0, deadline - time.monotonic()))

    kill = stop
    """The original name of :meth:`stop` (``Comux.kill`` removes a camera instead)."""

    @property
    def offset(self) -> int | None:
        """Offset of the last control message handled."""
        return self._offset

    @property
    def topic_last_offset(self) -> int | None:
        """Offset of the newest message in the control topic, or None when unknown."""
        if self._consumer is None:
            return None
        try:
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.topic, 0), timeout=5.0
            )
        except KafkaException:
            return None
        return high - 1 if high > 0 else None

    # -- the loop ----------------------------------------------------------------------------

    def _listen(self) -> None:
        try:
            self._loop()
        finally:
            with self._close_lock:
                self._finished = True
                abandoned = self._abandoned
            if abandoned:  # stop() returned while an action ran: close what it could not
                kafka.close_within(self._consumer, self._connect_timeout, log=log)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self._consumer.poll(0.1)
                self._producer.poll(0)  # delivery reports of the replies
            except Exception as exc:
                log.error("control consumer: %s", exc, extra=COUNT_REPEATS)
                self._stop.wait(0.5)
                continue
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() != RdKafkaError._PARTITION_EOF:
                    log.warning("control consumer: %s", err, extra=COUNT_REPEATS)
                continue
            try:
                self._handle(msg)
            except Exception:  # the controller outlives any one message
                self.counters["errors"] += 1
                log.exception("control message at offset %d", msg.offset())
            self._offset = msg.offset()
            try:
                self._consumer.commit(message=msg, asynchronous=False)
            except KafkaException as exc:
                log.warning("control commit failed: %s", exc, extra=COUNT_REPEATS)

    def _handle(self, msg: Any) -> None:
        headers: dict[str, bytes] = {}
        for name, raw in msg.headers() or ():
            headers[name] = raw or b""
        target = headers.get(TARGET_HEADER, b"").decode(errors="replace") or None
        if target is not None and target not in self.names:
            self.counters["ignored"] += 1
            return
        key = msg.key()
        action = key.decode(errors="replace") if key else ""
        value = msg.value() or b""
        request_id = headers.get(REQUEST_ID_HEADER, b"").decode(errors="replace") or None

        def refuse(reason: str) -> None:
            self.counters["rejected"] += 1
            log.warning("control: refused %r: %s", action[:64], reason)
            body = {"status": "error", "error": reason}
            if request_id is not None and request_id in self._nonces:
                self._remember(request_id, body)  # a replay of it gets the same answer
            self._reply(action, request_id, body)

        if not action:
            return refuse("no action: the message key names the action")
        if len(value) > self.max_payload:
            return refuse(f"payload of {len(value)} bytes exceeds {self.max_payload}")
        if self._secret is not None:
            problem = self._check_signature(action, value, headers, target, request_id)
            if problem:
                return refuse(problem)
            assert request_id is not None  # _check_signature requires the nonce
            if self._seen_nonce(request_id):
                return self._duplicate(action, request_id)
            problem = self._note_nonce(request_id)
            if problem:
                return refuse(problem)
        try:
            payload = json.loads(value.decode("utf-8")) if value.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return refuse(f"payload is not UTF-8 JSON: {exc}")
        if request_id is None and isinstance(payload, Mapping) and "id" in payload:
            request_id = str(payload["id"])
        if self.filter is not None and not self.filter(action, payload, headers):
            self.counters["ignored"] += 1
            return
        if request_id is not None and request_id in self._replies:
            return self._duplicate(action, request_id)
        reply: dict[str, Any]
        try:
            result = self.dispatch(action, payload)
        except Exception as exc:
            self.counters["errors"] += 1
            reply = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        else:
            if isinstance(result, NoSuchAction):
                self.counters["errors"] += 1
                reply = {"status": "error", "error": str(result)}
            else:
                self.counters["applied"] += 1
                reply = {"status": "ok", "result": result}
        size = self._reply(action, request_id, reply)
        if request_id is not None:
            if size > _REMEMBERED_BYTES:  # 1024 lists of 1,000 cameras would take a GB
                reply = {"status": reply["status"], "result": {"truncated": True, "bytes": size}}
            self._remember(request_id, reply)

    def _duplicate(self, action: str, request_id: str) -> None:
        """Answer a request seen before with its first answer, marked; apply nothing."""
        self.counters["duplicates"] += 1
        first = self._replies.get(request_id) or {
            "status": "error",
            "error": f"request {request_id[:64]!r} was handled already (its reply is forgotten)",
        }
        self._reply(action, request_id, {**first, "duplicate": True})

    def _check_signature(
        self,
        action: str,
        value: bytes,
        headers: Mapping[str, bytes],
        target: str | None,
        request_id: str | None,
    ) -> str | None:
        assert self._secret is not None
        signature = headers.get(SIGNATURE_HEADER)
        stamp = headers.get(TIMESTAMP_HEADER, b"").decode(errors="replace")
        if not signature or not stamp:
            return "unsigned message: comux-signature and comux-timestamp are required"
        try:
            sent = float(stamp)
        except ValueError:
            return "bad comux-timestamp: not a number"
        if not math.isfinite(sent):  # NaN is never "stale": it must not pass as fresh
            return f"bad comux-timestamp: {stamp[:16]!r} is not a finite number of seconds"
        expected = hmac.new(
            self._secret, _signed_bytes(action, value, stamp, target, request_id), hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(expected.encode(), signature):
            return "bad signature"
        age = abs(time.time() - sent)
        if age > self.max_skew:
            return f"stale message: timestamp {age:.0f} s away from now (max {self.max_skew:g})"
        if request_id is None:
            return "signed messages need a comux-request-id header, the nonce (sign() adds one)"
        return None

    def _seen_nonce(self, nonce: str) -> bool:
        self._forget_nonces()
        return nonce in self._nonces

    def _note_nonce(self, nonce: str) -> str | None:
        """Remember ``nonce`` while its timestamp can pass the skew check; refuse when full."""
        if len(self._nonces) >= _MAX_NONCES:
            return (
                f"more than {_MAX_NONCES} signed requests within {2 * self.max_skew:g} s; "
                "retry later"
            )
        # A timestamp up to max_skew ahead stays fresh until max_skew after it: 2 * max_skew.
        self._nonces[nonce] = time.monotonic() + 2 * self.max_skew
        return None

    def _forget_nonces(self) -> None:
        now = time.monotonic()
        while self._nonces and next(iter(self._nonces.values())) < now:
            self._nonces.popitem(last=False)

    def _remember(self, request_id: str, reply: dict[str, Any]) -> None:
        self._replies[request_id] = reply
        while len(self._replies) > _REMEMBERED_REPLIES:
            self._replies.popitem(last=False)

    # -- replies -----------------------------------------------------------------------------

    def _encode(self, reply: dict[str, Any]) -> bytes:
        """The reply as JSON of at most ``max_reply`` bytes: cut down, with a marker, if need be."""
        data = json.dumps(reply, default=str).encode()
        if len(data) <= self.max_reply:
            return data
        self.counters["truncated"] += 1
        size = len(data)
        result = reply.get("result")
        if (
            isinstance(result, Mapping)
            and isinstance(result.get("cam_ids"), list)
            and isinstance(result.get("stats"), Mapping)
        ):
            fitted = self._fit_cameras(reply, result)
            if fitted is not None:
                return fitted
        small = dict(reply, truncated=True)
        if "result" in small:
            small["result"] = {"truncated": True, "bytes": size}
        if "error" in small:
            small["error"] = str(small["error"])[:4096]
        data = json.dumps(small, default=str).encode()
        if len(data) <= self.max_reply:
            return data
        # Only the request id can be this big now: keep what names the reply.
        keep = {k: reply.get(k) for k in ("action", "instance", "status")}
        return json.dumps({**keep, "id": None, "truncated": True, "bytes": size}).encode()

    def _fit_cameras(self, reply: dict[str, Any], result: Mapping[str, Any]) -> bytes | None:
        """A ``list``-shaped result with as many cameras' stats as fit (every id if they fit)."""
        ids, stats = list(result["cam_ids"]), result["stats"]
        names = list(stats)

        def encode(kept: int, all_ids: bool) -> bytes:
            cut = {
                **result,
                "cam_ids": ids if all_ids else ids[:kept],
                "stats": {name: stats[name] for name in names[:kept]},
                "truncated": True,
                "total": len(ids),
            }
            return json.dumps({**reply, "result": cut}, default=str).encode()

        all_ids = len(encode(0, True)) <= self.max_reply
        if not all_ids and len(encode(0, False)) > self.max_reply:
            return None
        low, high = 0, len(names)  # encode(low) fits; find the most that do
        while low < high:
            middle = (low + high + 1) // 2
            if len(encode(middle, all_ids)) <= self.max_reply:
                low = middle
            else:
                high = middle - 1
        return encode(low, all_ids)

    def _reply(self, action: str, request_id: str | None, body: dict[str, Any]) -> int:
        """Produce the reply; return its size in bytes."""
        reply = {"action": action[:128], "id": request_id, "instance": self.instance_id, **body}
        data = self._encode(reply)
        headers: list[tuple[str, str | bytes | None]] = (
            [(REQUEST_ID_HEADER, request_id.encode()[:4096])] if request_id else []
        )
        try:
            kafka.produce_waiting(
                self._producer,
                self.reply_topic,
                data,
                action[:128].encode() or None,
                headers=headers,
                on_delivery=self._delivered,
                timeout=_REPLY_WAIT_S,
            )
            self._producer.poll(0)
        except (ComuxTimeoutError, KafkaError) as exc:
            self.counters["reply_errors"] += 1
            log.error("control reply to %s failed: %s", self.reply_topic, exc)
        return len(data)

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.counters["reply_errors"] += 1
            log.error("control reply to %s not delivered: %s", self.reply_topic, err)
