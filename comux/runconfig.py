"""The TOML file of ``comux run``: its schema, loading and validation into typed settings.

Every error names the file and the key (``config.toml: decoder.rate: must be > 0, got -1``);
unknown keys are errors. Secrets (``control.secret``, passwords in ``*.options``, the MongoDB
URI) may come from the environment instead and never appear in reprs or error messages:

- ``COMUX_CONTROL_SECRET`` sets ``control.secret``;
- ``COMUX_SASL_PASSWORD`` sets ``sasl.password`` in ``consumer.options`` and ``producer.options``;
- ``COMUX_MONGO_URI`` sets ``cameras.mongo.uri``;
- ``COMUX_BOOTSTRAP_SERVERS`` is used where ``consumer.bootstrap_servers`` is left out.

Example::

    config = load_config("config.toml")     # raises ConfigFileError
    model = load_model(config)              # imports model.function (and model.setup)
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import math
import os
import re
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from .annexb import CODECS
from .batching import POLICIES, Policy
from .config import (
    BOOTSTRAP_ENV,
    CAM_ID_PATTERN,
    TopicSchema,
    is_secret,
    redact,
    resolve_bootstrap_servers,
)
from .consuming import START
from .decoding import PIX_FMTS, PixFmt
from .errors import ConfigError
from .registry import _split_uri, redact_uri

__all__ = [
    "CONTROL_SECRET_ENV",
    "MONGO_URI_ENV",
    "SASL_PASSWORD_ENV",
    "CameraSettings",
    "ConfigFileError",
    "ConsumerSettings",
    "ControlSettings",
    "DecoderSettings",
    "LogSettings",
    "MetricsSettings",
    "Model",
    "ModelSettings",
    "MongoSettings",
    "Options",
    "ProducerSettings",
    "RunConfig",
    "TopicSettings",
    "check_kafka_options",
    "load_config",
    "load_model",
]

CONTROL_SECRET_ENV = "COMUX_CONTROL_SECRET"
SASL_PASSWORD_ENV = "COMUX_SASL_PASSWORD"
MONGO_URI_ENV = "COMUX_MONGO_URI"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")

OptionValue = str | int | float | bool


class ConfigFileError(ConfigError):
    """A value of the run configuration is missing, unknown or wrong; names file and key."""

    def __init__(self, path: str, key: str, message: str) -> None:
        super().__init__(f"{path}: {key}: {message}" if key else f"{path}: {message}")
        self.path = path
        self.key = key


class Options(dict[str, OptionValue]):
    """librdkafka options, passed through untouched; the repr hides secret values."""

    def __repr__(self) -> str:
        return repr(redact(self))

    __str__ = __repr__


# -- the settings ---------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class MongoSettings:
    """``[cameras.mongo]``: the registry the cameras are read from (and followed)."""

    uri: str
    database: str
    collection: str
    query: dict[str, Any] = field(default_factory=dict)
    field: str = "cam_id"
    sync_interval: float | None = 30.0  # seconds between registry syncs; None: read once

    def __repr__(self) -> str:
        return (
            f"MongoSettings(uri={redact_uri(self.uri)!r}, database={self.database!r}, "
            f"collection={self.collection!r}, query={self.query!r}, field={self.field!r}, "
            f"sync_interval={self.sync_interval!r})"
        )


@dataclass(frozen=True)
class CameraSettings:
    """``[cameras]``: listed ids, a topic pattern, or a MongoDB registry."""

    ids: tuple[str, ...] = ()
    topic_pattern: str | None = None
    mongo: MongoSettings | None = None


@dataclass(frozen=True)
class TopicSettings:
    """``[topics]``: templates holding ``:cam_id``."""

    consume: str = "raw.:cam_id"
    produce: str = "out.:cam_id"


@dataclass(frozen=True)
class ConsumerSettings:
    """``[consumer]`` and ``[consumer.options]``."""

    bootstrap_servers: str
    start: str = "end"
    fallback: Literal["end", "earliest"] = "end"  # where "committed" starts without a commit
    group_id: str = "comux"
    instance_id: str | None = None
    max_offset_diff: int | None = 20
    connect_timeout: float = 10.0
    commit_interval: float = 1.0
    options: Options = field(default_factory=Options)

    @property
    def end(self) -> bool:
        return self.start == "end" or (self.start == "committed" and self.fallback == "end")


@dataclass(frozen=True)
class DecoderSettings:
    """``[decoder]``: output frames and batching (see ``Comux.setup_decoders``)."""

    rate: float | None = 10.0
    width: int = 1920
    height: int = 1080
    codec: str = "h264"
    pix_fmt: PixFmt = "rgb24"
    policy: Policy | None = None
    max_wait: float | None = None
    max_staleness: float | None = None
    stall_timeout: float | None = None
    repeat_last: bool = False
    buffers: int = 3
    fifo_depth: int = 256
    fifo_bytes: int = 4 << 20
    threads: int | None = None


@dataclass(frozen=True)
class ProducerSettings:
    """``[producer]`` and ``[producer.options]``."""

    bootstrap_servers: str
    transactional_id: str | None = None
    connect_timeout: float = 10.0
    options: Options = field(default_factory=Options)


@dataclass(frozen=True)
class ControlSettings:
    """``[control]`` and ``[control.options]`` (see ``Comux.setup_controller``)."""

    topic: str
    bootstrap_servers: str
    secret: str | None = field(default=None, repr=False)
    instance_id: str | None = None
    groups: tuple[str, ...] = ()
    reply_topic: str | None = None
    max_skew: float | None = None
    max_payload: int | None = None
    max_cameras: int | None = None
    replay_window: float | None = None
    max_reply: int | None = None
    connect_timeout: float = 10.0
    options: Options = field(default_factory=Options)

    @property
    def signed(self) -> bool:
        return self.secret is not None

    def keywords(self) -> dict[str, Any]:
        """The keyword arguments of ``setup_controller``: what was set, and the options."""
        out: dict[str, Any] = {
            name: getattr(self, name)
            for name in (
                "instance_id",
                "reply_topic",
                "secret",
                "max_skew",
                "max_payload",
                "max_cameras",
                "replay_window",
                "max_reply",
            )
            if getattr(self, name) is not None
        }
        if self.groups:
            out["groups"] = list(self.groups)
        return {**self.options, **out, "connect_timeout": self.connect_timeout}


@dataclass(frozen=True)
class ModelSettings:
    """``[model]``: ``function`` gets each Batch; ``setup(**params)`` runs once before it."""

    function: str
    setup: str | None = None
    path: tuple[str, ...] = ()  # folders put first on sys.path (absolute)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LogSettings:
    """``[log]``: level, file and format; the command line's options win."""

    level: str = "INFO"
    file: str | None = None
    format: str | None = None  # None: as configured already (text unless told otherwise)


@dataclass(frozen=True)
class MetricsSettings:
    """``[metrics]``: serve ``/metrics``, ``/healthz`` and ``/readyz`` while running.

    ``port`` None: not served (unless ``--metrics-port`` asks); 0: a free port, logged.
    """

    port: int | None = None
    host: str = "127.0.0.1"
    broker_timeout: float = 15.0
    batch_timeout: float = 30.0


@dataclass(frozen=True)
class RunConfig:
    """A whole ``comux run`` configuration, validated."""

    path: str
    cameras: CameraSettings
    topics: TopicSettings
    consumer: ConsumerSettings
    decoder: DecoderSettings
    producer: ProducerSettings
    model: ModelSettings
    control: ControlSettings | None = None
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)

    def secrets(self) -> list[str]:
        """Every secret value of this configuration, to be scrubbed from any text shown."""
        out: list[str] = []
        for options in (self.consumer.options, self.producer.options):
            out += [str(v) for k, v in options.items() if is_secret(k)]
        if self.control is not None:
            out += [str(v) for k, v in self.control.options.items() if is_secret(k)]
            if self.control.secret:
                out.append(self.control.secret)
        if self.cameras.mongo is not None:
            uri = self.cameras.mongo.uri
            out.append(uri)
            _scheme, userinfo, _rest = _split_uri(uri)
            if userinfo is not None:
                out += [userinfo, userinfo.partition(":")[2]]
        return [s for s in out if len(s) >= 3]

    def scrub(self, text: str) -> str:
        """``text`` with every secret value of this configuration replaced by ``***``."""
        for secret in sorted(self.secrets(), key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


# -- reading tables -------------------------------------------------------------------------------

_MISSING: Any = object()


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


class _Table:
    """One TOML table being read: remembers the keys used, so the rest are unknown."""

    def __init__(self, path: str, key: str, data: Any) -> None:
        self.path = path
        self.key = key
        if not isinstance(data, dict):
            raise ConfigFileError(path, key, f"must be a table, got {_type_name(data)}")
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.key}.{key}" if self.key else key

    def error(self, key: str, message: str) -> ConfigFileError:
        return ConfigFileError(self.path, self.name(key), message)

    def bad(self, key: str, expected: str, value: Any) -> ConfigFileError:
        if is_secret(key):  # never show a secret, even a wrong one
            return self.error(key, f"must be {expected}, got {_type_name(value)}")
        return self.error(key, f"must be {expected}, got {value!r}")

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is _MISSING:
                typo = difflib.get_close_matches(key, [k for k in self.data if k not in self.used])
                if typo:
                    raise self.error(typo[0], f"unknown key (did you mean {key!r}?)")
                raise self.error(key, "missing")
            return default
        return self.data[key]

    def table(self, key: str, required: bool = False) -> _Table | None:
        if key not in self.data and not required:
            self.used.add(key)
            return None
        return _Table(self.path, self.name(key), self.raw(key))

    def string(self, key: str, default: Any = _MISSING, *, choices: Iterable[str] = ()) -> Any:
        value = self.raw(key, default)
        if key not in self.data:
            return value
        if not isinstance(value, str) or not value:
            raise self.bad(key, "a non-empty string", value)
        options = tuple(choices)
        if options and value not in options:
            raise self.error(key, f"must be one of {', '.join(options)}, got {value!r}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.raw(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.bad(key, "an array of non-empty strings", value)
        return tuple(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.bad(key, "true or false", value)
        return value

    def number(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        minimum: float = 0.0,
        inclusive: bool = False,
        off: bool = False,
    ) -> Any:
        """A finite number above ``minimum``; ``off`` lets ``false`` stand for None."""
        value = self.raw(key, default)
        if key not in self.data:
            return value
        if off and value is False:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            what = "a number" + (" or false" if off else "")
            raise self.bad(key, what, value)
        low = value >= minimum if inclusive else value > minimum
        if not math.isfinite(value) or not low:
            bound = f"{'>=' if inclusive else '>'} {minimum:g}"
            raise self.error(key, f"must be {bound}, got {value!r}")
        return value

    def integer(
        self, key: str, default: Any = _MISSING, *, minimum: int = 1, off: bool = False
    ) -> Any:
        value = self.raw(key, default)
        if key not in self.data:
            return value
        if off and value is False:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.bad(key, "an integer" + (" or false" if off else ""), value)
        if value < minimum:
            raise self.error(key, f"must be >= {minimum}, got {value!r}")
        return value

    def options(self, key: str, reserved: Mapping[str, str] | None = None) -> Options:
        """A ``[*.options]`` table: librdkafka names to strings, numbers or booleans.

        ``reserved`` maps the librdkafka names that have a key of their own to that key.
        """
        table = self.table(key)
        out = Options()
        if table is None:
            return out
        for name, value in table.data.items():
            table.used.add(name)
            if reserved and name in reserved:
                raise table.error(name, f"set {self.name(reserved[name])} instead")
            if isinstance(value, (bool, str | int | float)):
                out[name] = value
            else:
                raise table.bad(name, "a string, number or boolean", value)
        return out

    def finish(self) -> None:
        unknown = [k for k in self.data if k not in self.used]
        if unknown:
            close = difflib.get_close_matches(unknown[0], self.used, n=1)
            hint = f"did you mean {close[0]!r}?" if close else ""
            known = ", ".join(sorted(self.used)) or "none"
            raise self.error(unknown[0], f"unknown key ({hint or 'known here: ' + known})")


# -- loading --------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> RunConfig:
    """Read and validate a ``comux run`` TOML file; the environment overrides secrets.

    :param path: the TOML file.
    :param env: the environment to read overrides from (default: ``os.environ``).
    :raises ConfigFileError: naming the file and the key.
    """
    shown = os.fspath(path)
    env = os.environ if env is None else env
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigFileError(shown, "", "no such file") from None
    except OSError as exc:
        raise ConfigFileError(shown, "", f"cannot read it: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(shown, "", f"not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigFileError(shown, "", "not valid UTF-8 text") from None
    folder = Path(path).resolve().parent
    root = _Table(shown, "", data)

    def _env(name: str) -> str | None:
        value = env.get(name, "")
        return value or None

    topics = _topics(root.table("topics"))
    cameras = _cameras(root.table("cameras", required=True), _env(MONGO_URI_ENV))
    consumer = _consumer(root.table("consumer", required=True), _env)
    decoder = _decoder(root.table("decoder") or _Table(shown, "decoder", {}))
    producer = _producer(root.table("producer") or _Table(shown, "producer", {}), consumer, _env)
    control_table = root.table("control")
    control = None
    if control_table is not None:
        control = _control(control_table, consumer, _env(CONTROL_SECRET_ENV))
    model = _model(root.table("model", required=True), folder)
    log = _log(root.table("log") or _Table(shown, "log", {}), folder)
    metrics = _metrics(root.table("metrics") or _Table(shown, "metrics", {}))
    root.finish()
    if producer.transactional_id is not None and consumer.start != "committed":
        raise ConfigFileError(
            shown,
            "producer.transactional_id",
            'exactly-once needs consumer.start = "committed"',
        )
    return RunConfig(
        path=shown,
        cameras=cameras,
        topics=topics,
        consumer=consumer,
        decoder=decoder,
        producer=producer,
        model=model,
        control=control,
        log=log,
        metrics=metrics,
    )


def _topics(table: _Table | None) -> TopicSettings:
    if table is None:
        return TopicSettings()
    out = {}
    for key, default in (("consume", "raw.:cam_id"), ("produce", "out.:cam_id")):
        value = table.string(key, default)
        try:
            TopicSchema(value)
        except ConfigError:
            raise table.error(key, f"must contain ':cam_id' exactly once, got {value!r}") from None
        out[key] = value
    table.finish()
    return TopicSettings(**out)


def _cameras(table: _Table | None, mongo_uri: str | None) -> CameraSettings:
    assert table is not None
    ids = table.strings("ids")
    for cam_id in ids:
        if not CAM_ID_PATTERN.fullmatch(cam_id):
            raise table.error(
                "ids", f"{cam_id[:64]!r} is no valid cam id ([A-Za-z0-9._-]{{1,128}})"
            )
    if len(set(ids)) != len(ids):
        raise table.error("ids", "holds an id twice")
    pattern = table.string("topic_pattern", None)
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise table.error("topic_pattern", f"is not a regex: {exc}") from None
    mongo_table = table.table("mongo")
    mongo = None
    if mongo_table is not None:
        if ids:
            raise table.error("ids", "give either ids or [cameras.mongo], not both")
        mongo = _mongo(mongo_table, mongo_uri)
    table.finish()
    if not ids and pattern is None and mongo is None:
        raise table.error(
            "ids", "no cameras: give ids, topic_pattern or a [cameras.mongo] registry"
        )
    return CameraSettings(ids=ids, topic_pattern=pattern, mongo=mongo)


def _mongo(table: _Table, env_uri: str | None) -> MongoSettings:
    uri = table.raw("uri", None)
    if env_uri is not None:
        uri = env_uri
    if uri is None:
        raise table.error("uri", f"missing (or set {MONGO_URI_ENV})")
    if not isinstance(uri, str) or not uri.startswith(("mongodb://", "mongodb+srv://")):
        raise table.error("uri", "must be a mongodb:// or mongodb+srv:// URI")
    database = table.string("database")
    collection = table.string("collection")
    query_table = table.table("query")
    query = dict(query_table.data) if query_table is not None else {}
    if query_table is not None:
        query_table.used.update(query_table.data)
    name = table.string("field", "cam_id")
    if name.startswith("$") or ".." in name or name.startswith(".") or name.endswith("."):
        raise table.error("field", f"is not a usable document path: {name!r}")
    interval = table.number("sync_interval", 30.0, off=True)
    table.finish()
    return MongoSettings(uri, database, collection, query, name, interval)


def _servers(table: _Table, default: str | None, env_name: str | None = None) -> str:
    value = table.raw("bootstrap_servers", default)
    if value is None:
        hint = f" (or set {env_name})" if env_name else ""
        raise table.error("bootstrap_servers", f"missing{hint}")
    if isinstance(value, str):
        servers: str | list[str] = value
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        servers = value
    else:
        raise table.bad("bootstrap_servers", "a string or an array of strings", value)
    try:
        return resolve_bootstrap_servers(servers)
    except ConfigError:
        raise table.error("bootstrap_servers", "is empty") from None


def _consumer(table: _Table | None, env: Callable[[str], str | None]) -> ConsumerSettings:
    assert table is not None
    servers = _servers(table, env(BOOTSTRAP_ENV), BOOTSTRAP_ENV)
    start = table.string("start", "end", choices=START)
    fallback = table.string("fallback", "end", choices=("end", "earliest"))
    if table.has("fallback") and start != "committed":
        raise table.error("fallback", 'only applies to start = "committed"')
    settings = ConsumerSettings(
        bootstrap_servers=servers,
        start=start,
        fallback=fallback,
        group_id=table.string("group_id", "comux"),
        instance_id=table.string("instance_id", None),
        max_offset_diff=table.integer("max_offset_diff", 20, off=True),
        connect_timeout=table.number("connect_timeout", 10.0),
        commit_interval=table.number("commit_interval", 1.0),
        options=_with_password(table.options("options", _CONSUMER_RESERVED), env),
    )
    table.finish()
    return settings


_CONSUMER_RESERVED = {
    "bootstrap.servers": "bootstrap_servers",
    "group.id": "group_id",
    "group.instance.id": "instance_id",
}
_PRODUCER_RESERVED = {
    "bootstrap.servers": "bootstrap_servers",
    "transactional.id": "transactional_id",
}


def _with_password(options: Options, env: Callable[[str], str | None]) -> Options:
    password = env(SASL_PASSWORD_ENV)
    if password is not None:
        options["sasl.password"] = password
    return options


def _decoder(table: _Table) -> DecoderSettings:
    width = table.integer("width", 1920, minimum=2)
    height = table.integer("height", 1080, minimum=2)
    for key, value in (("width", width), ("height", height)):
        if value % 2:
            raise table.error(key, f"must be even, got {value!r}")
    settings = DecoderSettings(
        rate=table.number("rate", 10.0, off=True),
        width=width,
        height=height,
        codec=table.string("codec", "h264", choices=sorted(CODECS)),
        pix_fmt=cast(PixFmt, table.string("pix_fmt", "rgb24", choices=PIX_FMTS)),
        policy=cast(Policy | None, table.string("policy", None, choices=POLICIES)),
        max_wait=table.number("max_wait", None),
        max_staleness=table.number("max_staleness", None),
        stall_timeout=table.number("stall_timeout", None),
        repeat_last=table.boolean("repeat_last", False),
        buffers=table.integer("buffers", 3, minimum=2),
        fifo_depth=table.integer("fifo_depth", 256),
        fifo_bytes=table.integer("fifo_bytes", 4 << 20),
        threads=table.integer("threads", None),
    )
    table.finish()
    return settings


def _producer(
    table: _Table, consumer: ConsumerSettings, env: Callable[[str], str | None]
) -> ProducerSettings:
    settings = ProducerSettings(
        bootstrap_servers=_servers(table, consumer.bootstrap_servers),
        transactional_id=table.string("transactional_id", None),
        connect_timeout=table.number("connect_timeout", 10.0),
        options=_with_password(table.options("options", _PRODUCER_RESERVED), env),
    )
    table.finish()
    return settings


def _control(table: _Table, consumer: ConsumerSettings, env_secret: str | None) -> ControlSettings:
    secret = table.raw("secret", None)
    if env_secret is not None:
        secret = env_secret
    if secret is not None and (not isinstance(secret, str) or not secret):
        raise table.bad("secret", "a non-empty string", secret)
    settings = ControlSettings(
        topic=table.string("topic"),
        bootstrap_servers=_servers(table, consumer.bootstrap_servers),
        secret=secret,
        instance_id=table.string("instance_id", None),
        groups=table.strings("groups"),
        reply_topic=table.string("reply_topic", None),
        max_skew=table.number("max_skew", None),
        max_payload=table.integer("max_payload", None),
        max_cameras=table.integer("max_cameras", None, minimum=0),
        replay_window=table.number("replay_window", None, minimum=0, inclusive=True),
        max_reply=table.integer("max_reply", None, minimum=1024),
        connect_timeout=table.number("connect_timeout", 10.0),
        options=table.options("options", {"bootstrap.servers": "bootstrap_servers"}),
    )
    table.finish()
    return settings


def _model(table: _Table | None, folder: Path) -> ModelSettings:
    assert table is not None
    function = table.string("function")
    setup = table.string("setup", None)
    for key, spec in (("function", function), ("setup", setup)):
        if spec is not None:
            module, _, name = spec.partition(":")
            if not module or not name:
                raise table.error(key, f'must be "module:function", got {spec!r}')
    path = tuple(str((folder / p).resolve()) for p in table.strings("path")) or (str(folder),)
    params_table = table.table("params")
    params: dict[str, Any] = {}
    if params_table is not None:
        params = dict(params_table.data)
        params_table.used.update(params)
        if setup is None:
            raise table.error("params", "are the keyword arguments of model.setup: set it too")
    table.finish()
    return ModelSettings(function=function, setup=setup, path=path, params=params)


def _log(table: _Table, folder: Path) -> LogSettings:
    level = table.string("level", "INFO")
    if level.upper() not in LOG_LEVELS:
        raise table.error("level", f"must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    file = table.string("file", None)
    settings = LogSettings(
        level=level.upper(),
        file=None if file is None else str(folder / file),
        format=table.string("format", None, choices=LOG_FORMATS),
    )
    table.finish()
    return settings


def _metrics(table: _Table) -> MetricsSettings:
    port = table.raw("port", None)
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535
    ):
        raise table.bad("port", "an integer from 0 (a free port) to 65535", port)
    settings = MetricsSettings(
        port=port,
        host=table.string("host", "127.0.0.1"),
        broker_timeout=table.number("broker_timeout", 15.0),
        batch_timeout=table.number("batch_timeout", 30.0),
    )
    table.finish()
    return settings


# -- what --check adds: the model imported, the librdkafka options tried ---------------------------


@dataclass(frozen=True)
class Model:
    """The imported model: ``call(batch, state)`` runs the function with or without the state."""

    function: Callable[..., Any]
    setup: Callable[..., Any] | None
    params: dict[str, Any]
    takes_state: bool

    def start(self) -> Any:
        """Run ``setup(**params)`` once; its return value is the state (None without setup)."""
        return self.setup(**self.params) if self.setup is not None else None

    def call(self, batch: Any, state: Any) -> Any:
        if self.takes_state:
            return self.function(batch, state)
        return self.function(batch)


def _import(config: RunConfig, key: str, spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    for folder in reversed(config.model.path):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        name = exc.name or ""
        if name == module_name or module_name.startswith(name + "."):
            where = ", ".join(config.model.path)
            raise ConfigFileError(
                config.path, key, f"no module named {name!r} (looked in {where} and sys.path)"
            ) from None
        raise ConfigFileError(
            config.path, key, f"importing {module_name!r} failed: {config.scrub(str(exc))}"
        ) from None
    except Exception as exc:
        raise ConfigFileError(
            config.path,
            key,
            f"importing {module_name!r} failed: {type(exc).__name__}: {config.scrub(str(exc))}",
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigFileError(
                config.path, key, f"module {module_name!r} has no {attr!r}"
            ) from None
    if not callable(obj):
        raise ConfigFileError(config.path, key, f"{spec!r} is not callable")
    return cast(Callable[..., Any], obj)


def _positional(fn: Callable[..., Any]) -> tuple[int, int, bool] | None:
    """(required, accepted, varargs) positional parameters of ``fn``; None when unknown."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = [p for p in sig.parameters.values() if p.kind in kinds]
    required = sum(1 for p in params if p.default is inspect.Parameter.empty)
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in sig.parameters.values())
    return required, len(params), varargs


def load_model(config: RunConfig) -> Model:
    """Import ``model.function`` (and ``model.setup``) and check that they can be called.

    The function is called ``function(batch)``, or ``function(batch, state)`` when it takes a
    second positional argument; ``state`` is what ``setup(**params)`` returned (None without
    a setup).
    """
    settings = config.model
    function = _import(config, "model.function", settings.function)
    shape = _positional(function)
    takes_state = False
    if shape is not None:
        required, accepted, varargs = shape
        if required > 2:
            raise ConfigFileError(
                config.path,
                "model.function",
                f"{settings.function} needs {required} arguments; it is called with "
                "(batch) or (batch, state)",
            )
        if accepted == 0 and not varargs:
            raise ConfigFileError(
                config.path, "model.function", f"{settings.function} takes no batch argument"
            )
        takes_state = accepted >= 2 or varargs
    setup = None
    if settings.setup is not None:
        setup = _import(config, "model.setup", settings.setup)
        try:
            inspect.signature(setup).bind(**settings.params)
        except TypeError as exc:
            raise ConfigFileError(
                config.path, "model.params", f"{settings.setup} cannot take them: {exc}"
            ) from None
        except ValueError:
            pass  # no signature to check (a builtin): the call will tell
    return Model(function, setup, dict(settings.params), takes_state)


def check_kafka_options(config: RunConfig) -> None:
    """Create (and drop) a client with each options table, so librdkafka names a bad option.

    No bootstrap servers are given to these clients: nothing connects.
    """
    from confluent_kafka import Consumer, KafkaException, Producer

    quiet = logging.getLogger("comux.kafka.check")
    quiet.propagate = False
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    tables: list[tuple[str, Options, Any]] = [
        ("consumer.options", config.consumer.options, Consumer),
        ("producer.options", config.producer.options, Producer),
    ]
    if config.control is not None:
        tables.append(("control.options", config.control.options, Consumer))
    for key, options, kind in tables:
        conf: dict[str, Any] = {**options, "logger": quiet}
        if kind is Consumer:
            conf.setdefault("group.id", "comux-check")
        try:
            client = kind(conf)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else exc
            text = err.str() if hasattr(err, "str") else str(err)
            raise ConfigFileError(config.path, key, config.scrub(text)) from None
        if kind is Consumer:
            client.close()
        else:
            client.flush(0)
