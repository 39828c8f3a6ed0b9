"""``comux run``: build a Comux from a run configuration, feed the model, stop gracefully.

Lifecycle: the first SIGTERM or SIGINT stops taking batches; the batch in the model's hands is
finished (its results sent and acked), the results are flushed, what was delivered is
committed and the clients are closed, all within ``grace`` seconds. A second signal, or a stop
that overruns ``grace``, exits at once with :data:`EXIT_FORCED`.

Exit codes: :data:`EXIT_OK` (0) stopped cleanly; :data:`EXIT_CONFIG` (1) a configuration error,
including a model that cannot be imported; :data:`EXIT_UNREACHABLE` (2) the Kafka broker (or the
MongoDB registry) did not answer at start; :data:`EXIT_FORCED` (3) forced; :data:`EXIT_MODEL` (4)
the model or its setup raised, or returned something that is not results (stopped gracefully;
that batch is not committed).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from confluent_kafka import KafkaException

from .app import Comux
from .batching import Batch
from .errors import (
    BrokerUnavailableError,
    ComuxError,
    ConfigError,
    RegistryError,
    StateError,
    UnknownCameraError,
    UnknownIndexError,
)
from .logs import configure_logging
from .metrics import MetricsServer, serve_metrics
from .results import encode_headers
from .runconfig import (
    ConfigFileError,
    Model,
    RunConfig,
    check_kafka_options,
    load_config,
    load_model,
)

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FORCED",
    "EXIT_MODEL",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "ModelResultError",
    "Runner",
    "check",
    "run",
    "slot_headers",
    "stop",
]

log = logging.getLogger("comux.runner")

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_UNREACHABLE = 2
EXIT_FORCED = 3
EXIT_MODEL = 4

_POLL_S = 0.25  # get_batch's wait: how soon the model loop notices a stop
_STATS_EVERY_S = 60.0
_LIVE_EVERY_S = 1.0  # seconds between redraws of --live


class ModelResultError(ConfigError):
    """The model returned something that is not per-camera headers."""


# -- the model's results ------------------------------------------------------------------------


def slot_headers(batch: Batch, result: Any) -> list[tuple[str, int, Mapping[str, Any] | None]]:
    """``(cam_id, index, headers)`` for each valid slot of ``batch``, from the model's result.

    ``result`` is a mapping ``cam_id -> headers`` (a camera left out, or None, gets a result
    without headers of the model's) or a sequence aligned with the batch's slots (None for
    none). Every header set is encoded once here, so a bad one stops the batch before any of its
    results is sent.
    """
    cam_ids = list(batch.cam_ids)
    indices = [int(i) for i in batch.indices]
    valid = [bool(v) for v in batch.valid]
    if isinstance(result, Mapping):
        unknown = [c for c in result if c not in cam_ids]
        if unknown:
            raise ModelResultError(
                f"the model returned headers for {unknown[0]!r}, which is not in the batch"
            )
        per_slot = [result.get(c) for c in cam_ids]
    elif isinstance(result, Sequence) and not isinstance(result, str | bytes):
        if len(result) != len(cam_ids):
            raise ModelResultError(
                f"the model returned {len(result)} results for a batch of {len(cam_ids)} slots"
            )
        per_slot = list(result)
    else:
        raise ModelResultError(
            "the model must return a mapping cam_id -> headers or a list aligned with the "
            f"batch's slots, got {type(result).__name__}"
        )
    out: list[tuple[str, int, Mapping[str, Any] | None]] = []
    for cam_id, index, ok, headers in zip(cam_ids, indices, valid, per_slot, strict=True):
        if not ok or index < 0:
            continue
        if headers is not None:
            if not isinstance(headers, Mapping):
                raise ModelResultError(
                    f"headers for {cam_id!r} must be a mapping or None, "
                    f"got {type(headers).__name__}"
                )
            try:
                encode_headers(headers)
            except ConfigError as exc:
                raise ModelResultError(f"headers for {cam_id!r}: {exc}") from None
        out.append((cam_id, index, headers))
    return out


# -- building -----------------------------------------------------------------------------------


def _log_format_kwargs(fmt: str | None) -> dict[str, Any]:
    """``configure_logging``'s format argument, under whichever name it has (if any)."""
    if fmt is None:
        return {}
    params = inspect.signature(configure_logging).parameters
    for name in ("fmt", "log_format", "format"):
        if name in params:
            return {name: fmt}
    if fmt != "text":
        log.warning("log format %r is not supported here: using text", fmt)
    return {}


def build(config: RunConfig, *, log_level: str, log_file: str | None) -> Comux:
    """Create the Comux of ``config`` and set up its clients; nothing is consumed yet.

    :raises BrokerUnavailableError: no broker answered (``RegistryError``: no registry).
    :raises ConfigFileError: a setting the library refused, named by its section.
    """
    cams, topics, dec = config.cameras, config.topics, config.decoder
    common: dict[str, Any] = {"log_file": log_file, "decode_threads": dec.threads}
    if cams.mongo is not None:
        m = cams.mongo
        comux = Comux.from_mongo(
            m.uri,
            m.database,
            m.collection,
            topics.consume,
            topics.produce,
            log_level,
            query=m.query,
            field=m.field,
            **common,
        )
    else:
        comux = Comux(list(cams.ids), topics.consume, topics.produce, log_level, **common)
    try:
        con = config.consumer
        with _section(config, "consumer"):
            comux.setup_consumers(
                con.bootstrap_servers,
                end=con.end,
                max_offset_diff=con.max_offset_diff,
                connect_timeout=con.connect_timeout,
                start=con.start,
                group_id=con.group_id,
                instance_id=con.instance_id,
                commit_interval=con.commit_interval,
                topic_pattern=cams.topic_pattern,
                **dict[str, Any](con.options),
            )
        with _section(config, "decoder"):
            comux.setup_decoders(
                rate=dec.rate,
                W=dec.width,
                H=dec.height,
                de_codec=dec.codec,
                pix_fmt=dec.pix_fmt,
                policy=dec.policy,
                max_wait=dec.max_wait,
                max_staleness=dec.max_staleness,
                stall_timeout=dec.stall_timeout,
                repeat_last=dec.repeat_last,
                buffers=dec.buffers,
                fifo_depth=dec.fifo_depth,
                fifo_bytes=dec.fifo_bytes,
            )
        pro = config.producer
        with _section(config, "producer"):
            comux.setup_producer(
                pro.bootstrap_servers,
                connect_timeout=pro.connect_timeout,
                transactional_id=pro.transactional_id,
                **dict[str, Any](pro.options),
            )
        ctl = config.control
        if ctl is not None:
            with _section(config, "control"):
                comux.setup_controller(ctl.topic, ctl.bootstrap_servers, **ctl.keywords())
    except BaseException:
        comux.close(timeout=2.0)
        raise
    return comux


class _section:
    """Turn the library's refusal of a setting into an error naming the file and the section."""

    def __init__(self, config: RunConfig, key: str) -> None:
        self.config, self.key = config, key

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None or isinstance(exc, BrokerUnavailableError | RegistryError):
            return
        if isinstance(exc, KafkaException):
            err = exc.args[0] if exc.args else exc
            text = err.str() if hasattr(err, "str") else str(err)
            raise ConfigFileError(
                self.config.path, f"{self.key}.options", self.config.scrub(text)
            ) from None
        if isinstance(exc, ConfigError) and not isinstance(exc, ConfigFileError):
            raise ConfigFileError(self.config.path, self.key, self.config.scrub(str(exc))) from None


# -- the process --------------------------------------------------------------------------------


class Runner:
    """One ``comux run`` process: signals, the pid file, the model thread and the shutdown.

    The model runs in its own thread; the main thread waits for signals, so a second signal
    is handled even while the model is stuck in native code.
    """

    def __init__(
        self,
        config: RunConfig,
        model: Model,
        *,
        grace: float = 10.0,
        pid_file: str | os.PathLike[str] | None = None,
        log_level: str = "INFO",
        log_file: str | None = None,
        metrics_port: int | None = None,
        live: bool = False,
    ) -> None:
        if not grace > 0:
            raise ConfigError(f"grace must be > 0 seconds, got {grace!r}")
        if metrics_port is not None and not 0 <= metrics_port <= 65535:
            raise ConfigError(f"the metrics port must be from 0 to 65535, got {metrics_port!r}")
        self.config = config
        self.model = model
        self.grace = grace
        self.pid_file = None if pid_file is None else Path(pid_file)
        self.log_level = log_level
        self.log_file = log_file
        # The command line's port wins over the file's [metrics] port; None: not served.
        self.metrics_port = metrics_port if metrics_port is not None else config.metrics.port
        self.live = live
        self.comux: Comux | None = None
        self.metrics: MetricsServer | None = None
        self.stopping = False  # read by the model thread between batches
        self.failure: str | None = None  # why the model thread gave up
        self.batches = 0
        self.results = 0
        self.send_errors = 0
        self._signals = 0
        self._signal_name = ""
        self._stop_at: float | None = None
        self._loop_done = threading.Event()
        self._previous: dict[int, Any] = {}

    # -- signals and the pid file ----------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only plain assignments before the second signal: this interrupts the main thread
        # wherever it is, possibly inside a lock it holds.
        self._signals += 1
        if self._signals == 1:
            self._signal_name = signal.Signals(signum).name
            self._stop_at = time.monotonic()
            self.stopping = True
        else:
            self._force(f"second signal ({signal.Signals(signum).name})")

    def _force(self, why: str) -> None:
        """Leave now: exit code 3. The batch in hand and unflushed results are abandoned."""
        try:
            log.error("forced exit: %s", why)
            for handler in logging.getLogger("comux").handlers:
                handler.flush()
        finally:
            self._remove_pid_file()
            os._exit(EXIT_FORCED)

    def _install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def _restore_signals(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _write_pid_file(self) -> None:
        if self.pid_file is None:
            return
        other = read_pid(self.pid_file)
        if other is not None and other != os.getpid() and _alive(other) and _is_comux(other):
            raise ConfigError(f"{self.pid_file}: another comux run holds it (pid {other})")
        tmp = self.pid_file.with_name(f".{self.pid_file.name}.{os.getpid()}")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, self.pid_file)

    def _remove_pid_file(self) -> None:
        if self.pid_file is not None and read_pid(self.pid_file) == os.getpid():
            with contextlib.suppress(OSError):
                self.pid_file.unlink()

    # -- the model thread ------------------------------------------------------------------------

    def _model_loop(self) -> None:
        comux = self.comux
        assert comux is not None
        try:
            try:
                state = self.model.start()
            except Exception:
                log.exception("model setup %s raised; stopping", self.config.model.setup)
                self.failure = "setup"
                return
            if self.stopping:
                return
            comux.start()
            log.info(
                "running: %d camera(s), model %s", len(comux.cam_ids), self.config.model.function
            )
            next_stats = time.monotonic() + _STATS_EVERY_S
            while not self.stopping:
                if time.monotonic() >= next_stats:
                    next_stats += _STATS_EVERY_S
                    self._log_progress("running")
                batch = comux.get_batch(timeout=_POLL_S, stacked=True)
                if batch is None:
                    continue
                with batch:
                    try:
                        results = slot_headers(batch, self.model.call(batch, state))
                    except Exception:
                        log.exception(
                            "model %s failed on a batch of %s; stopping (the batch is not "
                            "committed)",
                            self.config.model.function,
                            ", ".join(batch.cam_ids[:8]),
                        )
                        self.failure = "model"
                        return
                    for cam_id, index, headers in results:
                        self._send(comux, cam_id, index, headers)
                    batch.ack()
                self.batches += 1
            # Past the last batch: with a transactional producer this commits its transaction.
            comux._move_on()
        except StateError:
            if not self.stopping:  # closed under it: only the forced path closes that early
                log.exception("model loop stopped")
                self.failure = "model"
        except Exception:
            log.exception("model loop failed")
            self.failure = "model"
        finally:
            self._loop_done.set()

    def _send(self, comux: Comux, cam_id: str, index: int, headers: Any) -> None:
        try:
            comux.send(cam_id, index, headers)
            self.results += 1
        except (UnknownCameraError, UnknownIndexError) as exc:
            # A camera deleted (control topic) or moved to another worker since the batch.
            self.send_errors += 1
            log.warning("result not sent: %s", exc)
        except ComuxError as exc:
            self.send_errors += 1
            log.error("result for %s@%d not sent: %s", cam_id, index, exc)

    def _serve_metrics(self, comux: Comux, port: int) -> MetricsServer:
        """Serve /metrics, /healthz and /readyz; the URL is logged and printed on stdout."""
        settings = self.config.metrics
        server = serve_metrics(
            comux,
            port,
            settings.host,
            broker_timeout=settings.broker_timeout,
            batch_timeout=settings.batch_timeout,
        )
        url = f"{server.url}/metrics"  # the server logs it too
        # One line a supervisor (or a test) can read the port from; port 0 picked it.
        print(f"comux: metrics on {url}", flush=True)
        return server

    def _log_progress(self, what: str) -> None:
        log.info(
            "%s: %d batches, %d results sent, %d not sent",
            what,
            self.batches,
            self.results,
            self.send_errors,
        )

    # -- the main thread -------------------------------------------------------------------------

    def execute(self) -> int:
        """Run until a signal or a model failure; return the exit code."""
        self._install_signals()
        try:
            self._write_pid_file()
            return self._execute()
        finally:
            self._remove_pid_file()
            self._restore_signals()

    def _execute(self) -> int:
        config = self.config
        try:
            self.comux = build(config, log_level=self.log_level, log_file=self.log_file)
        except (BrokerUnavailableError, RegistryError) as exc:
            log.error("%s", config.scrub(str(exc)))
            _say(config.scrub(str(exc)))
            return EXIT_UNREACHABLE
        except ConfigFileError as exc:
            log.error("%s", exc)
            _say(str(exc))
            return EXIT_CONFIG
        except ComuxError as exc:  # e.g. init_transactions refused
            log.error("%s", config.scrub(str(exc)))
            _say(f"{config.path}: {config.scrub(str(exc))}")
            return EXIT_CONFIG
        comux = self.comux
        if self.metrics_port is not None:
            try:
                self.metrics = self._serve_metrics(comux, self.metrics_port)
            except OSError as exc:
                text = (
                    f"metrics: cannot serve on {config.metrics.host}:{self.metrics_port}: "
                    f"{exc.strerror or exc}"
                )
                log.error("%s", text)
                _say(text)
                comux.close(timeout=2.0)
                return EXIT_CONFIG
        if config.cameras.mongo is not None and config.cameras.mongo.sync_interval is not None:
            comux.sync(config.cameras.mongo.sync_interval)  # close() stops it
        thread = threading.Thread(target=self._model_loop, name="comux-model", daemon=True)
        if not self.stopping:
            thread.start()
        else:
            self._loop_done.set()
        # Wait for a signal or the model thread's end; a signal interrupts the wait.
        live = _LiveView.open(comux, self.metrics, config) if self.live else None
        try:
            while not self.stopping and not self._loop_done.is_set():
                self._loop_done.wait(_POLL_S)
                if live is not None:
                    live.tick()
        finally:
            if live is not None:
                live.close()
        self.stopping = True
        started = self._stop_at if self._stop_at is not None else time.monotonic()
        deadline = started + self.grace
        why = f"{self._signal_name} received" if self._signal_name else f"the {self.failure} failed"
        log.info("stopping (%s) within %g s", why, self.grace)
        watchdog = threading.Timer(
            max(0.0, deadline - time.monotonic()),
            self._force,
            args=(f"not stopped within the grace period ({self.grace:g} s)",),
        )
        watchdog.daemon = True
        watchdog.start()
        # The model finishes its batch; closing keeps `reserve` seconds of the grace period.
        reserve = min(self.grace / 2, 5.0)
        if thread.is_alive():
            thread.join(max(0.0, deadline - reserve - time.monotonic()))
        stuck = thread.is_alive()
        if stuck:
            log.error("the model did not finish its batch in time: it is abandoned")
        if self.metrics is not None:
            self.metrics.close()  # within its poll interval (0.5 s), before the clients close
            self.metrics = None
        undelivered = comux.close(timeout=max(0.1, deadline - time.monotonic() - 0.25))
        if undelivered:
            log.error("%d results were not delivered: their offsets stay uncommitted", undelivered)
        self._log_progress("stopped")
        if stuck:
            self._force("the model was stuck")
        watchdog.cancel()
        return EXIT_MODEL if self.failure else EXIT_OK


def _say(text: str) -> None:
    print(f"comux: {text}", file=sys.stderr)


class _LiveView:
    """``comux run --live``: the ``comux top`` table, redrawn in place from this process.

    The numbers are the ones ``/metrics`` serves, collected in-process (no HTTP): from the
    metrics server's registry when there is one, else from a registry of its own. The
    ``comux`` log handlers that write to the terminal's stderr print above the table while it
    is shown.
    """

    def __init__(self, comux: Comux, server: MetricsServer | None, config: RunConfig) -> None:
        from prometheus_client import CollectorRegistry
        from rich.console import Console
        from rich.live import Live

        from .metrics import BatchMetrics, ComuxCollector

        self._stop_observing: Any = None
        if server is not None:
            self.registry = server.registry
            self.source = f"{server.url}/metrics"
        else:
            self.registry = CollectorRegistry()
            batches = BatchMetrics(self.registry)
            settings = config.metrics
            self.registry.register(
                ComuxCollector(
                    comux,
                    batches,
                    broker_timeout=settings.broker_timeout,
                    batch_timeout=settings.batch_timeout,
                )
            )
            self._stop_observing = comux.observe_batches(batches)
            self.source = f"pid {os.getpid()}"
        from .top import render

        self._render = render
        self.before: Any = None
        self.now: Any = None
        self.next_at = 0.0
        self.live = Live(
            render(None, source=self.source),
            console=Console(),
            auto_refresh=False,
            redirect_stdout=True,
            redirect_stderr=True,
        )
        stderr = sys.stderr
        self.live.start(refresh=True)  # sys.stderr is now rich's proxy (on a terminal)
        # Log lines to the terminal go through that proxy, above the table.
        self._streams: list[tuple[logging.StreamHandler[Any], Any]] = []
        if sys.stderr is not stderr:
            for logger in (logging.getLogger("comux"), logging.getLogger()):
                for handler in logger.handlers:
                    if type(handler) is logging.StreamHandler and handler.stream is stderr:
                        self._streams.append((handler, handler.setStream(sys.stderr)))

    @classmethod
    def open(
        cls, comux: Comux, server: MetricsServer | None, config: RunConfig
    ) -> _LiveView | None:
        """The live view, or None (said once) when stdout is not a terminal."""
        if not sys.stdout.isatty():
            log.warning("--live: stdout is not a terminal, so no live view")
            return None
        try:
            return cls(comux, server, config)
        except Exception:  # the view must never stop the run
            log.exception("--live: the live view could not start")
            return None

    def tick(self) -> None:
        """Redraw when the last redraw is ``_LIVE_EVERY_S`` old."""
        at = time.monotonic()
        if at < self.next_at:
            return
        self.next_at = at + _LIVE_EVERY_S
        from prometheus_client import generate_latest

        from .top import parse

        error = ""
        try:
            snap = parse(generate_latest(self.registry).decode("utf-8"), at=at)
            self.before, self.now = self.now, snap
        except Exception as exc:  # the view must never stop the run
            error = f"stats failed: {type(exc).__name__}: {exc}"
        self.live.update(
            self._render(self.now, self.before, source=self.source, error=error), refresh=True
        )

    def close(self) -> None:
        for handler, stream in self._streams:
            handler.setStream(stream)
        self._streams.clear()
        self.live.stop()
        if self._stop_observing is not None:
            self._stop_observing()
            self._stop_observing = None


# -- entry points -------------------------------------------------------------------------------


def check(config_path: str | os.PathLike[str]) -> int:
    """``comux run --check``: validate the file, import the model, try the librdkafka options."""
    try:
        config = load_config(config_path)
        load_model(config)
        check_kafka_options(config)
    except ConfigFileError as exc:
        _say(str(exc))
        return EXIT_CONFIG
    cams = config.cameras
    if cams.mongo is not None:
        where = f"registry {cams.mongo.database}.{cams.mongo.collection}"
    else:
        where = f"{len(cams.ids)} camera{'' if len(cams.ids) == 1 else 's'}"
    if cams.topic_pattern is not None:
        where += f" and topics matching {cams.topic_pattern!r}"
    print(f"{config.path}: OK ({where}, model {config.model.function})")
    return EXIT_OK


def run(
    config_path: str | os.PathLike[str],
    *,
    grace: float = 10.0,
    pid_file: str | os.PathLike[str] | None = None,
    log_level: str | None = None,
    log_file: str | None = None,
    log_format: str | None = None,
    metrics_port: int | None = None,
    live: bool = False,
) -> int:
    """``comux run``: load the configuration and run until SIGTERM or SIGINT; the exit code.

    :param grace: seconds a graceful stop may take; then, or on a second signal, exit 3.
    :param pid_file: write this process's pid there (removed at exit).
    :param log_level: level of the ``comux`` logger (default: the file's ``log.level``).
    :param log_file: also log to this file (default: the file's ``log.file``).
    :param log_format: ``"text"`` or ``"json"`` (default: the file's ``log.format``).
    :param metrics_port: serve ``/metrics``, ``/healthz`` and ``/readyz`` on this port (0: a
        free one; the URL is logged and printed on stdout) on the file's ``metrics.host``
        (default: the file's ``metrics.port``; None there too: not served).
    :param live: show the ``comux top`` table in place while running (only when stdout is a
        terminal).
    """
    try:
        config = load_config(config_path)
        level = (log_level or config.log.level).upper()
        file = log_file if log_file is not None else config.log.file
        configure_logging(level, file, **_log_format_kwargs(log_format or config.log.format))
        model = load_model(config)
        runner = Runner(
            config,
            model,
            grace=grace,
            pid_file=pid_file,
            log_level=level,
            log_file=file,
            metrics_port=metrics_port,
            live=live,
        )
        log.info("comux run %s (pid %d)", config.path, os.getpid())
        log.debug("configuration: %r", config)
        return runner.execute()
    except ConfigError as exc:
        log.error("%s", exc)
        _say(str(exc))
        return EXIT_CONFIG


# -- comux stop ---------------------------------------------------------------------------------


def read_pid(path: str | os.PathLike[str]) -> int | None:
    """The pid in a pid file, or None when it is missing or holds no pid."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _is_comux(pid: int) -> bool:
    """Whether ``pid``'s command line names comux (where /proc tells): never signal a stranger
    that got the pid of a process gone without removing its pid file."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"comux" in cmdline


def stop(pid_file: str | os.PathLike[str], timeout: float = 20.0) -> int:
    """``comux stop``: SIGTERM the process of ``pid_file`` and wait until it has gone.

    Returns 0 when it stopped, 1 when nothing runs under that pid file, 3 when it still runs
    after ``timeout`` seconds.
    """
    pid = read_pid(pid_file)
    if pid is None or not _alive(pid):
        _say(f"{os.fspath(pid_file)}: no comux run is running")
        return 1
    if not _is_comux(pid):
        _say(f"{os.fspath(pid_file)}: pid {pid} is not a comux process (a stale pid file?)")
        return 1
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    gate = threading.Event()
    while _alive(pid):
        if time.monotonic() >= deadline:
            _say(f"pid {pid} still runs after {timeout:g} s")
            return 3
        gate.wait(0.05)
    print(f"stopped pid {pid}")
    return 0
