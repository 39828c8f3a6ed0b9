"""publish() against librdkafka's mock cluster (in process, no broker) and a fake producer.

The mock cluster lives inside the client that creates it (``test.mock.num.brokers``), but
its brokers listen on real local ports: the metadata of that client gives their addresses,
so publish()'s own producer and a checking consumer can share it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from types import SimpleNamespace
from typing import Any

import confluent_kafka as ck
import pytest

from comux.errors import BrokerUnavailableError, ConfigError, KafkaError
from comux.media import EncodedPacket
from comux.publish import DEFAULT_PRODUCER_OPTIONS, PublishStats, publish


def consume(bootstrap: str, topic: str, count: int, timeout: float = 20.0) -> list[Any]:
    consumer = ck.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "log_level": 2,
        }
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    # assign every partition (no group join: fast); the key picks which one holds the camera
    consumer.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in partitions])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                out.append(msg)
        extra = consumer.poll(0.2)  # nothing more than expected
        assert extra is None or extra.error()
    finally:
        consumer.close()
    return out


def packet(pts: int | None, size: int = 10, keyframe: bool = False) -> EncodedPacket:
    data = b"\x00\x00\x00\x01" + bytes([0x65 if keyframe else 0x41]) + bytes([pts or 0]) * size
    return EncodedPacket(data, pts, Fraction(1, 25), keyframe, "h264", 64, 48)


class FakeClock:
    """monotonic() and sleep() of a clock that only moves when slept on."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds


class FakeProducer:
    """Records produce() calls; can refuse some with BufferError or fail deliveries."""

    def __init__(
        self,
        config: dict[str, Any],
        clock: FakeClock | None = None,
        buffer_errors: int = 0,
        fail: ck.KafkaError | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.buffer_errors = buffer_errors
        self.fail = fail
        self.produced: list[dict[str, Any]] = []
        self.pending: list[Any] = []
        self.calls: list[str] = []

    def list_topics(self, timeout: float | None = None) -> Any:
        self.calls.append("list_topics")
        return SimpleNamespace(brokers={1: "fake:9092"})

    def produce(self, topic: str, **kw: Any) -> None:
        self.calls.append("produce")
        if self.buffer_errors:
            self.buffer_errors -= 1
            raise BufferError("Local: Queue full")
        self.produced.append({"topic": topic, "at": self.clock() if self.clock else None, **kw})
        self.pending.append(kw["on_delivery"])

    def poll(self, timeout: float = 0) -> int:
        self.calls.append("poll")
        served, self.pending = self.pending, []
        for callback in served:
            callback(self.fail, None)
        return len(served)

    def flush(self, timeout: float | None = None) -> int:
        self.calls.append("flush")
        self.poll()
        return 0


def fake_publish(packets: list[EncodedPacket], producer: FakeProducer, **kw: Any) -> PublishStats:
    return publish(
        lambda: packets,
        "cam1",
        bootstrap_servers="fake:9092",
        _producer_factory=lambda config: (setattr(producer, "config", config), producer)[1],
        **kw,
    )


# --- against the mock cluster --------------------------------------------------------------


def test_messages_carry_key_value_headers_in_order(mock_cluster, small_video):
    packets = small_video[:15]
    stats = publish(lambda: packets, "cam-a", bootstrap_servers=mock_cluster, loop=2)
    assert stats.topic == "raw.cam-a"
    assert stats.packets == 30
    assert stats.bytes == 2 * sum(len(p.data) for p in packets)
    assert "30 packets" in str(stats) and "raw.cam-a" in str(stats)
    messages = consume(mock_cluster, "raw.cam-a", 30)
    assert len(messages) == 30
    assert [m.offset() for m in messages] == list(range(30))
    assert len({m.partition() for m in messages}) == 1
    for msg, sent in zip(messages, packets + packets, strict=True):
        assert msg.key() == b"cam-a"
        assert msg.value() == sent.data
        assert msg.headers() == sent.headers()
    assert dict(messages[0].headers())["keyframe"] == b"1"


def test_topic_template_and_bootstrap_from_the_environment(mock_cluster, monkeypatch, small_video):
    monkeypatch.setenv("COMUX_BOOTSTRAP_SERVERS", mock_cluster)
    stats = publish(lambda: small_video[:3], "cam-b", topic_template="video-:cam_id-h264")
    assert stats.topic == "video-cam-b-h264"
    assert [m.value() for m in consume(mock_cluster, stats.topic, 3)] == [
        p.data for p in small_video[:3]
    ]


class CountingProducer(ck.Producer):
    """A real producer that counts the BufferErrors its produce() raised."""

    buffer_errors = 0

    def produce(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().produce(*args, **kwargs)
        except BufferError:
            CountingProducer.buffer_errors += 1
            raise


def test_a_full_local_queue_is_waited_out(mock_cluster, small_video):
    packets = small_video[:20]
    CountingProducer.buffer_errors = 0
    stats = publish(
        lambda: packets,
        "cam-c",
        bootstrap_servers=mock_cluster,
        producer_options={"queue.buffering.max.messages": 2, "linger.ms": 20},
        _producer_factory=CountingProducer,
    )
    assert CountingProducer.buffer_errors > 0
    assert stats.packets == 20
    assert [m.value() for m in consume(mock_cluster, "raw.cam-c", 20)] == [p.data for p in packets]


def test_a_keyframe_of_several_megabytes_goes_through(mock_cluster):
    big = packet(0, size=3_000_000, keyframe=True)
    publish(lambda: [big], "cam-d", bootstrap_servers=mock_cluster)
    [msg] = consume(mock_cluster, "raw.cam-d", 1)
    assert msg.value() == big.data


def test_realtime_paces_by_pts_on_the_wall_clock(mock_cluster):
    packets = [packet(pts) for pts in (0, 1, 2, 3, 4)]  # 4/25 s = 160 ms
    start = time.monotonic()
    publish(lambda: packets, "cam-e", bootstrap_servers=mock_cluster, rate="realtime")
    assert time.monotonic() - start >= 0.16 - 0.005


def test_too_large_for_the_producer_is_a_kafka_error(mock_cluster):
    big = packet(0, size=5000)
    with pytest.raises(KafkaError) as info:
        publish(
            lambda: [big],
            "cam-f",
            bootstrap_servers=mock_cluster,
            producer_options={"message.max.bytes": 1000},
        )
    assert info.value.code == ck.KafkaError.MSG_SIZE_TOO_LARGE


def test_no_broker_is_broker_unavailable():
    with pytest.raises(BrokerUnavailableError) as info:
        publish(
            lambda: [packet(0)],
            "cam",
            bootstrap_servers="127.0.0.1:1",
            producer_options={"log_level": 0},
            _connect_timeout=0.5,
        )
    assert isinstance(info.value, KafkaError) and info.value.code is not None


# --- with a fake producer ------------------------------------------------------------------


def test_producer_options_pass_through_over_the_defaults():
    producer = FakeProducer({})
    fake_publish([packet(0)], producer, producer_options={"linger.ms": 50, "acks": "1"})
    config = producer.config
    assert config["bootstrap.servers"] == "fake:9092"
    assert config["linger.ms"] == 50 and config["acks"] == "1"
    assert config["message.max.bytes"] == DEFAULT_PRODUCER_OPTIONS["message.max.bytes"] >= 4e6
    assert config["compression.type"] == "none"


def test_realtime_sends_each_packet_at_its_pts(small_video):
    clock = FakeClock()
    producer = FakeProducer({}, clock)
    packets = small_video[:12]
    stats = fake_publish(packets, producer, rate="realtime", _clock=clock, _sleep=clock.sleep)
    start = 1000.0
    latest = 0.0
    for sent, pkt in zip(producer.produced, packets, strict=True):
        due = pkt.pts / 25
        latest = max(latest, due)
        # never early; late only behind a packet with a later pts (decode order, B-frames)
        assert due - 1e-9 <= sent["at"] - start <= latest + 1e-9
    assert producer.produced[-1]["at"] - start == pytest.approx(max(p.pts for p in packets) / 25)
    assert stats.seconds == pytest.approx(max(p.pts for p in packets) / 25)


def test_realtime_restarts_the_clock_each_loop_and_handles_unknown_pts():
    clock = FakeClock()
    producer = FakeProducer({}, clock)
    packets = [packet(None) for _ in range(5)]
    fake_publish(packets, producer, rate="realtime", loop=2, _clock=clock, _sleep=clock.sleep)
    times = [round(p["at"] - 1000.0, 6) for p in producer.produced]
    assert times == [0.0, 0.04, 0.08, 0.12, 0.16, 0.16, 0.2, 0.24, 0.28, 0.32]


def test_max_rate_does_not_sleep():
    clock = FakeClock()
    producer = FakeProducer({}, clock)
    fake_publish([packet(i * 25) for i in range(5)], producer, _clock=clock, _sleep=clock.sleep)
    assert {p["at"] for p in producer.produced} == {1000.0}


def test_buffer_error_is_retried_after_polling():
    producer = FakeProducer({}, buffer_errors=3)
    packets = [packet(i) for i in range(4)]
    stats = fake_publish(packets, producer)
    assert stats.packets == 4
    assert [p["value"] for p in producer.produced] == [p.data for p in packets]
    assert producer.calls[1:8] == ["produce", "poll"] * 3 + ["produce"]


def test_failed_delivery_is_a_kafka_error_with_its_code():
    error = ck.KafkaError(ck.KafkaError._MSG_TIMED_OUT)
    producer = FakeProducer({}, fail=error)
    with pytest.raises(KafkaError) as info:
        fake_publish([packet(i) for i in range(10)], producer)
    assert info.value.code == ck.KafkaError._MSG_TIMED_OUT
    assert len(producer.produced) < 10  # publishing stopped at the first failure
    assert producer.calls[-1] == "flush" or "flush" in producer.calls


def test_stop_ends_an_endless_loop():
    stop = threading.Event()
    producer = FakeProducer({})
    calls = 0

    def source() -> list[EncodedPacket]:
        nonlocal calls
        calls += 1
        if calls == 3:
            stop.set()
        return [packet(0), packet(1)]

    stats = publish(
        source,
        "cam1",
        bootstrap_servers="x:1",
        loop=0,
        stop=stop,
        _producer_factory=lambda config: producer,
    )
    assert stats.packets == 4 and calls == 3


def test_an_empty_source_does_not_spin_forever():
    stats = fake_publish([], FakeProducer({}), loop=0, stop=threading.Event())
    assert stats.packets == 0


def test_progress_is_one_rewritten_line(capsys):
    fake_publish([packet(i) for i in range(5)], FakeProducer({}), progress=True)
    err = capsys.readouterr().err
    assert err.startswith("\r") and err.endswith("\n") and err.count("\n") == 1
    assert "5 packets" in err.rsplit("\r", 1)[-1]


@pytest.mark.parametrize("kwargs", [{"rate": "fast"}, {"loop": -1}, {"topic_template": "raw"}])
def test_bad_arguments_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        fake_publish([packet(0)], FakeProducer({}), **kwargs)


def test_a_stopped_source_is_closed():
    stop = threading.Event()
    closed = []

    def source() -> Iterator[EncodedPacket]:
        try:
            for i in range(100):
                if i == 3:
                    stop.set()
                yield packet(i)
        finally:
            closed.append(True)

    stats = publish(
        source, "cam1", bootstrap_servers="x:1", stop=stop, _producer_factory=FakeProducer
    )
    assert stats.packets == 3 and closed == [True]
