"""The ``comux run`` configuration: errors name file and key, unknown keys, env overrides,
secrets kept out of reprs and errors, the model's import and its results."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from comux.errors import ConfigError
from comux.runconfig import (
    ConfigFileError,
    check_kafka_options,
    load_config,
    load_model,
)
from comux.runner import EXIT_CONFIG, ModelResultError, Runner, check, run, slot_headers, stop

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """
[cameras]
ids = ["cam1", "cam2"]

[consumer]
bootstrap_servers = "127.0.0.1:9092"

[model]
function = "mymodel:infer"
"""

MODEL = """
def infer(batch):
    return {}

def infer_with_state(batch, state):
    return [state] * len(batch.cam_ids)

def needs_three(batch, state, extra):
    return {}

def setup(size=1):
    return {"size": size}
"""

SECRET = "hunter2-Sup3rSecret"


def write(tmp_path: Path, text: str, name: str = "cfg.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    (tmp_path / "mymodel.py").write_text(MODEL)
    return path


def config_with(tmp_path: Path, extra: str, base: str = MINIMAL) -> Path:
    return write(tmp_path, base + "\n" + textwrap.dedent(extra))


def error_of(path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigFileError) as info:
        load_config(path, env=env or {})
    return str(info.value)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "COMUX_BOOTSTRAP_SERVERS",
        "COMUX_CONTROL_SECRET",
        "COMUX_SASL_PASSWORD",
        "COMUX_MONGO_URI",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _forget_model_modules() -> None:
    """Each test writes its own mymodel.py: never reuse another test's import."""
    sys.modules.pop("mymodel", None)


# -- loading --------------------------------------------------------------------------------------


def test_minimal_config_takes_the_library_defaults(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), env={})
    assert config.cameras.ids == ("cam1", "cam2")
    assert config.topics.consume == "raw.:cam_id" and config.topics.produce == "out.:cam_id"
    assert config.consumer.start == "end" and config.consumer.end
    assert config.consumer.max_offset_diff == 20 and config.consumer.group_id == "comux"
    assert config.decoder.rate == 10.0 and (config.decoder.width, config.decoder.height) == (
        1920,
        1080,
    )
    assert config.producer.bootstrap_servers == "127.0.0.1:9092"  # the consumer's
    assert config.control is None
    assert config.model.path == (str(tmp_path.resolve()),)  # the config's folder
    assert config.log.level == "INFO"
    assert config.metrics.port is None and config.metrics.host == "127.0.0.1"  # not served


def test_false_turns_rate_and_max_offset_diff_off(tmp_path):
    path = write(
        tmp_path,
        MINIMAL.replace(
            '[consumer]\nbootstrap_servers = "127.0.0.1:9092"',
            '[consumer]\nbootstrap_servers = ["a:1", "b:2"]\nmax_offset_diff = false\n'
            'start = "committed"\nfallback = "earliest"',
        )
        + '\n[decoder]\nrate = false\npolicy = "fifo"\n',
    )
    config = load_config(path, env={})
    assert config.decoder.rate is None and config.consumer.max_offset_diff is None
    assert config.consumer.bootstrap_servers == "a:1,b:2"
    assert not config.consumer.end  # committed, falling back to the earliest offset


def test_the_example_config_checks(capsys):
    assert check(ROOT / "examples" / "config.toml") == 0
    assert "OK" in capsys.readouterr().out
    # What the README's walkthrough relies on: two cameras and a control topic for `comux ctl`.
    config = load_config(ROOT / "examples" / "config.toml", env={})
    assert config.cameras.ids == ("cam1", "cam2")
    assert config.control is not None and config.control.topic == "comux.example.control"
    assert config.metrics.host == "127.0.0.1"


def test_metrics_table(tmp_path):
    text = '[metrics]\nport = 0\nhost = "0.0.0.0"\nbroker_timeout = 5\nbatch_timeout = 60\n'
    config = load_config(config_with(tmp_path, text), env={})
    assert config.metrics.port == 0 and config.metrics.host == "0.0.0.0"
    assert (config.metrics.broker_timeout, config.metrics.batch_timeout) == (5, 60)


@pytest.mark.parametrize("port", ["-1", "65536", '"9400"', "true", "1.5"])
def test_a_bad_metrics_port_names_the_key(tmp_path, port):
    message = error_of(config_with(tmp_path, f"[metrics]\nport = {port}\n"))
    assert "cfg.toml: metrics.port: must be an integer from 0" in message, message


def test_an_unknown_metrics_key_is_an_error(tmp_path):
    message = error_of(config_with(tmp_path, "[metrics]\nprot = 9400\n"))
    assert "cfg.toml: metrics.prot: unknown key (did you mean 'port'?)" in message, message


def test_the_command_lines_metrics_port_wins_over_the_files(tmp_path):
    config = load_config(config_with(tmp_path, "[metrics]\nport = 9400\n"), env={})
    model = load_model(config)
    assert Runner(config, model).metrics_port == 9400
    assert Runner(config, model, metrics_port=0).metrics_port == 0
    with pytest.raises(ConfigError, match="from 0 to 65535"):
        Runner(config, model, metrics_port=70000)


def test_a_metrics_port_in_use_exits_1_and_closes_the_comux(tmp_path, monkeypatch, capsys):
    import socket

    import comux.runner as runner

    closed: list[float] = []
    fake = SimpleNamespace(close=lambda timeout=None: closed.append(timeout))
    monkeypatch.setattr(runner, "build", lambda config, **kwargs: fake)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = load_config(config_with(tmp_path, ""), env={})
        code = Runner(config, load_model(config), metrics_port=port).execute()
    assert code == EXIT_CONFIG and closed
    assert f"metrics: cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "key", "text"),
    [
        ("[decoder]\nrate = -1", "decoder.rate", "must be > 0, got -1"),
        ("[decoder]\nrate = 0", "decoder.rate", "must be > 0, got 0"),
        ('[decoder]\nrate = "fast"', "decoder.rate", "must be a number or false, got 'fast'"),
        ("[decoder]\nwidth = 641", "decoder.width", "must be even, got 641"),
        ("[decoder]\nheight = 1.5", "decoder.height", "must be an integer"),
        ('[decoder]\npolicy = "newest"', "decoder.policy", "must be one of latest, fifo"),
        ('[decoder]\ncodec = "vp9"', "decoder.codec", "must be one of"),
        ("[decoder]\nbuffers = 1", "decoder.buffers", "must be >= 2, got 1"),
        ("[decoder]\nmax_wait = true", "decoder.max_wait", "must be a number, got True"),
        ("[decoder]\nrepeat_last = 1", "decoder.repeat_last", "must be true or false"),
        ('[topics]\nconsume = "raw"', "topics.consume", "':cam_id' exactly once"),
        ('[log]\nlevel = "LOUD"', "log.level", "must be one of"),
        ('[control]\nsecret = "x"', "control.topic", "missing"),
        ('[producer]\ntransactional_id = "w1"', "producer.transactional_id", "committed"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path, extra, key, text):
    message = error_of(config_with(tmp_path, extra))
    assert message.startswith(f"{tmp_path / 'cfg.toml'}: {key}: "), message
    assert text in message


def test_the_issue_example_message(tmp_path):
    path = config_with(tmp_path, "[decoder]\nrate = -1")
    assert error_of(path) == f"{path}: decoder.rate: must be > 0, got -1"


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        (MINIMAL.replace("[model]\nfunction", "[model]\nfunctoin"), "model.functoin", "unknown"),
        (MINIMAL + "\n[decoder]\nratee = 5\n", "decoder.ratee", "unknown key"),
        (MINIMAL + "\n[decoders]\nrate = 5\n", "decoders", "did you mean 'decoder'?"),
        (MINIMAL + "\n[decoder]\nfoo = 5\n", "decoder.foo", "known here: buffers, codec"),
        ("threads = 2\n" + MINIMAL, "threads", "unknown key"),
        (MINIMAL.replace('"]\n', '"]\nid = "x"\n', 1), "cameras.id", "unknown key"),
    ],
)
def test_unknown_keys_are_errors(tmp_path, text, key, fragment):
    message = error_of(write(tmp_path, text))
    assert f"cfg.toml: {key}: " in message and fragment in message, message


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        (MINIMAL.replace("[model]", "[mod]"), "mod", "did you mean 'model'?"),
        (MINIMAL.replace("[model]", "[xyz]"), "model", "missing"),
        (MINIMAL.replace('ids = ["cam1", "cam2"]', ""), "cameras.ids", "no cameras"),
        (MINIMAL.replace('ids = ["cam1", "cam2"]', 'ids = ["cam 1"]'), "cameras.ids", "valid"),
        (MINIMAL.replace('"cam2"', '"cam1"'), "cameras.ids", "twice"),
        (
            MINIMAL.replace('bootstrap_servers = "127.0.0.1:9092"', ""),
            "consumer.bootstrap_servers",
            "COMUX_BOOTSTRAP_SERVERS",
        ),
        (
            MINIMAL.replace('"mymodel:infer"', '"mymodel.infer"'),
            "model.function",
            "module:function",
        ),
        (
            MINIMAL + '\n[cameras.mongo]\ndatabase = "d"\ncollection = "c"\n',
            "cameras.ids",
            "not both",
        ),
    ],
)
def test_missing_and_contradicting_settings(tmp_path, text, key, fragment):
    message = error_of(write(tmp_path, text))
    assert f"cfg.toml: {key}: " in message and fragment in message, message


def test_not_toml_and_no_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[cameras\nids = 1\n")
    assert error_of(bad).startswith(f"{bad}: not valid TOML")
    assert error_of(tmp_path / "none.toml") == f"{tmp_path / 'none.toml'}: no such file"


def test_options_that_have_their_own_key_are_refused(tmp_path):
    message = error_of(config_with(tmp_path, '[consumer.options]\n"group.id" = "g"'))
    assert "consumer.options.group.id: set consumer.group_id instead" in message


# -- environment ----------------------------------------------------------------------------------


def test_environment_overrides_secrets(tmp_path):
    path = write(
        tmp_path,
        MINIMAL.replace('ids = ["cam1", "cam2"]', "")
        + """
[cameras.mongo]
uri = "mongodb://user:file-password@db:27017/"
database = "site"
collection = "cameras"
[cameras.mongo.query]
enabled = true

[control]
topic = "comux.control"
secret = "from-the-file"
""",
    )
    env = {
        "COMUX_CONTROL_SECRET": "from-env-secret",
        "COMUX_SASL_PASSWORD": "from-env-password",
        "COMUX_MONGO_URI": "mongodb://user:env-password@db2:27017/",
    }
    config = load_config(path, env=env)
    assert config.control is not None and config.control.secret == "from-env-secret"
    assert config.consumer.options["sasl.password"] == "from-env-password"
    assert config.producer.options["sasl.password"] == "from-env-password"
    assert config.cameras.mongo is not None
    assert config.cameras.mongo.uri == "mongodb://user:env-password@db2:27017/"
    assert config.cameras.mongo.query == {"enabled": True}
    # Without the environment, the file's values stand.
    config = load_config(path, env={})
    assert config.control is not None and config.control.secret == "from-the-file"
    assert "sasl.password" not in config.consumer.options


def test_bootstrap_servers_default_to_the_environment(tmp_path):
    path = write(tmp_path, MINIMAL.replace('bootstrap_servers = "127.0.0.1:9092"', ""))
    config = load_config(path, env={"COMUX_BOOTSTRAP_SERVERS": "k1:9092, k2:9092"})
    assert config.consumer.bootstrap_servers == "k1:9092,k2:9092"
    assert config.producer.bootstrap_servers == "k1:9092,k2:9092"


def test_mongo_uri_may_come_from_the_environment_only(tmp_path):
    path = write(
        tmp_path,
        MINIMAL.replace('ids = ["cam1", "cam2"]', "")
        + '\n[cameras.mongo]\ndatabase = "site"\ncollection = "cameras"\n',
    )
    assert "cameras.mongo.uri: missing (or set COMUX_MONGO_URI)" in error_of(path)
    config = load_config(path, env={"COMUX_MONGO_URI": "mongodb://db:27017/"})
    assert config.cameras.mongo is not None and config.cameras.mongo.uri == "mongodb://db:27017/"


# -- secrets --------------------------------------------------------------------------------------


def secret_config(tmp_path: Path) -> Path:
    return write(
        tmp_path,
        MINIMAL.replace('ids = ["cam1", "cam2"]', "")
        + f"""
[cameras.mongo]
uri = "mongodb://user:{SECRET}@db:27017/"
database = "site"
collection = "cameras"

[consumer.options]
"security.protocol" = "SASL_PLAINTEXT"
"sasl.mechanism" = "PLAIN"
"sasl.username" = "u"
"sasl.password" = "{SECRET}"

[control]
topic = "comux.control"
secret = "{SECRET}"
""",
    )


def test_secrets_never_in_reprs(tmp_path):
    config = load_config(secret_config(tmp_path), env={"COMUX_SASL_PASSWORD": SECRET})
    assert config.consumer.options["sasl.password"] == SECRET
    for shown in (repr(config), str(config), repr(config.consumer), repr(config.cameras)):
        assert SECRET not in shown
    assert "***" in repr(config.consumer.options)
    assert "user:***@db:27017" in repr(config.cameras.mongo)
    assert config.scrub(f"it said {SECRET} twice: {SECRET}") == "it said *** twice: ***"


@pytest.mark.parametrize(
    "extra",
    [
        f"[control]\ntopic = 't'\nsecret = [\"{SECRET}\"]",
        f'[producer.options]\n"sasl.password" = ["{SECRET}"]',
        f'[producer.options]\n"ssl.key.password" = {{ v = "{SECRET}" }}',
    ],
)
def test_secrets_never_in_errors(tmp_path, extra):
    message = error_of(config_with(tmp_path, extra))
    assert SECRET not in message
    assert "cfg.toml: " in message


def test_a_mongo_uri_that_is_no_uri_is_not_shown(tmp_path):
    path = write(
        tmp_path,
        MINIMAL.replace('ids = ["cam1", "cam2"]', "")
        + f'\n[cameras.mongo]\nuri = "{SECRET}"\ndatabase = "d"\ncollection = "c"\n',
    )
    message = error_of(path)
    assert "cameras.mongo.uri" in message and SECRET not in message


def test_librdkafka_refusals_name_the_table_and_hide_secrets(tmp_path):
    path = config_with(
        tmp_path, f'[producer.options]\n"sasl.password" = "{SECRET}"\n"linger.ms" = "soon"'
    )
    config = load_config(path, env={})
    load_model(config)
    with pytest.raises(ConfigFileError) as info:
        check_kafka_options(config)
    assert str(info.value).startswith(f"{path}: producer.options: ")
    assert SECRET not in str(info.value)


def test_check_prints_no_secret_and_logs_none(tmp_path, capsys, caplog):
    path = secret_config(tmp_path)
    with caplog.at_level(logging.DEBUG):
        code = check(path)
    out = capsys.readouterr()
    assert code == 0, out.err
    assert SECRET not in out.out + out.err
    assert all(SECRET not in r.getMessage() for r in caplog.records)


def test_cli_check_exits_1_naming_the_key(tmp_path):
    path = config_with(tmp_path, "[decoder]\nrate = -1")
    result = subprocess.run(
        [sys.executable, "-m", "comux", "run", "--check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"{path}: decoder.rate: must be > 0, got -1" in result.stderr


def test_run_with_an_unwritable_log_file_exits_with_the_config_code(tmp_path, capsys):
    path = write(tmp_path, MINIMAL)
    code = run(path, log_file=str(tmp_path / "missing" / "comux.log"))
    assert code == EXIT_CONFIG
    assert "cannot write the log file" in capsys.readouterr().err


# -- the model ------------------------------------------------------------------------------------


def test_model_is_called_with_state_when_it_takes_one(tmp_path):
    text = MINIMAL.replace("mymodel:infer", "mymodel:infer_with_state")
    path = write(tmp_path, text + 'setup = "mymodel:setup"\n[model.params]\nsize = 3\n')
    model = load_model(load_config(path, env={}))
    assert model.takes_state
    state = model.start()
    assert state == {"size": 3}
    assert model.call(SimpleNamespace(cam_ids=["a", "b"]), state) == [state, state]
    assert not load_model(load_config(write(tmp_path, MINIMAL), env={})).takes_state


@pytest.mark.parametrize(
    ("model", "extra", "key", "fragment"),
    [
        ("nomodule:infer", "", "model.function", "no module named 'nomodule'"),
        ("mymodel:missing", "", "model.function", "has no 'missing'"),
        ("mymodel:needs_three", "", "model.function", "needs 3 arguments"),
        ("mymodel:infer", "[model.params]\nsize = 3", "model.params", "set it too"),
        (
            "mymodel:infer",
            'setup = "mymodel:setup"\n[model.params]\ncolour = 3',
            "model.params",
            "cannot take them",
        ),
    ],
)
def test_model_errors_name_the_key(tmp_path, model, extra, key, fragment):
    path = write(tmp_path, MINIMAL.replace("mymodel:infer", model) + extra + "\n")
    with pytest.raises(ConfigFileError) as info:
        load_model(load_config(path, env={}))
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: ") and fragment in message, message


def test_a_model_that_fails_to_import_is_a_config_error(tmp_path):
    path = write(tmp_path, MINIMAL)
    (tmp_path / "mymodel.py").write_text("raise RuntimeError('no weights')\n")
    with pytest.raises(ConfigFileError, match="model.function: importing 'mymodel' failed"):
        load_model(load_config(path, env={}))


# -- the model's results --------------------------------------------------------------------------


def fake_batch() -> SimpleNamespace:
    return SimpleNamespace(
        cam_ids=["a", "b", "c"],
        indices=np.array([10, -1, 12]),
        valid=np.array([True, False, True]),
    )


def test_results_by_camera_and_by_slot():
    batch = fake_batch()
    assert slot_headers(batch, {"a": {"n": 1}}) == [("a", 10, {"n": 1}), ("c", 12, None)]
    assert slot_headers(batch, [{"n": 1}, None, {"n": 3}]) == [
        ("a", 10, {"n": 1}),
        ("c", 12, {"n": 3}),
    ]


@pytest.mark.parametrize(
    ("result", "fragment"),
    [
        (None, "must return a mapping"),
        ({"z": {}}, "'z', which is not in the batch"),
        ([{}, {}], "2 results for a batch of 3"),
        ({"a": 5}, "must be a mapping or None"),
        ({"a": {"comux-source-offset": "1"}}, "reserved"),
        ({"a": {"x": object()}}, "headers for 'a'"),
    ],
)
def test_results_that_are_not_headers(result, fragment):
    with pytest.raises(ModelResultError, match=fragment):
        slot_headers(fake_batch(), result)


def test_stop_without_a_running_process(tmp_path, capsys):
    assert stop(tmp_path / "none.pid", timeout=1) == 1
    (tmp_path / "junk.pid").write_text("not a pid\n")
    assert stop(tmp_path / "junk.pid", timeout=1) == 1
    assert "no comux run is running" in capsys.readouterr().err
