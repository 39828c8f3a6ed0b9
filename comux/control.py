"""The control topic: actions that change a running Comux, each answered on a reply topic.

A message's key names the action, its value is a JSON object. Only registered acts run. A reply
(action, request id, ok or error, result or error text) goes to ``<topic>.replies`` for every
message meant for this instance, including refused ones. The consumer group is per instance
(``comux-control.<instance_id>``) and commits after each message, so a restarted controller
resumes after the last message it handled, or at the end of the topic when it has no
committed offset: old actions are never applied again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from .config import redact, resolve_bootstrap_servers
from .consuming import check_broker, close_within
from .errors import ConfigError

if TYPE_CHECKING:
    from .app import Comux

__all__ = [
    "Control",
    "Act",
    "BUILTIN_ACTS",
    "sign",
    "REQUEST_ID_HEADER",
    "TARGET_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "CAM_ID_PATTERN",
]

log = logging.getLogger("comux.control")

Act = Callable[["Comux", Any], Any]

REQUEST_ID_HEADER = "comux-request-id"
TARGET_HEADER = "comux-target"
SIGNATURE_HEADER = "comux-signature"
TIMESTAMP_HEADER = "comux-timestamp"
# Topic-safe and log-safe: a cam id becomes part of a Kafka topic name.
CAM_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_UPDATE_FIELDS = {"rate", "max_offset_diff", "policy"}


class ActionError(Exception):
    """An act refused its payload; the text goes into the error reply."""


def _cam_ids(value: Any) -> list[str]:
    if not isinstance(value, Mapping) or "cam_ids" not in value:
        raise ActionError('expected {"cam_ids": [...]}')
    ids = value["cam_ids"]
    if not isinstance(ids, list) or not ids:
        raise ActionError("cam_ids must be a non-empty list")
    for cam_id in ids:
        if not isinstance(cam_id, str) or not CAM_ID_PATTERN.fullmatch(cam_id):
            raise ActionError(
                f"invalid cam id {str(cam_id)[:40]!r}: use 1-128 letters, digits, '.', '_', '-'"
            )
    return list(dict.fromkeys(ids))


def _create(comux: Comux, value: Any) -> dict[str, Any]:
    ids = _cam_ids(value)
    return comux.add_cameras(ids)


def _delete(comux: Comux, value: Any) -> dict[str, Any]:
    ids = _cam_ids(value)
    deleted, unknown = [], []
    for cam_id in ids:
        if cam_id in comux.cam_ids:
            comux.kill(cam_id)
            deleted.append(cam_id)
        else:
            unknown.append(cam_id)
    return {"deleted": deleted, "unknown": unknown}


def _update(comux: Comux, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ActionError("expected a JSON object")
    settings = {k: v for k, v in value.items() if k != "cam_ids" and k != "id"}
    unknown = set(settings) - _UPDATE_FIELDS
    if unknown or not settings:
        raise ActionError(f"update takes {sorted(_UPDATE_FIELDS)}, got {sorted(settings)}")
    ids = _cam_ids(value) if "cam_ids" in value else list(comux.cam_ids)
    for cam_id in ids:
        comux.update(cam_id, **settings)
    return {"updated": ids, "settings": settings}


def _list(comux: Comux, value: Any) -> dict[str, Any]:
    return {"cam_ids": list(comux.cam_ids), "stats": comux.stats()}


def _pause(comux: Comux, value: Any) -> dict[str, Any]:
    ids = _cam_ids(value)
    for cam_id in ids:
        comux.pause(cam_id)
    return {"paused": ids}


def _resume(comux: Comux, value: Any) -> dict[str, Any]:
    ids = _cam_ids(value)
    for cam_id in ids:
        comux.resume(cam_id)
    return {"resumed": ids}


BUILTIN_ACTS: dict[str, Act] = {
    "create": _create,
    "delete": _delete,
    "update": _update,
    "list": _list,
    "pause": _pause,
    "resume": _resume,
}


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
    and the value, so none of them can be changed or replayed later without the secret.
    """
    key = secret.encode() if isinstance(secret, str) else secret
    stamp = f"{time.time() if timestamp is None else timestamp:.3f}"
    digest = hmac.new(key, _signed_bytes(action, value, stamp, target, request_id), hashlib.sha256)
    headers = [(SIGNATURE_HEADER, digest.hexdigest().encode()), (TIMESTAMP_HEADER, stamp.encode())]
    if target is not None:
        headers.append((TARGET_HEADER, target.encode()))
    if request_id is not None:
        headers.append((REQUEST_ID_HEADER, request_id.encode()))
    return headers


class Control:
    """Consume the control topic in a daemon thread and apply its actions to ``comux``.

    :param topic: the control topic.
    :param bootstrap_servers: the control broker (default ``$COMUX_BOOTSTRAP_SERVERS``).
    :param acts: action name → ``f(comux, value)``; added to (and overriding) the built-in
        ``create``, ``delete``, ``update``, ``list``, ``pause`` and ``resume``.
    :param comux: the instance to control.
    :param reply_topic: where replies go (default ``<topic>.replies``).
    :param instance_id: this process's name for ``comux-target`` (default: the host name).
    :param groups: further names this instance answers to in ``comux-target``.
    :param filter: ``f(action, value, headers) -> bool``; False ignores the message (counted).
    :param secret: HMAC-SHA256 key; when set, unsigned, badly signed or stale messages are refused.
    :param max_skew: seconds a signed message's timestamp may differ from this clock.
    :param max_payload: largest accepted value in bytes.
    :param max_cameras: ``create`` refuses to go past this many cameras.
    """

    def __init__(
        self,
        topic: str,
        bootstrap_servers: str | Iterable[str] | None,
        acts: Mapping[str, Act] | None,
        comux: Comux,
        *,
        reply_topic: str | None = None,
        instance_id: str | None = None,
        groups: Iterable[str] = (),
        filter: Callable[[str, Any, Mapping[str, bytes]], bool] | None = None,
        secret: str | bytes | None = None,
        max_skew: float = 30.0,
        max_payload: int = 64 * 1024,
        max_cameras: int | None = None,
        connect_timeout: float = 10.0,
        **consumer_options: Any,
    ) -> None:
        if not isinstance(topic, str) or not topic:
            raise ConfigError(f"control topic must be a non-empty str, got {topic!r}")
        for name, act in (acts or {}).items():
            if not isinstance(name, str) or not callable(act):
                raise ConfigError(f"acts must map names to callables; {name!r} does not")
        self.topic = topic
        self.reply_topic = reply_topic or f"{topic}.replies"
        self.acts: dict[str, Act] = {**BUILTIN_ACTS, **(acts or {})}
        self.comux = comux
        self.instance_id = instance_id or socket.gethostname()
        self.names = {self.instance_id, *groups}
        self.filter = filter
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self.max_skew = max_skew
        self.max_payload = max_payload
        self.max_cameras = max_cameras
        self.counters = {"applied": 0, "errors": 0, "ignored": 0, "duplicates": 0, "rejected": 0}
        self._replies: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._offset: int | None = None
        self._stop = threading.Event()
        self.ready = threading.Event()  # set once the control partition is assigned
        self._thread: threading.Thread | None = None
        self._consumer_options = consumer_options
        self._connect_timeout = connect_timeout
        self.connect(bootstrap_servers)
        self.sub()
        self.run()

    def __repr__(self) -> str:
        return (
            f"Control(topic={self.topic!r}, instance_id={self.instance_id!r}, "
            f"signed={self._secret is not None}, options={redact(self._consumer_options)})"
        )

    # -- the seed's steps --------------------------------------------------------------------

    def connect(self, bootstrap_servers: str | Iterable[str] | None) -> None:
        """Create the consumer and the reply producer; raise if no broker answers."""
        servers = resolve_bootstrap_servers(bootstrap_servers)
        config = {
            "group.id": f"comux-control.{self.instance_id}",
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
            "topic.metadata.refresh.interval.ms": 10_000,
            "logger": logging.getLogger("comux.kafka"),
            **self._consumer_options,
            "bootstrap.servers": servers,
        }
        self._consumer = Consumer(config)
        check_broker(self._consumer, servers, self._connect_timeout)
        self._producer = Producer(
            {"bootstrap.servers": servers, "linger.ms": 0, "logger": config["logger"]}
        )
        self._ensure_topics(servers)

    def _ensure_topics(self, servers: str) -> None:
        """Create the control and reply topics when missing, so no early message is missed."""
        admin = AdminClient({"bootstrap.servers": servers})
        existing = admin.list_topics(timeout=self._connect_timeout).topics
        missing = [t for t in (self.topic, self.reply_topic) if t not in existing]
        if not missing:
            return
        futures = admin.create_topics([NewTopic(t, 1) for t in missing])
        for topic, future in futures.items():
            try:
                future.result(self._connect_timeout)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    log.warning("could not create %s: %s", topic, exc)

    def sub(self) -> None:
        self._consumer.subscribe([self.topic], on_assign=self._on_assign)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Start at the committed offset, else at the current end; then say we are listening."""
        deadline = time.monotonic() + self._connect_timeout
        while True:
            try:
                committed = consumer.committed(partitions, timeout=self._connect_timeout)
                for tp, done in zip(partitions, committed, strict=True):
                    if done.offset >= 0:
                        tp.offset = done.offset
                    else:
                        _, high = consumer.get_watermark_offsets(tp, timeout=self._connect_timeout)
                        tp.offset = high
                consumer.assign(partitions)
                break
            except KafkaException as exc:  # raising here would kill the control thread
                if time.monotonic() > deadline or self._stop.is_set():
                    log.error("control assignment failed: %s", exc)
                    return
                # A topic created a moment ago may not have a leader yet.
                self._stop.wait(0.1)
        self.ready.set()

    def run(self) -> None:
        """Listen in a daemon thread."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._listen, name="comux-control", daemon=True)
            self._thread.start()

    def kill(self, timeout: float = 5.0) -> None:
        """Stop the control thread; consuming control messages stops with it."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout / 2)
        if self._thread is None or not self._thread.is_alive():
            close_within(self._consumer, (deadline - time.monotonic()) / 2)
        self._producer.flush(max(0.0, deadline - time.monotonic()))

    @property
    def offset(self) -> int | None:
        """Offset of the last control message handled."""
        return self._offset

    @property
    def topic_last_offset(self) -> int | None:
        """Offset of the newest message in the control topic, or None when unknown."""
        try:
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.topic, 0), timeout=5.0
            )
        except KafkaException:
            return None
        return high - 1 if high > 0 else None

    def act(self, action: str, value: Any) -> Any:
        """Run ``action`` with ``value``; an unknown action returns the seed's message."""
        if action not in self.acts:
            return f"✘ No action '{action}' defined!"
        if action == "create" and self.max_cameras is not None:
            wanted = set(_cam_ids(value)) | set(self.comux.cam_ids)
            if len(wanted) > self.max_cameras:
                raise ActionError(f"max_cameras is {self.max_cameras}: refusing {len(wanted)}")
        return self.acts[action](self.comux, value)

    # -- the loop ----------------------------------------------------------------------------

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self._consumer.poll(0.1)
            except Exception as exc:
                log.error("control consumer: %s", exc)
                self._stop.wait(0.5)
                continue
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("control consumer: %s", err)
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
                log.warning("control commit failed: %s", exc)

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
            self._reply(action, request_id, {"status": "error", "error": reason})

        if not action:
            return refuse("no action: the message key names the action")
        if len(value) > self.max_payload:
            return refuse(f"payload of {len(value)} bytes exceeds {self.max_payload}")
        if self._secret is not None:
            problem = self._check_signature(action, value, headers, target, request_id)
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
            self.counters["duplicates"] += 1
            self._reply(action, request_id, {**self._replies[request_id], "duplicate": True})
            return
        try:
            result = self.act(action, payload)
            if action in self.acts:
                reply = {"status": "ok", "result": result}
                self.counters["applied"] += 1
            else:  # the seed's text for an unknown action
                reply = {"status": "error", "error": result}
                self.counters["errors"] += 1
        except Exception as exc:
            self.counters["errors"] += 1
            reply = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        if request_id is not None:
            self._remember(request_id, reply)
        self._reply(action, request_id, reply)

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
            age = abs(time.time() - float(stamp))
        except ValueError:
            return "bad comux-timestamp"
        expected = hmac.new(
            self._secret, _signed_bytes(action, value, stamp, target, request_id), hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(expected.encode(), signature):
            return "bad signature"
        if age > self.max_skew:
            return f"stale message: timestamp {age:.0f} s away from now (max {self.max_skew:g})"
        return None

    def _remember(self, request_id: str, reply: dict[str, Any]) -> None:
        self._replies[request_id] = reply
        while len(self._replies) > 1024:
            self._replies.popitem(last=False)

    def _reply(self, action: str, request_id: str | None, body: dict[str, Any]) -> None:
        reply = {"action": action[:128], "id": request_id, "instance": self.instance_id, **body}
        headers: list[tuple[str, str | bytes | None]] = (
            [(REQUEST_ID_HEADER, request_id.encode())] if request_id else []
        )
        try:
            self._producer.produce(
                self.reply_topic,
                json.dumps(reply, default=str).encode(),
                action[:128].encode() or None,
                headers=headers,
            )
            self._producer.poll(0)
        except (BufferError, KafkaException) as exc:
            log.error("control reply to %s failed: %s", self.reply_topic, exc)
