"""The front door's argument and state checks; no broker is needed for any of them."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from comux import (
    BrokerUnavailableError,
    Comux,
    ConfigError,
    StateError,
    UnknownCameraError,
    UnknownIndexError,
)


def test_unknown_cam_id_raises_key_error_naming_it():
    cameras = Comux(["a", "b"], "raw.:cam_id", "out.:cam_id")
    for call in (cameras.get, cameras.kill, lambda c: cameras.send(c, 0, {})):
        with pytest.raises(KeyError, match="nope") as info:
            call("nope")
        assert isinstance(info.value, UnknownCameraError)


def test_topic_names_follow_the_schemas():
    cameras = Comux(["a"], "raw.:cam_id", "out.:cam_id")
    assert cameras.get_topic_from_cam_id("a") == "raw.a"
    assert cameras.get_cam_id_from_topic("raw.a") == "a"


@pytest.mark.parametrize("cam_ids", ["cam1", [""], [3]])
def test_bad_cam_ids_raise(cam_ids):
    with pytest.raises(ConfigError):
        Comux(cam_ids)


def test_steps_out_of_order_raise_state_error():
    cameras = Comux(["a"])
    with pytest.raises(StateError, match="setup_consumers"):
        cameras.start()
    with pytest.raises(StateError, match="setup_producer"):
        cameras.send("a", 0, {})
    with pytest.raises(BrokerUnavailableError):
        cameras.setup_controller("control", "127.0.0.1:1", {}, connect_timeout=0.5)
    with pytest.raises(ConfigError):
        cameras.setup_controller("control", "127.0.0.1:1", {"x": "not callable"})


def test_unreachable_broker_raises_within_bounded_time_naming_servers():
    cameras = Comux(["a"])
    start = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match="127.0.0.1:1") as info:
        cameras.setup_consumers(["127.0.0.1:1"], connect_timeout=1.5)
    assert isinstance(info.value, ConnectionError)
    assert time.monotonic() - start < 10
    with pytest.raises(BrokerUnavailableError, match="127.0.0.1:1"):
        cameras.setup_producer("127.0.0.1:1", connect_timeout=1.5)
    cameras.close()


def test_unreachable_broker_without_strict_keeps_going():
    with Comux(["a"]) as cameras:
        cameras.setup_consumers("127.0.0.1:1", strict_on_fail=False, connect_timeout=0.5)
        cameras.setup_decoders(W=64, H=64)
        cameras.start()
        assert cameras.get_batch(timeout=0.05) is None
        assert set(cameras.threads) == {"a"}


def test_secrets_stay_out_of_reprs_and_errors():
    secret = {"sasl.password": "s3cr3t-sentinel"}
    cameras = Comux(["a"])
    with pytest.raises(BrokerUnavailableError) as info:
        cameras.setup_consumers("127.0.0.1:1", connect_timeout=0.5, **secret)
    assert "s3cr3t-sentinel" not in str(info.value)
    # Kept this time: the reprs of the objects that hold the secret are where it could leak.
    cameras.setup_consumers("127.0.0.1:1", strict_on_fail=False, connect_timeout=0.5, **secret)
    settings = cameras._consumer.settings
    assert settings.options["sasl.password"] == "s3cr3t-sentinel"  # planted where it could leak
    for shown in (repr(cameras), repr(cameras._consumer), repr(settings), str(settings)):
        assert "s3cr3t-sentinel" not in shown, shown
    cameras.close()


def test_bad_decoder_settings_are_refused_at_setup():
    cameras = Comux(["a"])
    with pytest.raises(ConfigError, match="policy"):
        cameras.setup_decoders(W=64, H=64, policy="newest")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="width"):
        cameras.setup_decoders(W=63, H=64)


@pytest.mark.parametrize(
    ("setting", "value"),
    [("fifo_depth", 0), ("fifo_depth", 2.5), ("stall_timeout", -1), ("buffers", 1)],
)
def test_bad_batching_settings_name_the_setting(setting, value):
    with pytest.raises(ConfigError, match=setting):
        Comux(["a"]).setup_decoders(W=64, H=64, **{setting: value})


def test_default_policy_follows_where_consuming_starts():
    for end, policy in ((True, "latest"), (False, "fifo")):
        with Comux(["a"]) as cameras:
            cameras.setup_consumers(
                "127.0.0.1:1", end=end, strict_on_fail=False, connect_timeout=0.1
            )
            cameras.setup_decoders(W=64, H=64)
            cameras.start()
            assert cameras._cameras["a"].policy == policy
    with Comux(["a"]) as cameras:  # an explicit policy wins
        cameras.setup_consumers("127.0.0.1:1", end=False, strict_on_fail=False, connect_timeout=0.1)
        cameras.setup_decoders(W=64, H=64, policy="latest")
        cameras.start()
        assert cameras._cameras["a"].policy == "latest"


def test_a_camera_not_assigned_yet_has_no_slot_and_get_times_out():
    with Comux(["a"]) as cameras:
        cameras.setup_consumers("127.0.0.1:1", strict_on_fail=False, connect_timeout=0.1)
        cameras.setup_decoders(W=64, H=64)
        with pytest.raises(StateError, match="call start"):
            cameras.get("a", timeout=0)
        cameras.start()
        assert "a" not in cameras._pool
        assert cameras.get("a", timeout=0.05) is None


def test_close_returns_within_its_timeout_while_a_model_waits():
    cameras = Comux(["a"])
    cameras.setup_consumers("127.0.0.1:1", strict_on_fail=False, connect_timeout=0.1)
    cameras.setup_decoders(W=64, H=64)
    cameras.start()
    waiting = threading.Thread(target=cameras.get_batch, kwargs={"timeout": 30})
    waiting.start()
    start = time.monotonic()
    cameras.close(timeout=2)
    assert time.monotonic() - start < 2.5
    waiting.join(2)
    assert not waiting.is_alive()  # close() woke the model's get_batch
    with pytest.raises(StateError, match="closed"):
        cameras.get_batch(timeout=0)


def test_send_checks_its_arguments_and_refuses_after_close(monkeypatch):
    cameras = Comux(["a"])
    cameras.setup_producer("127.0.0.1:1", strict_on_fail=False)
    with pytest.raises(ConfigError, match="must be an int"):
        cameras.send("a", "75", {})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="must be an int"):
        cameras.send("a", True, {})
    with pytest.raises(UnknownIndexError):
        cameras.send("a", np.int64(75), {})  # numpy ints from batch.indices are ints
    cameras.close(timeout=1)
    with pytest.raises(StateError, match="closed"):
        cameras.send("a", 75, {})


def test_start_group_and_commit_settings_are_checked():
    cameras = Comux(["a"])
    for bad in ({"start": "latest"}, {"group_id": ""}, {"commit_interval": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            cameras.setup_consumers("127.0.0.1:1", strict_on_fail=False, **bad)


def test_a_committed_start_defaults_to_fifo_and_configures_the_group():
    with Comux(["a"]) as cameras:
        cameras.setup_consumers(
            "127.0.0.1:1",
            start="committed",
            group_id="fleet",
            instance_id="worker-1",
            strict_on_fail=False,
            connect_timeout=0.1,
        )
        cameras.setup_decoders(W=64, H=64)
        cameras.start()
        assert cameras._cameras["a"].policy == "fifo"
        config = cameras._consumer.settings.librdkafka_config()
        assert config["group.id"] == "fleet"
        assert config["group.instance.id"] == "worker-1"
        assert config["enable.auto.commit"] is False
