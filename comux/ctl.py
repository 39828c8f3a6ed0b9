"""``comux ctl``: send one action to the instances on a control topic and print their replies.

The reply topic is assigned at its end before the action is sent, so every reply to it is seen;
replies are matched by the request id the action was sent with. Exit status: 0 when at least
one reply came and every reply is ok, 1 when a reply is an error (or the action could not be
sent), 4 when no reply came within ``--wait`` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from .config import BOOTSTRAP_ENV, resolve_bootstrap_servers
from .errors import ConfigError, KafkaError

__all__ = [
    "EXIT_ERROR",
    "EXIT_NO_REPLY",
    "EXIT_OK",
    "add_ctl_parser",
    "build_value",
    "format_replies",
    "request",
    "run_ctl",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NO_REPLY = 4
_TABLE_CELL = 300  # characters of a result shown in the table; --json shows all


def add_ctl_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``ctl`` verb to the ``comux`` command's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "ctl",
        help="send a control action to running instances and print their replies",
        description=(
            "Send ACTION to the instances listening on --topic and print their replies. "
            "Exit status: 0 all replies ok, 1 an error reply (or nothing could be sent), "
            "4 no reply within --wait."
        ),
    )
    p.add_argument(
        "action",
        metavar="ACTION",
        help="create, delete, update, list, pause, resume, or an act of the instance's own",
    )
    p.add_argument("--cam-ids", nargs="+", metavar="ID", help='the value\'s "cam_ids"')
    p.add_argument(
        "--value",
        metavar="JSON",
        help="a JSON object merged into the value, e.g. '{\"rate\": 5}' for update",
    )
    p.add_argument("--topic", required=True, help="the control topic (replies: TOPIC.replies)")
    p.add_argument(
        "--bootstrap-servers",
        default=None,
        help=f"Kafka bootstrap servers (default: ${BOOTSTRAP_ENV})",
    )
    p.add_argument("--target", metavar="ID", help="only this instance_id (or group) applies it")
    p.add_argument(
        "--secret-env",
        metavar="VAR",
        help="sign with the secret held in this environment variable (never given as a flag)",
    )
    p.add_argument("--wait", type=float, default=5.0, help="seconds to wait for replies")
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for a broker, and then for the action's delivery",
    )
    p.add_argument(
        "--expect",
        type=int,
        default=1,
        help="stop waiting once this many instances replied (0: wait all of --wait)",
    )
    p.add_argument("--json", action="store_true", help="print the replies as a JSON list")
    return p


def build_value(cam_ids: Sequence[str] | None, value: str | None) -> dict[str, Any]:
    """The action's value: ``--value``'s JSON object with ``{"cam_ids": [...]}`` merged in."""
    built: dict[str, Any] = {}
    if value is not None:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--value is not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ConfigError(f"--value must be a JSON object, got {type(parsed).__name__}")
        built.update(parsed)
    if cam_ids:
        if "cam_ids" in built and built["cam_ids"] != list(cam_ids):
            raise ConfigError("cam ids are given twice: in --cam-ids and in --value")
        built["cam_ids"] = list(cam_ids)
    return built


def _secret(variable: str | None) -> str | None:
    if variable is None:
        return None
    secret = os.environ.get(variable)
    if not secret:
        raise ConfigError(f"--secret-env {variable}: that environment variable is not set")
    return secret


def request(
    action: str,
    value: Mapping[str, Any],
    *,
    topic: str,
    bootstrap_servers: str | Iterable[str] | None = None,
    target: str | None = None,
    secret: str | bytes | None = None,
    wait: float = 5.0,
    expect: int = 1,
    reply_topic: str | None = None,
    connect_timeout: float = 10.0,
    request_id: str | None = None,
) -> list[dict[str, Any]]:
    """Send ``action`` with ``value`` on ``topic``; return the replies that came within ``wait``.

    One reply per instance, in the order they came; the wait ends early once ``expect``
    instances replied (0: never). Signed with ``secret`` when given. Raises
    BrokerUnavailableError when no broker answers, KafkaError when the action is not delivered.

    Example::

        replies = request("create", {"cam_ids": ["cam7"]}, topic="comux.control")
    """
    from confluent_kafka import OFFSET_BEGINNING, KafkaException
    from confluent_kafka import TopicPartition as TP

    from . import kafka
    from .control import REQUEST_ID_HEADER, TARGET_HEADER, sign

    servers = resolve_bootstrap_servers(bootstrap_servers)
    reply_topic = reply_topic or f"{topic}.replies"
    request_id = request_id or uuid.uuid4().hex
    consumer = kafka.consumer(
        kafka.config(
            servers,
            defaults={
                "group.id": f"comux-ctl-{request_id}",  # never joined: partitions are assigned
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
            },
        )
    )
    producer = None
    try:
        kafka.probe(consumer, servers, connect_timeout)
        # Listen before sending: the reply may come at once.
        meta = consumer.list_topics(reply_topic, timeout=connect_timeout).topics.get(reply_topic)
        if meta is not None and meta.error is None and meta.partitions:
            starts = []
            for number in sorted(meta.partitions):
                tp = TP(reply_topic, number)
                _, high = consumer.get_watermark_offsets(tp, timeout=connect_timeout)
                starts.append(TP(reply_topic, number, high))
        else:  # no instance made it yet: one that does replies from its first offset
            starts = [TP(reply_topic, 0, OFFSET_BEGINNING)]
        consumer.assign(starts)

        body = json.dumps(value).encode()
        headers: list[tuple[str, str | bytes | None]]
        if secret is not None:
            headers = list(sign(secret, action, body, target=target, request_id=request_id))
        else:
            headers = [(REQUEST_ID_HEADER, request_id.encode())]
            if target is not None:
                headers.append((TARGET_HEADER, target.encode()))
        producer = kafka.producer(kafka.config(servers, defaults={"linger.ms": 0}))
        failures: list[Any] = []
        kafka.produce_waiting(
            producer,
            topic,
            body,
            action.encode(),
            headers=headers,
            on_delivery=lambda err, _msg: failures.append(err) if err is not None else None,
            timeout=connect_timeout,
        )
        if producer.flush(connect_timeout) > 0 or failures:
            reason = failures[0] if failures else f"not delivered within {connect_timeout:g} s"
            raise KafkaError(f"could not send {action!r} to {topic}: {reason}")

        replies: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + wait
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                msg = consumer.poll(min(remaining, 0.2))
            except KafkaException:
                continue
            if msg is None or msg.error() is not None:
                continue
            reply = _reply(msg, request_id, REQUEST_ID_HEADER)
            if reply is not None:
                replies.setdefault(str(reply.get("instance")), reply)
                if expect > 0 and len(replies) >= expect:
                    break
        return list(replies.values())
    finally:
        consumer.close()
        if producer is not None:
            producer.flush(1.0)


def _reply(msg: Any, request_id: str, header: str) -> dict[str, Any] | None:
    """The reply in ``msg`` when it answers ``request_id``."""
    headers = dict(msg.headers() or ())
    try:
        body = json.loads(msg.value() or b"")
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    raw = headers.get(header)
    answered = raw.decode(errors="replace") if raw else body.get("id")
    return body if answered == request_id else None


def _outcome(reply: Mapping[str, Any]) -> str:
    if reply.get("status") == "ok":
        text = json.dumps(reply.get("result"), ensure_ascii=False, default=str)
    else:
        text = str(reply.get("error"))
    return text if len(text) <= _TABLE_CELL else text[: _TABLE_CELL - 1] + "…"


def _status(reply: Mapping[str, Any]) -> str:
    status = str(reply.get("status"))
    return status + (" (duplicate)" if reply.get("duplicate") else "")


def format_replies(replies: Sequence[Mapping[str, Any]]) -> str:
    """Replies as a plain table: instance, status, result or error."""
    rows = [("instance", "status", "result / error")]
    rows += [(str(r.get("instance")), _status(r), _outcome(r)) for r in replies]
    width = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(f"{a:<{width[0]}}  {b:<{width[1]}}  {c}" for a, b, c in rows)


def _print_table(replies: Sequence[Mapping[str, Any]], out: TextIO) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        print(format_replies(replies), file=out)
        return
    table = Table("instance", "status", "result / error")
    for reply in replies:
        style = "green" if reply.get("status") == "ok" else "red"
        cells = (str(reply.get("instance")), _status(reply), _outcome(reply))
        table.add_row(*(Text(cell) for cell in cells), style=style)  # no markup in replies
    Console(file=out).print(table)


def run_ctl(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``comux ctl``: send, wait, print; the exit status (EXIT_OK, EXIT_ERROR, EXIT_NO_REPLY)."""
    out = out or sys.stdout
    if not args.wait >= 0:
        raise ConfigError(f"--wait must be >= 0 seconds, got {args.wait}")
    if not args.connect_timeout > 0:
        raise ConfigError(f"--connect-timeout must be > 0 seconds, got {args.connect_timeout}")
    if args.expect < 0:
        raise ConfigError(f"--expect must be >= 0, got {args.expect}")
    replies = request(
        args.action,
        build_value(args.cam_ids, args.value),
        topic=args.topic,
        bootstrap_servers=args.bootstrap_servers,
        target=args.target,
        secret=_secret(args.secret_env),
        wait=args.wait,
        expect=args.expect,
        connect_timeout=args.connect_timeout,
    )
    if args.json:
        print(json.dumps(replies, indent=2, ensure_ascii=False, default=str), file=out)
    elif replies:
        _print_table(replies, out)
    if not replies:
        print(
            f"comux ctl: no reply to {args.action!r} on {args.topic}.replies within "
            f"{args.wait:g} s: is a comux with setup_controller({args.topic!r}) running"
            + (f" as {args.target!r}" if args.target else "")
            + "?",
            file=sys.stderr,
        )
        return EXIT_NO_REPLY
    if 0 < len(replies) < args.expect:
        print(f"comux ctl: {len(replies)} of {args.expect} replies came", file=sys.stderr)
    return EXIT_OK if all(r.get("status") == "ok" for r in replies) else EXIT_ERROR
