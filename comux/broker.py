"""A real Apache Kafka broker on 127.0.0.1 for tests and the demo, run from jars Maven fetches.

One folder holds everything: the jars (``lib-<version>``, fetched once and reused), the broker
data (``data``), the rendered configuration, ``kafka.log`` (the JVM's stdout and stderr),
``kafka.pid`` and ``state.json`` (the ports of the last start, so that ``status()`` and
``down()`` need no ``--port``). The broker is a single KRaft node, broker and controller at
once, tuned small because it shares a laptop or a CI box with the code under test.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from base64 import urlsafe_b64encode
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

from .errors import BrokerUnavailableError, PortInUseError, ProvisionError

__all__ = [
    "DEFAULT_PORT",
    "KAFKA_VERSION",
    "LIB_ENV",
    "MIN_JAVA",
    "LocalKafka",
    "default_directory",
    "pick_port",
]

KAFKA_VERSION = "4.3.1"
DEFAULT_PORT = 9092
LIB_ENV = "COMUX_KAFKA_LIB"
MIN_JAVA = 17

Log = Callable[[str], None] | None

_HOST = "127.0.0.1"
_COMPLETE = ".complete"  # written last into a lib folder: its jars are all there
_STATUS_PROBE_S = 3.0
_JAVA_INSTALL = "apt-get install -y openjdk-17-jre-headless"
_MVN_INSTALL = "apt-get install -y maven"

_LOG4J2 = """\
# Written by comux.broker: the broker logs to stdout, which goes to kafka.log.
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.change.name = state.change.logger
logger.change.level = WARN
"""


def default_directory() -> Path:
    """``~/.cache/comux/kafka``: outside the project, so jars survive a clean checkout."""
    return Path.home() / ".cache" / "comux" / "kafka"


def _say(log: Log, line: str) -> None:
    if log is not None:
        log(line)


def _tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so two processes never provision or start at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _free_port() -> int:
    """A port the kernel considers free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def _port_free(port: int) -> bool:
    """Whether a listener could bind 127.0.0.1:port (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
        return True


def pick_port(preferred: int = DEFAULT_PORT) -> int:
    """``preferred`` when a listener could bind it on 127.0.0.1 now, else a free port."""
    return preferred if _port_free(preferred) else _free_port()


def _parse_java_major(version_output: str) -> int | None:
    """The feature release in ``java -version`` output: 8 for "1.8.0_292", 17 for "17.0.15"."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2) is not None:
        major = int(match.group(2))
    return major


def _find_java() -> str:
    """The java to run: ``$JAVA_HOME/bin/java`` if set, else the one on PATH, checked >= 17."""
    java: str | None = None
    home = os.environ.get("JAVA_HOME")
    if home and os.access(os.path.join(home, "bin", "java"), os.X_OK):
        java = os.path.join(home, "bin", "java")
    if java is None:
        java = shutil.which("java")
    if java is None:
        raise ProvisionError(
            f"java is not on PATH: the local Kafka broker needs Java {MIN_JAVA} or newer "
            f"(on Debian/Ubuntu: {_JAVA_INSTALL})"
        )
    try:
        done = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProvisionError(f"could not run {java} -version: {exc}") from exc
    output = done.stderr + done.stdout
    major = _parse_java_major(output)
    if major is None or major < MIN_JAVA:
        first = output.strip().splitlines()[0] if output.strip() else "no version output"
        raise ProvisionError(
            f"Kafka {KAFKA_VERSION} needs Java {MIN_JAVA} or newer, but {java} is {first!r} "
            f"(on Debian/Ubuntu: {_JAVA_INSTALL}, or point JAVA_HOME at a newer JDK)"
        )
    return java


def _cluster_id() -> str:
    """A Kafka cluster id, made as ``Uuid.randomUuid()`` does, without starting a JVM for it."""
    while True:
        text = urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not text.startswith("-"):  # Kafka rejects ids that look like an option
            return text


def _server_properties(port: int, controller_port: int, data_dir: Path) -> str:
    """server.properties of a one-node KRaft cluster listening on 127.0.0.1 only."""
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{_HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{_HOST}:{port},CONTROLLER://{_HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{_HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir),
        # one node: every internal topic has one replica
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "num.partitions": "1",
        "default.replication.factor": "1",
        "auto.create.topics.enable": "true",
        # light on a two-core machine
        "num.network.threads": "2",
        "num.io.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
        "background.threads": "2",
        # video key frames can pass the 1 MB default; bounded disk for long demos
        "message.max.bytes": "16777216",
        "log.segment.bytes": "33554432",
        "log.retention.bytes": "268435456",
        "log.retention.hours": "24",
        "log.retention.check.interval.ms": "60000",
    }
    lines = ["# Written by comux.broker; rewritten on every start.", ""]
    lines += [f"{key}={value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def _answers(bootstrap: str, timeout: float) -> bool:
    """Whether a broker at bootstrap answers a metadata request within timeout seconds."""
    from . import kafka  # imported when asked: provisioning a broker needs no Kafka client

    client = kafka.admin(
        kafka.config(
            bootstrap,
            {
                "log_level": 0,  # "connection refused" while it starts is expected, not news
                "reconnect.backoff.ms": 50,
                "reconnect.backoff.max.ms": 500,
            },
        )
    )
    try:
        kafka.probe(client, bootstrap, max(timeout, 0.1))
    except BrokerUnavailableError:
        return False
    return True


class LocalKafka:
    """One local broker and its folder; every method may be called from a fresh process."""

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        port: int = 9092,
        controller_port: int | None = None,
        lib_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        base = Path(directory) if directory is not None else default_directory()
        self.directory = base.expanduser().resolve()
        self.port = int(port)
        self.controller_port = controller_port
        if lib_dir is None:
            lib_dir = os.environ.get(LIB_ENV) or self.directory / f"lib-{KAFKA_VERSION}"
        self.lib_dir = Path(lib_dir).expanduser().resolve()
        self.data_dir = self.directory / "data"
        self.properties_path = self.directory / "server.properties"
        self.log4j_path = self.directory / "log4j2.properties"
        self.log_path = self.directory / "kafka.log"
        self.pid_path = self.directory / "kafka.pid"
        self.state_path = self.directory / "state.json"
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"LocalKafka({str(self.directory)!r}, port={self.port})"

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` of this object's port (``up()`` sets it to the running one)."""
        return f"{_HOST}:{self.port}"

    # -- provisioning -------------------------------------------------------------------

    def provision(self, *, log: Log = None) -> Path:
        """Fetch the Kafka jars with Maven unless the lib folder already has them all."""
        lib = self.lib_dir
        if (lib / _COMPLETE).is_file():
            return lib
        with _locked(lib.with_name(lib.name + ".lock")):
            if (lib / _COMPLETE).is_file():  # another process fetched them meanwhile
                return lib
            mvn = shutil.which("mvn")
            if mvn is None:
                raise ProvisionError(
                    f"mvn (Apache Maven) is not on PATH: it fetches the Kafka {KAFKA_VERSION} "
                    f"jars once (on Debian/Ubuntu: {_MVN_INSTALL})"
                )
            _say(log, f"fetching Kafka {KAFKA_VERSION} jars with Maven into {lib} …")
            started = time.monotonic()
            partial = lib.with_name(f"{lib.name}.partial-{os.getpid()}")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            try:
                self._fetch(mvn, partial)
                if lib.exists():  # a half-fetched folder from an interrupted run
                    shutil.rmtree(lib)
                partial.rename(lib)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
            _say(log, f"fetched Kafka jars in {time.monotonic() - started:.1f} s")
        return lib

    def _fetch(self, mvn: str, target: Path) -> None:
        """Run Maven's copy-dependencies on the packaged pom into target, then mark it done."""
        pom_text = resources.files("comux").joinpath("_data/kafka-pom.xml").read_text()
        with tempfile.TemporaryDirectory(prefix="comux-kafka-pom-") as work:
            pom = Path(work) / "pom.xml"
            pom.write_text(pom_text)
            command = [
                mvn, "-q", "-B", "-f", str(pom),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={target}",
                f"-Dkafka.version={KAFKA_VERSION}",
            ]  # fmt: skip
            try:
                done = subprocess.run(
                    command, cwd=work, capture_output=True, text=True, timeout=1800, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise ProvisionError(f"Maven could not fetch the Kafka jars: {exc}") from exc
        if done.returncode != 0:
            output = "\n".join((done.stdout + done.stderr).strip().splitlines()[-30:])
            raise ProvisionError(
                f"Maven could not fetch the Kafka {KAFKA_VERSION} jars "
                f"(exit {done.returncode}; it needs access to Maven Central):\n{output}"
            )
        jars = sorted(p.name for p in target.glob("*.jar"))
        if not any(name.startswith("kafka_2.13-") for name in jars):
            raise ProvisionError(f"Maven finished but no kafka_2.13 jar is in {target}")
        (target / _COMPLETE).write_text("\n".join([KAFKA_VERSION, *jars]) + "\n")

    # -- process bookkeeping ------------------------------------------------------------

    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def _read_state(self) -> dict[str, int]:
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        return {k: int(v) for k, v in state.items() if isinstance(v, int)}

    def _is_our_broker(self, pid: int) -> bool:
        """Whether pid is alive and is the java running this folder's server.properties.

        The command line check keeps a recycled pid (any other process) from being
        mistaken for the broker, and so from being sent SIGTERM by ``down()``.
        """
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None
        proc = Path("/proc") / str(pid)
        if not proc.is_dir():
            if Path("/proc/self").is_dir():
                return False
            try:  # no procfs (macOS): all we can know is that the pid exists
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        try:
            stat = (proc / "stat").read_text()
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):  # exited, not yet reaped
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            return False
        return b"kafka.Kafka" in args and os.fsencode(str(self.properties_path)) in args

    def _running_pid(self) -> int | None:
        """The broker's pid, or None; a stale pid file is removed on the way."""
        pid = self._read_pid()
        if pid is None:
            return None
        if self._is_our_broker(pid):
            return pid
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()
        return None

    def _running_bootstrap(self) -> str:
        return f"{_HOST}:{self._read_state().get('port', self.port)}"

    # -- lifecycle ----------------------------------------------------------------------

    def status(self) -> str | None:
        """The bootstrap of this folder's broker if it runs and answers, else None."""
        if not self.pid_path.exists():
            return None
        if self._running_pid() is None:
            return None
        bootstrap = self._running_bootstrap()
        return bootstrap if _answers(bootstrap, _STATUS_PROBE_S) else None

    def up(self, *, timeout: float = 180.0, log: Log = None) -> str:
        """Start the broker unless it runs already, wait until it answers; return bootstrap."""
        deadline = time.monotonic() + timeout
        self.directory.mkdir(parents=True, exist_ok=True)
        with _locked(self.directory / ".lock"):
            pid = self._running_pid()
            if pid is not None:
                bootstrap = self._running_bootstrap()
                self._wait_ready(bootstrap, pid, deadline)
                self.port = int(bootstrap.rsplit(":", 1)[1])
                _say(log, f"already running at {bootstrap} (pid {pid})")
                return bootstrap
            # Ports first: a busy port is said at once, not after fetching the jars.
            controller_port = self.controller_port or _free_port()
            for name, port in (("port", self.port), ("controller port", controller_port)):
                if not _port_free(port):
                    raise PortInUseError(
                        f"{name} {port} on {_HOST} is already in use by another process "
                        f"(not the broker of {self.directory}); stop it or choose another port",
                        port,
                    )
            if self.port == controller_port:
                raise ProvisionError(f"port and controller port are both {self.port}")
            java = _find_java()
            lib = self.provision(log=log)
            self._write_config(controller_port)
            if not (self.data_dir / "meta.properties").is_file():
                _say(log, "formatting storage …")
                self._format(java, lib)
            started = time.monotonic()
            pid = self._start(java, lib, controller_port)
            try:
                self._wait_ready(self.bootstrap, pid, deadline)
            except BaseException:
                self._stop(pid, 10.0)
                raise
            _say(log, f"started in {time.monotonic() - started:.1f} s (pid {pid})")
            return self.bootstrap

    def down(self, *, timeout: float = 30.0) -> bool:
        """Stop the broker: SIGTERM, then SIGKILL after timeout. True if it was running."""
        if not self.pid_path.exists():
            return False
        with _locked(self.directory / ".lock"):
            pid = self._running_pid()
            if pid is None:
                return False
            self._stop(pid, timeout)
            with contextlib.suppress(FileNotFoundError):
                self.pid_path.unlink()
            return True

    # -- helpers of up/down ---------------------------------------------------------------

    def _write_config(self, controller_port: int) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        text = _server_properties(self.port, controller_port, self.data_dir)
        self.properties_path.write_text(text)
        self.log4j_path.write_text(_LOG4J2)

    def _java_command(self, java: str, lib: Path, *args: str) -> list[str]:
        return [
            java,
            "-Xms64m",
            "-Xmx512m",
            "-XX:+UseSerialGC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j_path}",
            "-cp",
            f"{lib}/*",
            *args,
        ]

    def _format(self, java: str, lib: Path) -> None:
        """Format the KRaft storage once; meta.properties in data marks it done."""
        command = self._java_command(
            java, lib, "kafka.tools.StorageTool", "format",
            "-t", _cluster_id(), "-c", str(self.properties_path),
        )  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip()
            raise ProvisionError(f"formatting Kafka storage in {self.data_dir} failed:\n{output}")

    def _start(self, java: str, lib: Path, controller_port: int) -> int:
        """Start the broker detached from this process, output to kafka.log; return its pid."""
        if self.log_path.exists():
            self.log_path.replace(self.log_path.with_name(self.log_path.name + ".1"))
        command = self._java_command(java, lib, "kafka.Kafka", str(self.properties_path))
        with open(self.log_path, "wb") as out:
            try:
                self._proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.directory,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ProvisionError(f"could not start {java}: {exc}") from exc
        pid = self._proc.pid
        self.pid_path.write_text(f"{pid}\n")
        state = {"port": self.port, "controller_port": controller_port, "pid": pid}
        self.state_path.write_text(json.dumps(state) + "\n")
        return pid

    def _wait_ready(self, bootstrap: str, pid: int, deadline: float) -> None:
        """Poll metadata until the broker answers; fail early if its process exits."""
        while True:
            asked = time.monotonic()
            if _answers(bootstrap, min(2.0, max(deadline - asked, 0.1))):
                return
            if not self._is_our_broker(pid):
                raise ProvisionError(
                    f"the Kafka broker (pid {pid}) exited while starting; "
                    f"end of {self.log_path}:\n{_tail(self.log_path)}"
                )
            now = time.monotonic()
            if now >= deadline:
                raise ProvisionError(
                    f"the Kafka broker (pid {pid}) did not answer at {bootstrap} in time; "
                    f"end of {self.log_path}:\n{_tail(self.log_path)}"
                )
            if now - asked < 0.2:  # refused at once: do not spin
                time.sleep(0.2)

    def _stop(self, pid: int, timeout: float) -> None:
        """SIGTERM pid, wait up to timeout for it to exit, then SIGKILL it."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            if self._wait_exit(pid, wait):
                return
        raise ProvisionError(f"the Kafka broker (pid {pid}) did not exit after SIGKILL")

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        """Whether pid exited within timeout seconds (reaping it if it is our child)."""
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while self._is_our_broker(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True
