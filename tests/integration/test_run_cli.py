"""`comux run CONFIG.toml` as a real process: results out, a graceful SIGTERM, exit codes.

Each test starts ``python -m comux run`` against the session broker and watches what it does
from outside: the output topic, the group's committed offset, the log and pid files.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from comux.media import synthetic_packets
from comux.publish import publish, publish_forever
from comux.results import SOURCE_HEADERS
from comux.top import fetch, parse
from tests.fleet_helpers import poll_until, unique, wait_until
from tests.scale_helpers import committed_offsets

FRAMES, GOP = 40, 10
SECRET = "Sup3r-s3cret-value"

MODEL = """
import os
import pathlib
import threading


def infer(batch):
    return {
        cam_id: {"mean": round(float(frame.mean()), 2)}
        for cam_id, frame, valid in zip(batch.cam_ids, batch.frames, batch.valid)
        if valid
    }


def broken(batch):
    raise ValueError("the model broke")


def stuck(batch):
    pathlib.Path(os.environ["COMUX_TEST_STUCK"]).touch()
    threading.Event().wait()  # a model that never returns (a hung GPU call)
"""


class Run:
    """A ``comux run`` subprocess with its files in ``folder``."""

    def __init__(self, folder: Path, config: Path, *args: str, env: dict[str, str] | None = None):
        self.folder = folder
        self.pid_file = folder / "comux.pid"
        self.log_file = folder / "comux.log"
        self.stdout = open(folder / "stdout.txt", "w")  # files: a full pipe would block it
        self.stderr = open(folder / "stderr.txt", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "comux", "run", str(config)]
            + ["--pid-file", str(self.pid_file), "--log-file", str(self.log_file), *args],
            stdout=self.stdout,
            stderr=self.stderr,
            env={**os.environ, **(env or {})},
        )

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def err(self) -> str:
        self.stderr.flush()
        return (self.folder / "stderr.txt").read_text()

    def describe(self) -> str:
        return f"exit {self.proc.poll()}; stderr:\n{self.err()[-3000:]}\nlog:\n{self.log()[-3000:]}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.stdout.close()
        self.stderr.close()


@pytest.fixture
def runs():
    started: list[Run] = []

    def start(*args: Any, **kwargs: Any) -> Run:
        run = Run(*args, **kwargs)
        started.append(run)
        return run

    yield start
    for run in started:
        run.close()


def write_config(
    folder: Path, bootstrap: str, cam: str, group: str, *, model: str = "runmodel:infer", **extra
) -> Path:
    (folder / "runmodel.py").write_text(MODEL)
    consumer_extra = extra.pop("consumer", "")
    path = folder / "cfg.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [cameras]
            ids = ["{cam}"]

            [consumer]
            bootstrap_servers = "{bootstrap}"
            start = "earliest"
            group_id = "{group}"
            max_offset_diff = false
            {consumer_extra}

            [decoder]
            rate = false
            width = 160
            height = 120
            policy = "fifo"
            max_wait = 0.1

            [model]
            function = "{model}"
            """
        )
        + extra.pop("tail", "")
    )
    assert not extra
    return path


def publish_backlog(bootstrap: str, cam: str) -> None:
    publish(
        lambda: synthetic_packets(160, 120, FRAMES, fps=25, gop=GOP, bframes=0),
        cam,
        bootstrap_servers=bootstrap,
        rate="max",
    )


class Reader:
    """Reads a topic from its start, accumulating what came so far."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": unique("reader"),
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        self.consumer.assign([TopicPartition(topic, 0, 0)])
        self.messages: list[Any] = []

    def read(self) -> list[Any]:
        while (msg := self.consumer.poll(0.1)) is not None:
            if not msg.error():
                self.messages.append(msg)
        return self.messages

    def close(self) -> None:
        self.consumer.close()


def committed(bootstrap: str, group: str, topic: str) -> int:
    return committed_offsets(bootstrap, group, [topic])[topic]


def test_run_delivers_results_and_stops_cleanly_on_sigterm(kafka_broker, tmp_path, runs):
    bootstrap = kafka_broker.bootstrap
    cam, group = unique("run"), unique("comux-run")
    publish_backlog(bootstrap, cam)
    # Secrets from the environment, and a signed control topic, logged at DEBUG.
    control = f'\n[control]\ntopic = "{unique("control")}"\ninstance_id = "{cam}"\n'
    config = write_config(tmp_path, bootstrap, cam, group, tail=control)
    env = {"COMUX_SASL_PASSWORD": SECRET, "COMUX_CONTROL_SECRET": SECRET + "-control"}
    run = runs(tmp_path, config, "--grace", "10", "--log-level", "DEBUG", env=env)
    reader = Reader(bootstrap, f"out.{cam}")
    try:
        wait_until(
            lambda: len(reader.read()) >= FRAMES or run.proc.poll() is not None,
            90,
            lambda: f"{len(reader.messages)} results; {run.describe()}",
        )
        assert run.proc.poll() is None, run.describe()
        assert run.pid_file.read_text().strip() == str(run.proc.pid)

        # `comux stop` sends SIGTERM and waits for the process to go.
        stopped_at = time.monotonic()
        stop = subprocess.run(
            [sys.executable, "-m", "comux", "stop", "--pid-file", str(run.pid_file)]
            + ["--timeout", "30"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        code = run.proc.wait(30)
        elapsed = time.monotonic() - stopped_at
        assert stop.returncode == 0, stop.stderr
        assert code == 0, run.describe()
        assert elapsed < 10, f"stopping took {elapsed:.1f} s"
        assert not run.pid_file.exists()

        results = reader.read()
        offsets = sorted(int(dict(m.headers())[SOURCE_HEADERS[2]]) for m in results)
        assert offsets == list(range(FRAMES))  # every frame once, fifo
        assert all("mean" in dict(m.headers()) for m in results)
    finally:
        reader.close()

    log = run.log()
    assert SECRET not in log + run.err() + (tmp_path / "stdout.txt").read_text()
    assert "'sasl.password': '***'" in log  # the configuration, redacted, at DEBUG
    assert f"comux run {config}" in log
    assert "stopping (SIGTERM received)" in log
    assert "stopped: " in log and f"{FRAMES} results sent" in log
    # Delivered results are committed: a restart resumes at the last GOP's keyframe at most.
    point = committed(bootstrap, group, f"raw.{cam}")
    last = max(offsets)
    assert (last // GOP) * GOP <= point <= last + 1, point


def test_a_config_error_exits_1_naming_the_key(tmp_path, runs):
    config = write_config(tmp_path, "127.0.0.1:1", "cam1", "g", tail="[decoder2]\nrate = 5\n")
    run = runs(tmp_path, config)
    assert run.proc.wait(60) == 1
    assert f"{config}: decoder2: unknown key" in run.err()
    assert not run.pid_file.exists()


def test_an_unreachable_broker_exits_2_quickly(tmp_path, runs):
    config = write_config(
        tmp_path, "127.0.0.1:1", "cam1", unique("g"), consumer="connect_timeout = 2"
    )
    started = time.monotonic()
    run = runs(tmp_path, config)
    assert run.proc.wait(60) == 2, run.describe()
    assert time.monotonic() - started < 20
    assert "127.0.0.1:1" in run.err()
    assert not run.pid_file.exists()


@pytest.mark.parametrize("how", ["second-signal", "grace-over"])
def test_a_stuck_model_is_forced_out_with_exit_3(kafka_broker, tmp_path, runs, how):
    bootstrap = kafka_broker.bootstrap
    cam = unique("stuck")
    publish_backlog(bootstrap, cam)
    config = write_config(tmp_path, bootstrap, cam, unique("comux-run"), model="runmodel:stuck")
    marker = tmp_path / "in-the-model"
    grace = "60" if how == "second-signal" else "2"
    run = runs(tmp_path, config, "--grace", grace, env={"COMUX_TEST_STUCK": str(marker)})
    wait_until(lambda: marker.exists() or run.proc.poll() is not None, 90, lambda: run.describe())
    assert run.proc.poll() is None, run.describe()
    run.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "stopping (SIGTERM received)" in run.log(), 20, run.describe)
    signalled = time.monotonic()
    if how == "second-signal":
        # Still there, waiting for the model, until the second signal.
        assert not poll_until(lambda: run.proc.poll() is not None, 1.0), run.describe()
        run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(30) == 3, run.describe()
    assert time.monotonic() - signalled < (5 if how == "second-signal" else 8)
    assert "forced exit" in run.log()
    assert not run.pid_file.exists()


def test_a_model_that_raises_stops_the_run_with_exit_4(kafka_broker, tmp_path, runs):
    bootstrap = kafka_broker.bootstrap
    cam, group = unique("broken"), unique("comux-run")
    publish_backlog(bootstrap, cam)
    config = write_config(tmp_path, bootstrap, cam, group, model="runmodel:broken")
    run = runs(tmp_path, config)
    assert run.proc.wait(60) == 4, run.describe()
    log = run.log()
    assert "ValueError: the model broke" in log and "stopping (the model failed)" in log
    assert committed(bootstrap, group, f"raw.{cam}") <= 0  # a restart reads the batch again
    assert not run.pid_file.exists()


def test_the_example_config_runs_live_and_stops_on_sigint(kafka_broker, tmp_path, runs):
    """examples/config.toml and examples/model.py, pointed at the session broker."""
    bootstrap = kafka_broker.bootstrap
    cam = unique("example")
    root = Path(__file__).resolve().parents[2] / "examples"
    text = (root / "config.toml").read_text()
    text = text.replace("127.0.0.1:9092", bootstrap).replace('["cam1", "cam2"]', f'["{cam}"]')
    text = text.replace('"comux-example"', f'"{unique("comux-example")}"')
    text = text.replace('"comux.example.control"', f'"{unique("example-control")}"')
    config = tmp_path / "config.toml"
    config.write_text(text)
    (tmp_path / "model.py").write_text((root / "model.py").read_text())
    stop = threading.Event()
    clip = list(synthetic_packets(160, 120, 50, fps=25, gop=25, bframes=2))
    publishers = publish_forever(clip, [cam], bootstrap_servers=bootstrap, stop=stop)
    reader = Reader(bootstrap, f"out.{cam}")
    try:
        run = runs(tmp_path, config)
        wait_until(lambda: len(reader.read()) >= 5 or run.proc.poll() is not None, 90, run.describe)
        run.proc.send_signal(signal.SIGINT)
        assert run.proc.wait(30) == 0, run.describe()
        headers = dict(reader.read()[0].headers())
        assert float(headers["brightness"]) >= 0 and headers["bright"] in (b"true", b"false")
    finally:
        stop.set()
        for thread in publishers:
            thread.join(10)
        reader.close()
    assert "stopping (SIGINT received)" in run.log()


def example_config(folder: Path, bootstrap: str, cams: list[str], control_topic: str) -> Path:
    """examples/config.toml (and model.py) in ``folder``, on the session broker, its own names."""
    root = Path(__file__).resolve().parents[2] / "examples"
    text = (root / "config.toml").read_text()
    for old, new in (
        ("127.0.0.1:9092", bootstrap),
        ('["cam1", "cam2"]', "[" + ", ".join(f'"{c}"' for c in cams) + "]"),
        ('"comux-example"', f'"{unique("comux-walk")}"'),
        ('"comux.example.control"', f'"{control_topic}"'),
        ('instance_id = "example"', f'instance_id = "{unique("walk")}"'),
    ):
        assert old in text, f"examples/config.toml no longer holds {old!r}"
        text = text.replace(old, new)
    config = folder / "config.toml"
    config.write_text(text)
    (folder / "model.py").write_text((root / "model.py").read_text())
    return config


def publisher(bootstrap: str, cam: str) -> subprocess.Popen[bytes]:
    """``comux publish --synthetic ... --loop 0`` in the background: a live camera."""
    return subprocess.Popen(
        [sys.executable, "-m", "comux", "publish", "--synthetic", "160x120"]
        + ["--frames", "50", "--gop", "25", "--bframes", "0", "--loop", "0"]
        + ["--no-progress", "--cam-id", cam, "--bootstrap-servers", bootstrap],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def comux_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "comux", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},  # rich: no camera id folded over two lines
    )


def test_the_walkthrough_metrics_ctl_top_and_sigterm(kafka_broker, tmp_path, runs):
    """README's walkthrough with real processes: publish two cameras, `comux run` the example
    with --metrics-port 0, scrape it, add a camera with `comux ctl`, see it in `comux top`,
    and stop on SIGTERM."""
    bootstrap = kafka_broker.bootstrap
    cams, new = [unique("walk"), unique("walk")], unique("walk-new")
    control = unique("walk-control")
    config = example_config(tmp_path, bootstrap, cams, control)
    publishers = [publisher(bootstrap, cam) for cam in cams]
    try:
        run = runs(tmp_path, config, "--metrics-port", "0", "--grace", "10")
        stdout = tmp_path / "stdout.txt"

        def url() -> str | None:
            found = re.search(r"^comux: metrics on (http://\S+/metrics)$", stdout.read_text(), re.M)
            assert run.proc.poll() is None, run.describe()
            return found.group(1) if found else None

        metrics = wait_until(url, 30, run.describe)

        def delivered(cam_ids: list[str]) -> bool:
            snap = parse(fetch(metrics))
            return all(
                snap.cameras.get(c, {}).get("comux_frames_delivered_total", 0) > 0 for c in cam_ids
            )

        wait_until(lambda: delivered(cams), 30, lambda: f"no frames of {cams}; {run.describe()}")

        done = comux_cli(
            "ctl", "create", "--cam-ids", new, "--topic", control, "--wait", "30",
            "--bootstrap-servers", bootstrap,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "ok" in done.stdout and new in done.stdout
        wait_until(lambda: new in parse(fetch(metrics)).cameras, 10, "no series of the new camera")
        publishers.append(publisher(bootstrap, new))
        wait_until(lambda: delivered([new]), 30, lambda: f"no frames of {new}; {run.describe()}")

        top = comux_cli("top", "--metrics", metrics, "--once")
        assert top.returncode == 0, top.stdout + top.stderr
        for cam in (*cams, new):
            assert cam in top.stdout, top.stdout

        signalled = time.monotonic()
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(15) == 0, run.describe()
        assert time.monotonic() - signalled < 10, "not stopped within the grace period"
        assert not run.pid_file.exists()
    finally:
        for proc in publishers:
            proc.terminate()
        for proc in publishers:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    log = run.log()
    assert f"comux run {config} (pid {run.proc.pid})" in log
    assert "metrics on http://127.0.0.1:" in log
    assert "stopping (SIGTERM received)" in log and "stopped: " in log
