"""The ``comux`` logger: its level and handlers, and how noisy sources are kept readable.

- Handlers: stderr by default, a rotating file on request; text or JSON lines
  (``ts``, ``level``, ``logger``, ``message``, ``thread``, ``cam_id`` when the record is about a
  camera, ``exc`` with the traceback).
- Per-camera records carry ``cam_id`` (``extra={"cam_id": ...}``).
- librdkafka logs through ``comux.kafka`` (the clients pass ``"logger"``); confluent-kafka maps
  its syslog levels to Python's (0-2 CRITICAL, 3 ERROR, 4 WARNING, 5-6 INFO, 7 DEBUG).
- A broker that is down makes librdkafka repeat the same error many times a second: warnings
  and errors of ``comux.kafka`` (librdkafka's own lines), and records marked with
  :data:`COUNT_REPEATS` elsewhere, are said once, then counted and summed up at most every
  :data:`REPEAT_WINDOW_S` seconds (:class:`RepeatFilter`).
- FFmpeg's log is off unless comux logs at DEBUG: PyAV's log callback takes a lock that
  serialises every decoder thread.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import logging.handlers
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError

__all__ = [
    "COUNT_REPEATS",
    "REPEAT_WINDOW_S",
    "JsonFormatter",
    "LogFormat",
    "RepeatFilter",
    "TextFormatter",
    "configure_logging",
    "kafka_error_cb",
    "reset_repeats",
]

LogFormat = Literal["text", "json"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"
DEFAULT_MAX_BYTES = 20_000_000
DEFAULT_BACKUPS = 5
REPEAT_WINDOW_S = 10.0
# ``log.warning(..., extra=COUNT_REPEATS)``: a line that repeats while a broker is down.
COUNT_REPEATS: dict[str, Any] = {"comux_repeats": True}
_LIBRDKAFKA_LOGGERS = ("comux.kafka",)  # every record is librdkafka's
_MARKED_LOGGERS = ("comux.consuming", "comux.results", "comux.control")
_OURS = "_comux_handler"  # set on the handlers configure_logging added


class TextFormatter(logging.Formatter):
    """The classic one-line format, plus ``[cam_id]`` when the message does not name it."""

    def __init__(self) -> None:
        super().__init__(_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        cam_id = getattr(record, "cam_id", None)
        if cam_id is not None and str(cam_id) not in record.getMessage():
            text += f" [camera {cam_id}]"
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = _dt.datetime.fromtimestamp(record.created, _dt.UTC)
        out: dict[str, Any] = {
            "ts": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "thread": record.threadName,
        }
        cam_id = getattr(record, "cam_id", None)
        if cam_id is not None:
            out["cam_id"] = cam_id
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


_NUMBERS = re.compile(r"(?<![A-Za-z])\d+(?:[.:,]\d+)*")
_RDKAFKA_SUPPRESSED = re.compile(r",? *# identical error\(s\) suppressed")


def _normalise(message: str) -> str:
    """The message with numbers, addresses and timestamps blanked (``cam1`` stays)."""
    return _RDKAFKA_SUPPRESSED.sub("", _NUMBERS.sub("#", message))


@dataclass
class _Run:
    last_seen: float
    reported: float  # when the message or its last summary was let through
    suppressed: int = 0
    record: logging.LogRecord | None = None  # the last suppressed one
    timer: threading.Timer | None = field(default=None, repr=False)


class RepeatFilter(logging.Filter):
    """Let the first of a run of identical warnings or errors through, count the rest.

    Identical: same logger, level, ``cam_id`` and message once numbers are blanked. While the
    message keeps coming, one summary "… (repeated N times in the last T s)" is logged at most
    every ``window`` seconds (from a timer, so the last burst is summed up too). A message
    quiet for a whole window starts a new run and is let through again.

    :param marked_only: only filter records logged with ``extra=COUNT_REPEATS``.
    """

    def __init__(
        self,
        window: float = REPEAT_WINDOW_S,
        *,
        level: int = logging.WARNING,
        marked_only: bool = False,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
    ) -> None:
        super().__init__()
        self.window = window
        self.level = level
        self.marked_only = marked_only
        self.clock = clock
        self.max_keys = max_keys
        self._runs: OrderedDict[tuple[Any, ...], _Run] = OrderedDict()
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Forget every run (pending summaries are dropped)."""
        with self._lock:
            for run in self._runs.values():
                if run.timer is not None:
                    run.timer.cancel()
            self._runs.clear()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level or getattr(record, "comux_summary", False):
            return True
        if self.marked_only and not getattr(record, "comux_repeats", False):
            return True
        key = (
            record.name,
            record.levelno,
            getattr(record, "cam_id", None),
            _normalise(record.getMessage()),
        )
        now = self.clock()
        with self._lock:
            run = self._runs.get(key)
            if run is None or (run.suppressed == 0 and now - run.last_seen > self.window):
                self._runs[key] = _Run(last_seen=now, reported=now)
                self._runs.move_to_end(key)
                while len(self._runs) > self.max_keys:
                    _, old = self._runs.popitem(last=False)
                    if old.timer is not None:
                        old.timer.cancel()
                return True
            run.last_seen = now
            run.suppressed += 1
            run.record = record
            if run.timer is None:
                delay = max(0.0, run.reported + self.window - now)
                run.timer = threading.Timer(delay, self._summarise, (key, run))
                run.timer.daemon = True
                run.timer.start()
            return False

    def _summarise(self, key: tuple[Any, ...], run: _Run) -> None:
        """Timer: log how often the message came since it was last let through."""
        with self._lock:
            if self._runs.get(key) is not run or run.record is None or not run.suppressed:
                return
            now = self.clock()
            count, seconds, record = run.suppressed, now - run.reported, run.record
            run.suppressed, run.reported, run.record, run.timer = 0, now, None, None
        summary = logging.makeLogRecord(record.__dict__)
        summary.msg = f"{record.getMessage()} (repeated {count} times in the last {seconds:.0f} s)"
        summary.args = None
        summary.exc_info = summary.exc_text = None
        summary.comux_summary = True
        summary.created = time.time()
        logging.getLogger(record.name).handle(summary)


def _install_filters() -> None:
    """One RepeatFilter per noisy logger, installed once per process."""
    for names, marked in ((_LIBRDKAFKA_LOGGERS, False), (_MARKED_LOGGERS, True)):
        for name in names:
            logger = logging.getLogger(name)
            if not any(isinstance(f, RepeatFilter) for f in logger.filters):
                logger.addFilter(RepeatFilter(marked_only=marked))


_install_filters()


def reset_repeats() -> None:
    """Forget every counted run (for tests)."""
    for name in (*_LIBRDKAFKA_LOGGERS, *_MARKED_LOGGERS):
        for f in logging.getLogger(name).filters:
            if isinstance(f, RepeatFilter):
                f.reset()


def _formatter(fmt: LogFormat) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return TextFormatter()
    raise ConfigError(f"log format must be 'text' or 'json', got {fmt!r}")


def configure_logging(
    level: str | int = "ERROR",
    file: str | os.PathLike[str] | None = None,
    *,
    fmt: LogFormat | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    backups: int = DEFAULT_BACKUPS,
    ffmpeg_level: int | Literal["auto"] | None = "auto",
) -> logging.Logger:
    """Set the level of the ``comux`` logger and attach its handlers once.

    An application that configures logging itself keeps control: a stderr handler is only added
    when neither ``comux`` nor the root logger has one.

    :param level: level of the ``comux`` logger (and so of ``comux.kafka``, librdkafka's).
    :param file: also write to this file, rotated at ``max_bytes`` with ``backups`` old files.
    :param fmt: ``"text"`` or ``"json"`` (one object per line) for the handlers comux added;
        None keeps what they use (text at first).
    :param ffmpeg_level: an ``av.logging`` level for FFmpeg's own log (under ``libav.*``), None
        for none; ``"auto"``: ``av.logging.WARNING`` when ``level`` is DEBUG, else none.

    Example::

        configure_logging("INFO", "comux.log", fmt="json", max_bytes=50_000_000, backups=3)
    """
    logger = logging.getLogger("comux")
    if isinstance(level, str):
        level = level.upper()
    logger.setLevel(level)
    ours = [h for h in logger.handlers if getattr(h, _OURS, False)]
    if fmt is None:
        fmt = "json" if any(isinstance(h.formatter, JsonFormatter) for h in ours) else "text"
    formatter = _formatter(fmt)
    for handler in ours:
        handler.setFormatter(formatter)
    if file is not None:
        path = os.path.abspath(os.fspath(file))
        if not any(
            isinstance(h, logging.FileHandler) and h.baseFilename == path for h in logger.handlers
        ):
            try:
                handler = logging.handlers.RotatingFileHandler(
                    path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
                )
            except OSError as exc:
                raise ConfigError(f"cannot write the log file {path}: {exc.strerror}") from None
            setattr(handler, _OURS, True)
            handler.setFormatter(formatter)
            logger.addHandler(handler)
    if not logger.handlers and not logging.getLogger().handlers:
        stderr = logging.StreamHandler()
        setattr(stderr, _OURS, True)
        stderr.setFormatter(formatter)
        logger.addHandler(stderr)
    if ffmpeg_level == "auto":
        ffmpeg_level = _ffmpeg_auto(logger.getEffectiveLevel())
    _ffmpeg(ffmpeg_level)
    return logger


class _ToComux(logging.Handler):
    """On ``libav``: hand FFmpeg's records to the handlers comux added (root gets them anyway)."""

    def emit(self, record: logging.LogRecord) -> None:
        for handler in logging.getLogger("comux").handlers:
            if getattr(handler, _OURS, False) and record.levelno >= handler.level:
                handler.handle(record)


def _ffmpeg_auto(level: int) -> int | None:
    import av.logging

    return av.logging.WARNING if level <= logging.DEBUG else None


def _ffmpeg(level: int | None) -> None:
    """FFmpeg's log at ``level`` (an ``av.logging`` level) under ``libav.*``, or off (None)."""
    import av.logging

    av.logging.set_level(level)
    if level is None:
        return
    libav = logging.getLogger("libav")
    libav.setLevel(min(libav.getEffectiveLevel(), av.logging.adapt_level(level)))
    if not any(isinstance(h, _ToComux) for h in libav.handlers):
        libav.addHandler(_ToComux())


def kafka_error_cb(logger: logging.Logger, err: Any) -> None:
    """A librdkafka client's ``error_cb``: say the error once per run (see RepeatFilter).

    Connection and name-resolution failures are logged by librdkafka itself on ``comux.kafka``
    (a ``FAIL`` line): here they go to DEBUG, so each is not said twice.
    """
    from confluent_kafka import KafkaError as RdKafkaError

    if err.code() in (RdKafkaError._TRANSPORT, RdKafkaError._RESOLVE):
        level = logging.DEBUG
    elif err.fatal():
        level = logging.ERROR
    else:
        level = logging.WARNING
    logger.log(level, "kafka: %s", err, extra=COUNT_REPEATS, stacklevel=2)
