"""comux's logging: formats, rotation, camera ids, repeated errors counted, librdkafka and FFmpeg
levels, and secrets that never reach a log line, a repr or an error."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Iterator

import av.logging
import confluent_kafka as ck
import pytest

import comux.app
from comux import BrokerUnavailableError, Comux, ConfigError, MongoConnect, RegistryError
from comux.ctl import request
from comux.decoding import CameraDecoder, DecoderConfig
from comux.logs import COUNT_REPEATS, RepeatFilter, configure_logging, reset_repeats
from tests.fakes import FakeMessage, messages

SENTINEL = "s3cr3t-SENTINEL-4711"


class Records(logging.Handler):
    """Every record of every logger, formatted as text and as JSON."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.text = logging.Formatter("%(levelname)s %(name)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[str]:
        out = []
        for record in self.records:
            out.append(self.text.format(record))
            if record.exc_info:
                out.append(self.text.formatException(record.exc_info))
        return out

    def at_least(self, level: int) -> list[logging.LogRecord]:
        return [r for r in self.records if r.levelno >= level]


@pytest.fixture
def captured() -> Iterator[Records]:
    """All loggers at DEBUG into one list; the repeat counters start afresh."""
    reset_repeats()
    handler = Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        av.logging.set_level(None)
        reset_repeats()


# -- formats and files ----------------------------------------------------------------------------


def test_json_lines_carry_level_logger_camera_and_traceback(tmp_path):
    path = tmp_path / "comux.log"
    configure_logging("DEBUG", path, fmt="json")
    log = logging.getLogger("comux.decoding")
    log.warning("camera %s: offset %d: %s", "cam-7", 42, "broken", extra={"cam_id": "cam-7"})
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("comux").exception("it failed")
    lines = path.read_text().splitlines()
    first, second = (json.loads(line) for line in lines[-2:])
    assert first["level"] == "WARNING" and first["logger"] == "comux.decoding"
    assert first["message"] == "camera cam-7: offset 42: broken"
    assert first["cam_id"] == "cam-7"
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert "cam_id" not in second
    assert "ValueError: boom" in second["exc"] and second["level"] == "ERROR"


def test_text_lines_name_the_camera_when_the_message_does_not(tmp_path):
    path = tmp_path / "comux.log"
    configure_logging("INFO", path)
    logging.getLogger("comux.batching").info("went quiet", extra={"cam_id": "cam-9"})
    logging.getLogger("comux.batching").info("camera cam-8 is back", extra={"cam_id": "cam-8"})
    text = path.read_text().splitlines()
    assert text[-2].endswith("went quiet [camera cam-9]")
    assert text[-1].endswith("camera cam-8 is back")


def test_a_later_call_keeps_the_format_unless_told(tmp_path):
    path = tmp_path / "comux.log"
    configure_logging("INFO", path, fmt="json")
    configure_logging("INFO")  # what Comux(log_level=...) does
    logging.getLogger("comux").info("still json")
    assert json.loads(path.read_text().splitlines()[-1])["message"] == "still json"


def test_a_log_file_that_cannot_be_opened_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot write the log file .*: Is a directory"):
        configure_logging("INFO", tmp_path)


def test_the_log_file_rotates_at_the_size_given(tmp_path):
    path = tmp_path / "comux.log"
    configure_logging("INFO", path, max_bytes=2_000, backups=2)
    for i in range(200):
        logging.getLogger("comux").info("line %d %s", i, "x" * 50)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["comux.log", "comux.log.1", "comux.log.2"]
    assert all(p.stat().st_size <= 2_200 for p in tmp_path.iterdir())


def test_per_camera_records_carry_the_camera_id(captured, small_video):
    config = DecoderConfig(rate=None, width=320, height=240)
    decoder = CameraDecoder("cam-e", config, lambda *args: None)
    msgs = messages(small_video)
    msgs[3] = FakeMessage(b"garbage" * 50, 3, _headers=[("keyframe", b"0")])
    for msg in msgs[:6]:
        decoder.decode(msg)
    about = [r for r in captured.records if r.name == "comux.decoding" and r.levelno >= 30]
    assert about and all(getattr(r, "cam_id", None) == "cam-e" for r in about)


# -- repeated errors ------------------------------------------------------------------------------


def _logger_with(filter_: RepeatFilter, handler: Records) -> logging.Logger:
    logger = logging.getLogger(f"comux.test.repeats.{id(filter_)}")
    logger.addFilter(filter_)
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger


def test_a_repeated_error_is_said_once_then_counted():
    handler = Records()
    logger = _logger_with(RepeatFilter(window=0.3), handler)
    for i in range(50):  # numbers differ: the same message for the filter
        logger.error("connect to 127.0.0.1:%d failed (after %dms in state CONNECT)", 1, i)
    logger.error("something else")
    logger.error("camera failed", extra={"cam_id": "cam1"})
    logger.error("camera failed", extra={"cam_id": "cam2"})
    logger.info("info is never counted")
    logger.info("info is never counted")
    assert [r.getMessage()[:10] for r in handler.records] == [
        "connect to",
        "something ",
        "camera fai",
        "camera fai",
        "info is ne",
        "info is ne",
    ]
    time.sleep(0.6)
    summary = handler.records[-1].getMessage()
    assert "repeated 49 times in the last" in summary, summary
    assert summary.startswith("connect to 127.0.0.1:1 failed")
    # quiet for a whole window: a new run, said again; then counted again
    logger.error("connect to 127.0.0.1:1 failed (after 3ms in state CONNECT)")
    logger.error("connect to 127.0.0.1:1 failed (after 4ms in state CONNECT)")
    assert len(handler.records) == 8


def test_marked_only_filters_only_marked_records():
    handler = Records()
    logger = _logger_with(RepeatFilter(window=10, marked_only=True), handler)
    for _ in range(3):
        logger.warning("consumer: broker down", extra=COUNT_REPEATS)
        logger.warning("unmarked")
    assert [r.getMessage() for r in handler.records] == ["consumer: broker down"] + ["unmarked"] * 3


def test_an_unreachable_broker_logs_a_few_lines_not_hundreds(captured):
    """Before: ~80 librdkafka FAIL lines on comux.kafka, each again as a comux.consuming warning."""
    with Comux(["a"], log_level="DEBUG") as cameras:
        cameras.setup_consumers("127.0.0.1:1", strict_on_fail=False, connect_timeout=0.5)
        cameras.setup_decoders(W=64, H=64)
        cameras.start()
        time.sleep(3)
        loud = captured.at_least(logging.WARNING)
        assert len(loud) <= 6, [f"{r.name}: {r.getMessage()[:80]}" for r in loud]
        fails = [r for r in loud if r.name == "comux.kafka"]
        assert len(fails) == 1 and fails[0].levelno == logging.ERROR  # librdkafka's LOG_ERR
    captured.records.clear()
    with pytest.raises(BrokerUnavailableError, match="127.0.0.1:1"):
        Comux(["a"]).setup_consumers("127.0.0.1:1", connect_timeout=2)
    assert len(captured.at_least(logging.WARNING)) <= 3


def test_librdkafka_levels_become_python_levels(captured):
    """Syslog levels: 3 (LOG_ERR, a failed connect) is ERROR, 7 (debug contexts) is DEBUG."""
    logger = logging.getLogger("comux.kafka")
    producer = ck.Producer(
        {"bootstrap.servers": "127.0.0.1:1", "logger": logger, "debug": "broker"}
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not captured.at_least(logging.ERROR):
        producer.poll(0.1)
    mine = [r for r in captured.records if r.name == "comux.kafka"]
    assert any(r.levelno == logging.DEBUG for r in mine)
    errors = [r for r in mine if r.levelno == logging.ERROR]
    assert errors and "Connect to" in errors[0].getMessage()
    assert not [r for r in mine if r.levelno not in (logging.DEBUG, logging.INFO, logging.ERROR)]


# -- FFmpeg ---------------------------------------------------------------------------------------


def test_ffmpeg_logs_only_when_comux_logs_at_debug(captured):
    configure_logging("INFO")
    assert av.logging.get_level() is None  # its callback serialises the decoder threads
    configure_logging("DEBUG")
    assert av.logging.get_level() == av.logging.WARNING
    configure_logging("DEBUG", ffmpeg_level=None)
    assert av.logging.get_level() is None
    configure_logging("ERROR", ffmpeg_level=av.logging.ERROR)
    assert av.logging.get_level() == av.logging.ERROR


# -- secrets --------------------------------------------------------------------------------------


def _exception_text(exc: BaseException) -> str:
    parts = [str(exc), repr(exc)]
    for link in (exc.__cause__, exc.__context__):
        if link is not None:
            parts.append(_exception_text(link))
    return "\n".join(parts)


def test_secrets_never_reach_logs_reprs_or_errors(captured, mock_cluster, monkeypatch):
    texts: list[str] = []
    secret_options = {
        "sasl.password": SENTINEL,
        "ssl.key.password": SENTINEL,
        "debug": "conf,security,broker",  # librdkafka's own dump of its configuration
    }

    # consumer and producer options, unreachable broker, strict and not
    cameras = Comux(["a"], log_level="DEBUG")
    with pytest.raises(BrokerUnavailableError) as info:
        cameras.setup_consumers("127.0.0.1:1", connect_timeout=0.5, **secret_options)
    texts += [_exception_text(info.value), repr(cameras)]
    cameras.setup_consumers(
        "127.0.0.1:1", strict_on_fail=False, connect_timeout=0.5, **secret_options
    )
    with pytest.raises(BrokerUnavailableError) as info:
        cameras.setup_producer("127.0.0.1:1", connect_timeout=0.5, **secret_options)
    texts += [_exception_text(info.value), repr(cameras), repr(cameras._consumer.settings)]
    cameras.setup_producer(mock_cluster, **{"sasl.password": SENTINEL})
    texts.append(repr(cameras._producer))

    # the control secret, on a working (mock) cluster
    owner = ck.Producer({"bootstrap.servers": mock_cluster, "log_level": 0})
    for topic in ("secret-ctl", "secret-ctl.replies"):  # the mock cluster cannot CreateTopics
        owner.produce(topic, b"{}", b"noop")
    owner.flush(10)
    control = cameras.setup_controller(
        "secret-ctl", mock_cluster, secret=SENTINEL, instance_id="i1", connect_timeout=5
    )
    texts.append(repr(control))
    assert control.ready.wait(20)

    replies = request("list", {}, topic="secret-ctl", bootstrap_servers=mock_cluster, wait=5)
    assert replies and replies[0]["status"] == "error"  # unsigned: refused, logged
    texts.append(json.dumps(replies))
    cameras.close(2)
    texts.append(repr(cameras))

    # a Mongo URI with a password
    monkeypatch.setattr(comux.app, "MongoConnect", functools.partial(MongoConnect, timeout=0.5))
    with pytest.raises(RegistryError) as info:
        Comux.from_mongo(f"mongodb://alice:{SENTINEL}@127.0.0.1:1/", "site", "cameras")
    texts.append(_exception_text(info.value))
    registry = MongoConnect(f"mongodb://alice:{SENTINEL}@127.0.0.1:1/", "site", "cameras")
    texts += [repr(registry), str(registry), registry.uri]

    lines = captured.lines()
    assert len(lines) > 20  # DEBUG of every logger was captured
    assert any("refused" in line for line in lines)
    for text in texts + lines:
        assert SENTINEL not in text, text
