"""A real MongoDB-compatible server for the registry tests: FerretDB with its SQLite backend.

Started once per session on a free port of 127.0.0.1, its data in a temporary folder. Import
the fixtures where they are needed (or from conftest.py)::

    from tests.fixtures_mongo import mongo_server  # noqa: F401

The binary comes from ``$FERRETDB_BIN``, else ``ferretdb`` on PATH, else
``$(go env GOPATH)/bin/ferretdb``; ``scripts/install-ferretdb.sh`` builds it. A missing or
broken binary FAILS the tests that need it (never skips them).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote_plus

import pytest

__all__ = [
    "FERRETDB_BIN_ENV",
    "FERRETDB_VERSION",
    "FerretDB",
    "find_ferretdb",
    "mongo_auth_server",
    "mongo_server",
]

FERRETDB_BIN_ENV = "FERRETDB_BIN"
FERRETDB_VERSION = "v1.24.2"
INSTALL_HINT = (
    "run `bash scripts/install-ferretdb.sh` (it builds FerretDB "
    f"{FERRETDB_VERSION} with Go, about 2 minutes) or set ${FERRETDB_BIN_ENV} to a ferretdb binary"
)
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


def _gopath_bin() -> Path | None:
    go = shutil.which("go") or next(
        (p for p in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go") if os.access(p, os.X_OK)), None
    )
    gopath = None
    if go is not None:
        try:
            out = subprocess.run(
                [go, "env", "GOPATH"], capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
            gopath = out.split(os.pathsep)[0] if out else None
        except (OSError, subprocess.SubprocessError):
            gopath = None
    if not gopath:
        gopath = str(Path.home() / "go")
    candidate = Path(gopath) / "bin" / "ferretdb"
    return candidate if os.access(candidate, os.X_OK) else None


def find_ferretdb() -> str:
    """The ferretdb binary to run; ``pytest.fail`` (not skip) with install advice when missing."""
    configured = os.environ.get(FERRETDB_BIN_ENV)
    if configured:
        if not os.access(configured, os.X_OK):
            pytest.fail(
                f"${FERRETDB_BIN_ENV}={configured} is not an executable file: {INSTALL_HINT}",
                pytrace=False,
            )
        return configured
    found = shutil.which("ferretdb") or _gopath_bin()
    if found is None:
        pytest.fail(
            f"FerretDB is not installed (looked at ${FERRETDB_BIN_ENV}, PATH and "
            f"$(go env GOPATH)/bin/ferretdb): {INSTALL_HINT}",
            pytrace=False,
        )
    return str(found)


def _check_binary(binary: str) -> None:
    """Fail clearly on a binary that cannot even print its version.

    (``go install github.com/FerretDB/FerretDB/cmd/ferretdb@...`` makes one that panics at start.)
    """
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"cannot run {binary} --version ({exc}): {INSTALL_HINT}", pytrace=False)
    if done.returncode != 0 or "version: v" not in done.stdout:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[:6])
        pytest.fail(f"{binary} does not work:\n{tail}\n{INSTALL_HINT}", pytrace=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Have the kernel stop the server when the test process dies without tearing down."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class FerretDB:
    """One FerretDB process. ``uri`` connects without credentials; with ``username`` set the
    server requires SCRAM authentication and ``auth_uri`` holds the credentials."""

    binary: str
    directory: Path
    username: str | None = None
    password: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"

    @property
    def auth_uri(self) -> str:
        if self.username is None or self.password is None:
            return self.uri
        return (
            f"mongodb://{quote_plus(self.username)}:{quote_plus(self.password)}"
            f"@{self.host}:{self.port}/?authSource=admin"
        )

    @property
    def log_path(self) -> Path:
        return self.directory / "ferretdb.log"

    def __repr__(self) -> str:  # never the password
        auth = f", username={self.username!r}" if self.username else ""
        return f"FerretDB({self.uri!r}{auth}, directory={str(self.directory)!r})"

    def command(self) -> list[str]:
        data = self.directory / "data"
        args = [
            self.binary,
            "--handler=sqlite",
            f"--sqlite-url=file:{data}/",
            f"--listen-addr={self.host}:{self.port}",
            f"--state-dir={self.directory}",  # state.json (instance uuid, telemetry choice)
            "--debug-addr=-",  # no metrics/pprof HTTP listener (default: fixed port 8088)
            "--telemetry=disable",
            "--log-level=ERROR",  # WARN logs every error reply of the server
            "--log-format=text",
        ]
        if self.username is not None:
            args += [
                "--test-enable-new-auth",  # SCRAM-SHA-1/256 with users; v1.24 needs this flag
                "--setup-database=admin",
                f"--setup-username={self.username}",
                f"--setup-password={self.password}",
            ]
        return args

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        if self.password:
            text = text.replace(self.password, "***")
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        # FERRETDB_* variables would change the defaults of the flags not given here.
        env = {k: v for k, v in os.environ.items() if not k.startswith("FERRETDB_")}
        deadline = time.monotonic() + timeout
        for attempt in range(3):  # the free port may be taken between choosing and binding it
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.directory,
                    env=env,
                    preexec_fn=_die_with_parent,
                )
            try:
                self._wait_ready(deadline)
                return
            except _Exited:
                if attempt < 2 and "address already in use" in self.log_tail():
                    continue
                raise RuntimeError(
                    f"FerretDB exited with code {self.process.returncode} while starting; "
                    f"the end of {self.log_path}:\n{self.log_tail()}"
                ) from None
            except TimeoutError:
                self.stop()
                raise RuntimeError(
                    f"FerretDB did not answer ping within {timeout:.0f}s on {self.uri}; "
                    f"the end of {self.log_path}:\n{self.log_tail()}"
                ) from None

    def _wait_ready(self, deadline: float) -> None:
        from pymongo import MongoClient
        from pymongo.errors import PyMongoError

        assert self.process is not None
        while True:
            if self.process.poll() is not None:
                raise _Exited
            client: MongoClient = MongoClient(
                self.auth_uri, serverSelectionTimeoutMS=250, connectTimeoutMS=250
            )
            try:
                # With credentials the driver authenticates first: ready also means the
                # setup user exists.
                client.admin.command("ping")
                return
            except PyMongoError:
                pass
            finally:
                client.close()
            if time.monotonic() > deadline:
                raise TimeoutError
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


class _Exited(Exception):
    pass


def _start(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    username: str | None = None,
    password: str | None = None,
) -> FerretDB:
    binary = find_ferretdb()
    _check_binary(binary)
    server = FerretDB(binary, tmp_path_factory.mktemp(name), username, password)
    server.start()
    return server


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FerretDB]:
    """A running FerretDB without authentication; use ``mongo_server.uri``."""
    server = _start(tmp_path_factory, "ferretdb")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mongo_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FerretDB]:
    """A running FerretDB that requires SCRAM authentication.

    ``auth_uri`` holds the credentials of its one user (``username``/``password``, a random
    password, authSource admin); ``uri`` has none (``ping`` still answers, other commands fail).
    """
    server = _start(
        tmp_path_factory,
        "ferretdb-auth",
        username="comux",
        password="pw-" + secrets.token_hex(12),
    )
    try:
        yield server
    finally:
        server.stop()
