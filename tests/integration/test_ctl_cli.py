"""`comux ctl` as a real process against the real broker and a running Comux."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from comux import Comux
from tests.groups import own_group

SECRET_ENV = "COMUX_TEST_CTL_SECRET"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ctl(bootstrap: str, topic: str, *args: str, env: dict[str, str] | None = None):
    """Run ``python -m comux ctl ...``; return the finished process and how long it took."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "comux", "ctl", *args]
        + ["--topic", topic, "--bootstrap-servers", bootstrap],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    return done, time.monotonic() - started


@pytest.fixture
def instance(kafka_broker) -> Iterator[Callable[..., tuple[str, Comux]]]:
    """``instance(**control)``: a running Comux with a controller on a new topic."""
    made: list[Comux] = []

    def make(**control) -> tuple[str, Comux]:
        topic = unique("ctl-cli")
        comux = Comux([unique("cam")], "raw.:cam_id", "out.:cam_id", "WARNING")
        made.append(comux)
        comux.setup_consumers(kafka_broker.bootstrap, end=True, **own_group())
        comux.setup_decoders(rate=None, W=160, H=120, max_wait=0.5)
        ready = comux.setup_controller(topic, kafka_broker.bootstrap, **control).ready
        comux.start()
        assert ready.wait(30), "the controller never got its partition"
        return topic, comux

    yield make
    for comux in made:
        comux.close()


def test_create_adds_the_camera_and_prints_the_reply(kafka_broker, instance):
    topic, comux = instance(instance_id="edge-1")
    cam = unique("camX")
    done, _ = ctl(kafka_broker.bootstrap, topic, "create", "--cam-ids", cam, "--wait", "30")
    assert done.returncode == 0, done.stderr
    assert cam in comux.cam_ids
    assert "edge-1" in done.stdout and "ok" in done.stdout and cam in done.stdout

    done, _ = ctl(kafka_broker.bootstrap, topic, "list", "--json", "--wait", "30")
    assert done.returncode == 0, done.stderr
    [reply] = json.loads(done.stdout)
    assert reply["instance"] == "edge-1" and cam in reply["result"]["cam_ids"]


def test_an_error_reply_exits_1(kafka_broker, instance):
    topic, _comux = instance(instance_id="edge-2")
    done, _ = ctl(kafka_broker.bootstrap, topic, "pause", "--cam-ids", "nope", "--wait", "30")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "error" in done.stdout and "nope" in done.stdout
    done, _ = ctl(
        kafka_broker.bootstrap,
        topic,
        "update",
        "--value",
        '{"rate": -1}',
        "--json",
        "--wait",
        "30",
    )
    assert done.returncode == 1
    assert "rate" in json.loads(done.stdout)[0]["error"]


def test_no_instance_exits_4_within_the_wait(kafka_broker):
    done, took = ctl(kafka_broker.bootstrap, unique("ctl-nobody"), "list", "--wait", "2")
    assert done.returncode == 4, done.stdout + done.stderr
    assert "no reply" in done.stderr
    assert took < 2 + 15  # the wait, plus starting Python and connecting


def test_signed_mode_takes_the_secret_from_the_environment(kafka_broker, instance):
    secret = uuid.uuid4().hex
    topic, comux = instance(instance_id="edge-3", secret=secret)
    cam = unique("signed")
    done, _ = ctl(
        kafka_broker.bootstrap,
        topic,
        "create",
        "--cam-ids",
        cam,
        "--secret-env",
        SECRET_ENV,
        "--target",
        "edge-3",
        "--wait",
        "30",
        env={SECRET_ENV: secret},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert cam in comux.cam_ids
    assert secret not in done.stdout + done.stderr
    # unsigned, or signed with another secret: refused with an error reply
    done, _ = ctl(kafka_broker.bootstrap, topic, "list", "--wait", "30")
    assert done.returncode == 1 and "unsigned" in done.stdout
    done, _ = ctl(
        kafka_broker.bootstrap,
        topic,
        "list",
        "--secret-env",
        SECRET_ENV,
        "--wait",
        "30",
        env={SECRET_ENV: "not-the-secret"},
    )
    assert done.returncode == 1 and "bad signature" in done.stdout
