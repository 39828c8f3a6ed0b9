"""The ``comux`` command without a broker: help texts, first-contact errors, ``comux ctl``'s
value, table and exit codes (against librdkafka's mock cluster)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import socket
import threading
import time
from collections.abc import Iterator

import confluent_kafka as ck
import pytest

import comux.broker
from comux.cli import _parser, main
from comux.control import REQUEST_ID_HEADER
from comux.ctl import EXIT_ERROR, EXIT_NO_REPLY, EXIT_OK, build_value, format_replies
from comux.errors import ConfigError

# -- help -----------------------------------------------------------------------------------------


def _parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_flag_of_every_verb_has_help_and_shows_its_default():
    seen = 0
    for path, parser in _parsers(_parser()):
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            seen += 1
            name = " ".join(path) + " " + "/".join(action.option_strings or [action.dest])
            assert action.help, f"comux {name} has no help text"
            default = action.default
            if action.option_strings and default not in (None, False, argparse.SUPPRESS):
                shown = default if isinstance(default, str) else repr(default)
                assert f"(default: {shown})" in " ".join(text.split()), f"comux {name}"
    assert seen > 30


def test_help_has_no_raw_restructuredtext():
    for path, parser in _parsers(_parser()):
        text = parser.format_help()
        for markup in ("``", ":param", ":func:", ":class:", ":meth:"):
            assert markup not in text, f"comux {' '.join(path)} --help shows {markup!r}"


# -- first contact --------------------------------------------------------------------------------


def test_publishing_a_missing_file_says_so_in_one_line(capsys, tmp_path):
    code = main(["publish", str(tmp_path / "missing.mp4"), "--cam-id", "a"])
    out, err = capsys.readouterr()
    assert code != 0
    assert out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "missing.mp4" in lines[0] and "No such file" in lines[0]
    assert "Traceback" not in err and "packets" not in err


def test_an_unwritable_log_file_says_so_in_one_line(capsys, tmp_path):
    where = tmp_path / "no-such-dir" / "comux.log"
    code = main(["--log-file", str(where), "top", "--once", "--metrics", "127.0.0.1:1"])
    out, err = capsys.readouterr()
    assert out == ""
    assert code == 1
    assert err == f"comux: cannot write the log file {where}: No such file or directory\n"


def test_kafka_up_on_a_busy_port_names_the_flags(capsys, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["kafka", "up", "--dir", str(tmp_path), "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 1
    assert str(port) in err and "--port" in err and "--bootstrap-servers" in err
    assert "Traceback" not in err


def test_demo_takes_a_free_port_when_9092_is_taken(monkeypatch, capsys):
    ports: list[int] = []

    class Stop(Exception):
        pass

    class FakeKafka:
        def __init__(self, directory, *, port):
            self.port = port

        def status(self):
            return None

        def up(self, **_):
            ports.append(self.port)
            raise Stop

    monkeypatch.setattr(comux.broker, "LocalKafka", FakeKafka)
    monkeypatch.delenv("COMUX_BOOTSTRAP_SERVERS", raising=False)
    from comux.demo import run_demo

    with contextlib.ExitStack() as stack:
        if comux.broker.pick_port(9092) == 9092:  # make it taken
            holder = stack.enter_context(socket.socket())
            holder.bind(("127.0.0.1", 9092))
            holder.listen()
        with pytest.raises(Stop):
            run_demo(seconds=0)
        with pytest.raises(Stop):
            run_demo(seconds=0, port=9092)  # an explicit port is used as it is
    assert ports[0] != 9092 and ports[1] == 9092
    assert "9092 is taken" in capsys.readouterr().err


# -- comux ctl ------------------------------------------------------------------------------------


def test_the_value_merges_cam_ids_into_the_json_given():
    assert build_value(["a", "b"], None) == {"cam_ids": ["a", "b"]}
    assert build_value(["a"], '{"rate": 5}') == {"rate": 5, "cam_ids": ["a"]}
    assert build_value(None, '{"cam_ids": ["x"]}') == {"cam_ids": ["x"]}
    assert build_value(None, None) == {}
    for bad in ("[1]", "{nope", '"text"'):
        with pytest.raises(ConfigError, match="--value"):
            build_value(None, bad)
    with pytest.raises(ConfigError, match="twice"):
        build_value(["a"], '{"cam_ids": ["b"]}')


def test_the_table_shows_instance_status_and_result_or_error():
    text = format_replies(
        [
            {"instance": "edge-1", "status": "ok", "result": {"created": ["camX"]}},
            {"instance": "edge-22", "status": "error", "error": "unknown cam ids: 'q'"},
            {"instance": "e3", "status": "ok", "result": "x" * 1000, "duplicate": True},
        ]
    )
    lines = text.splitlines()
    assert lines[0].split() == ["instance", "status", "result", "/", "error"]
    assert lines[1].split(None, 2) == ["edge-1", "ok", '{"created": ["camX"]}']
    assert lines[2].split(None, 2) == ["edge-22", "error", "unknown cam ids: 'q'"]
    assert "ok (duplicate)" in lines[3] and lines[3].endswith("…") and len(lines[3]) < 400


def test_the_secret_comes_from_the_environment_only(capsys, monkeypatch):
    monkeypatch.delenv("COMUX_TEST_NO_SECRET", raising=False)
    code = main(
        ["ctl", "list", "--topic", "t", "--bootstrap-servers", "127.0.0.1:1"]
        + ["--secret-env", "COMUX_TEST_NO_SECRET"]
    )
    assert code == 1
    assert "COMUX_TEST_NO_SECRET" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # there is no flag that takes the secret itself
        main(["ctl", "list", "--topic", "t", "--secret", "x"])


def test_ctl_gives_up_on_an_unreachable_broker_after_its_connect_timeout(capsys):
    code = main(
        ["ctl", "list", "--topic", "t", "--bootstrap-servers", "127.0.0.1:1"]
        + ["--connect-timeout", "0.5"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("comux: no Kafka broker answered at 127.0.0.1:1 within 0.5 s")
    assert err.count("\n") == 1


class Responder:
    """A stand-in instance on the mock cluster: answers every control message it reads."""

    def __init__(self, bootstrap: str, topic: str, status: str) -> None:
        self.bootstrap, self.topic, self.status = bootstrap, topic, status
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        consumer = ck.Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"responder-{self.topic}",
                "auto.offset.reset": "earliest",
                "log_level": 0,
            }
        )
        consumer.subscribe([self.topic])
        producer = ck.Producer({"bootstrap.servers": self.bootstrap, "log_level": 0})
        while not self.stop.is_set():
            msg = consumer.poll(0.1)
            if msg is None or msg.error() or msg.key() != b"create":
                continue
            request_id = dict(msg.headers())[REQUEST_ID_HEADER].decode()
            body = {"action": "create", "id": request_id, "instance": "fake", "status": self.status}
            body.update(
                {"result": json.loads(msg.value())} if self.status == "ok" else {"error": "refused"}
            )
            producer.produce(f"{self.topic}.replies", json.dumps(body).encode(), b"create")
            producer.flush(5)
        consumer.close()


@pytest.fixture
def responder(mock_cluster) -> Iterator[callable]:
    made: list[Responder] = []

    def make(status: str) -> str:
        topic = f"ctl-{status}-{len(made)}-{time.monotonic_ns()}"
        setup = ck.Producer({"bootstrap.servers": mock_cluster, "log_level": 0})
        for name in (topic, f"{topic}.replies"):  # topics exist before anyone listens
            setup.produce(name, b"{}", b"noop")
        setup.flush(10)
        made.append(Responder(mock_cluster, topic, status))
        made[-1].thread.start()
        return topic

    yield make
    for r in made:
        r.stop.set()
        r.thread.join(5)


def _ctl(mock_cluster: str, topic: str, *extra: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(
            ["ctl", "create", "--cam-ids", "camX", "--topic", topic]
            + ["--bootstrap-servers", mock_cluster, *extra]
        )
    return code, out.getvalue(), err.getvalue()


def test_ctl_exit_codes_follow_the_replies(mock_cluster, responder):
    code, out, _ = _ctl(mock_cluster, responder("ok"), "--wait", "20", "--json")
    assert code == EXIT_OK
    [reply] = json.loads(out)
    assert reply["instance"] == "fake" and reply["result"] == {"cam_ids": ["camX"]}

    code, out, _ = _ctl(mock_cluster, responder("error"), "--wait", "20")
    assert code == EXIT_ERROR
    assert "refused" in out and "fake" in out

    started = time.monotonic()
    code, out, err = _ctl(mock_cluster, "ctl-nobody-listens", "--wait", "1")
    assert code == EXIT_NO_REPLY
    assert time.monotonic() - started < 8
    assert "no reply" in err and "ctl-nobody-listens" in err
