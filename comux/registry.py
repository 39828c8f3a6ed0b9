"""Camera ids from MongoDB, and a background thread that keeps a Comux in step with them.

Credentials never leave this module in text: the password of a ``mongodb://user:pass@host`` URI,
secret query options and secret ``client_options`` are kept out of reprs, log records and the
messages of the errors raised here. pymongo's own exception texts are never passed on (they can
hold host details or pieces of a malformed URI); messages are built from the parsed host list,
and errors are raised outside pymongo's ``except`` blocks so that they carry no chained context.

Example::

    registry = MongoConnect("mongodb://user:pass@db:27017/", "fleet", "cameras",
                            query={"enabled": True}, field="cam_id")
    cameras = Comux(registry.ret_cam_ids(), "raw.:cam_id", "out.:cam_id")
    ...
    stop = threading.Event()
    sync_cameras(cameras, registry, interval=30, stop=stop)
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import unquote_plus

from .config import SECRET_MARKERS, is_secret
from .errors import ComuxError, ConfigError, RegistryError

__all__ = [
    "CameraSync",
    "MongoConnect",
    "RegistryError",
    "redact_uri",
    "sync_cameras",
    "uri_hosts",
]

log = logging.getLogger("comux.registry")

REDACTED = "***"


# -- redaction ----------------------------------------------------------------------------------

# Query options whose value is secret: a name holding one of comux.config's SECRET_MARKERS.
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;][^=&;#]*(?:"
    + "|".join(re.escape(marker) for marker in SECRET_MARKERS)
    + r")[^=&;#]*=)[^&;#]*",
    re.IGNORECASE,
)


def _split_uri(uri: str) -> tuple[str, str | None, str]:
    """Return ``(scheme://, userinfo or None, rest)``.

    The userinfo ends at the LAST ``@`` of the URI. For a well-formed URI that is pymongo's
    reading; for a malformed one (an unescaped ``/``, ``?`` or ``@`` in the password) it errs on
    the side of hiding too much rather than too little.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme, rest = "", uri
    else:
        scheme += sep
    userinfo, at, tail = rest.rpartition("@")
    if not at:
        return scheme, None, rest
    return scheme, userinfo, tail


def redact_uri(uri: str) -> str:
    """Return ``uri`` with its password (and secret query options) replaced by ``***``.

    ``mongodb://user:s3cret@db:27017/?authSource=admin`` ->
    ``mongodb://user:***@db:27017/?authSource=admin``. A URI without a password is returned
    unchanged apart from secret query options.
    """
    if not isinstance(uri, str):
        return REDACTED
    scheme, userinfo, rest = _split_uri(uri)
    if userinfo is not None:
        user, colon, _password = userinfo.partition(":")
        if "/" in userinfo or "?" in userinfo:
            # Malformed (an unescaped '/' or '?' in the password) or an '@' in the path or the
            # query: it cannot be read safely, so all of it is hidden.
            userinfo = REDACTED
        elif colon:
            userinfo = f"{user}:{REDACTED}"
        rest = f"{userinfo}@{rest}"
    return scheme + _SECRET_QUERY.sub(lambda m: m.group("key") + REDACTED, rest)


def uri_hosts(uri: str) -> str:
    """The ``host:port`` list of a MongoDB URI, for messages (default port 27017 added)."""
    if not isinstance(uri, str):
        return "?"
    scheme, _userinfo, rest = _split_uri(uri)
    hostlist = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if not hostlist:
        return "?"
    if scheme.lower().startswith("mongodb+srv"):
        return hostlist
    out = []
    for host in hostlist.split(","):
        host = host.strip()
        if not host:
            continue
        if host.startswith("["):  # [ipv6]:port
            if "]:" not in host:
                host += ":27017"
        elif host.endswith(".sock") or "%2F" in host or "%2f" in host:
            pass  # a Unix socket path has no port
        elif ":" not in host:
            host += ":27017"
        out.append(host)
    return ",".join(out) or "?"


# -- pymongo errors, described without their text -----------------------------------------------


def _describe(exc: BaseException) -> str:
    """A short description of a pymongo exception that uses none of its text."""
    from pymongo import errors as pe

    if isinstance(exc, pe.OperationFailure):
        if exc.code in (18, 11):
            return "authentication failed"
        if exc.code == 13:
            return "not authorized"
        return f"operation failed ({type(exc).__name__}, code {exc.code})"
    if isinstance(exc, pe.ServerSelectionTimeoutError):
        return "no server answered in time"
    if isinstance(exc, pe.AutoReconnect):
        return f"connection lost ({type(exc).__name__})"
    if isinstance(exc, (pe.InvalidURI, pe.ConfigurationError)):
        return f"invalid URI or client options ({type(exc).__name__})"
    return type(exc).__name__


# -- the registry -------------------------------------------------------------------------------


class _Collection(Protocol):  # what fetch() uses of a pymongo Collection (fakes implement it)
    def find(self, filter: Any, projection: Any, *, sort: Any) -> Any: ...


class MongoConnect:
    """Read camera ids from one MongoDB collection.

    :param uri: ``mongodb://[user:pass@]host[:port][,host...]/[?options]`` (or ``mongodb+srv://``).
        Its password is never shown: :attr:`uri` is the redacted form.
    :param database: database name.
    :param collection: collection name.
    :param query: filter of the camera documents (default: all documents).
    :param field: the document field holding the camera id; a dotted path reads a sub-document.
    :param timeout: seconds to find a server and connect (``serverSelectionTimeoutMS`` and
        ``connectTimeoutMS``); a ``client_options`` entry of those names wins.
    :param client_options: more keyword arguments for ``pymongo.MongoClient`` (e.g.
        ``username``/``password``/``authSource``, ``tls``). Secret values are never shown.
    """

    def __init__(
        self,
        uri: str,
        database: str,
        collection: str,
        query: Mapping[str, Any] | None = None,
        field: str = "cam_id",
        *,
        timeout: float = 5.0,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(uri, str) or not uri:
            raise ConfigError("uri must be a non-empty mongodb:// string")
        for name, value in (("database", database), ("collection", collection), ("field", field)):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{name} must be a non-empty str, got {value!r}")
        if field.startswith("$") or ".." in field or field.startswith(".") or field.endswith("."):
            raise ConfigError(f"field {field!r} is not a usable document path")
        if query is not None and not isinstance(query, Mapping):
            raise ConfigError(f"query must be a mapping or None, got {type(query).__name__}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ConfigError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        if client_options is not None and not isinstance(client_options, Mapping):
            raise ConfigError("client_options must be a mapping or None")
        self._uri = uri
        self.database = database
        self.collection = collection
        self.query: dict[str, Any] = dict(query or {})
        self.field = field
        self.timeout = float(timeout)
        self._client_options: dict[str, Any] = dict(client_options or {})
        self.hosts = uri_hosts(uri)
        #: documents skipped by the last :meth:`ret_cam_ids` (field missing, not a str, empty).
        self.skipped = 0
        self._client: Any = None
        self._lock = threading.Lock()

    # -- names shown ---------------------------------------------------------------------------

    @property
    def uri(self) -> str:
        """The URI with its password replaced by ``***``."""
        return redact_uri(self._uri)

    def __repr__(self) -> str:
        shown = {k: (REDACTED if is_secret(k) else v) for k, v in self._client_options.items()}
        options = f", client_options={shown!r}" if shown else ""
        return (
            f"MongoConnect({self.uri!r}, database={self.database!r}, "
            f"collection={self.collection!r}, query={self.query!r}, field={self.field!r}, "
            f"timeout={self.timeout!r}{options}, connected={self._client is not None})"
        )

    def _where(self) -> str:
        return f"MongoDB at {self.hosts} ({self.database}.{self.collection})"

    # -- connection ----------------------------------------------------------------------------

    def connect(self) -> None:
        """Create the client and check that the server answers ``ping`` within ``timeout``.

        :raises RegistryError: unreachable, authentication failed, or invalid URI/options.
        """
        from pymongo import MongoClient
        from pymongo.errors import PyMongoError

        with self._lock:
            if self._client is not None:
                client = self._client
            else:
                options: dict[str, Any] = {
                    "serverSelectionTimeoutMS": int(self.timeout * 1000),
                    "connectTimeoutMS": int(self.timeout * 1000),
                    "appname": "comux",
                }
                options.update(self._client_options)
                failure = None
                # pymongo warns about bad URI options with texts that may quote their values.
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        client = MongoClient(self._uri, **options)
                    except (PyMongoError, ValueError, TypeError) as exc:
                        failure = (
                            _describe(exc) if isinstance(exc, PyMongoError) else type(exc).__name__
                        )
                self._relay_warnings(caught)
                if failure is not None:  # raised outside the except block: no chained context
                    raise RegistryError(f"cannot create a client for {self._where()}: {failure}")
                self._client = client
        failure = None
        try:
            client.admin.command("ping")
        except PyMongoError as exc:
            failure = _describe(exc)
        if failure is not None:
            self.close()
            raise RegistryError(f"cannot connect to {self._where()}: {failure}")
        log.debug("connected to %s", self._where())

    def _secrets(self) -> list[str]:
        """The secret strings of the URI and the options, as given and percent-decoded."""
        found: list[str] = []
        _scheme, userinfo, rest = _split_uri(self._uri)
        if userinfo is not None and ":" in userinfo:
            found.append(userinfo.partition(":")[2])
            found.append(userinfo)
        for match in _SECRET_QUERY.finditer(rest):
            value = re.split(r"[&;#]", rest[match.end("key") :], maxsplit=1)[0]
            found.append(value)
            found += re.split(r"[,:]", value)  # authMechanismProperties=KEY:VALUE,...
        for key, value in self._client_options.items():
            if is_secret(key) and value is not None:
                found.append(str(value))
                if isinstance(value, Mapping):
                    found += [str(v) for v in value.values() if v is not None]
        found += [unquote_plus(v) for v in found]
        return [v for v in found if v]

    def _relay_warnings(self, caught: list[warnings.WarningMessage]) -> None:
        secrets = self._secrets()
        for warning in caught:
            text = str(warning.message)
            if any(secret in text for secret in secrets):
                text = "(text withheld: it holds a secret)"
            log.warning("%s: pymongo %s: %s", self._where(), warning.category.__name__, text)

    def close(self) -> None:
        """Close the client; a later call to :meth:`fetch` connects again."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                log.debug("closing the client of %s failed", self._where())

    def __enter__(self) -> MongoConnect:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _collection(self) -> _Collection:
        if self._client is None:
            self.connect()
        client = self._client
        if client is None:  # closed by another thread meanwhile
            raise RegistryError(f"{self._where()} was closed")
        collection: _Collection = client[self.database][self.collection]
        return collection

    # -- reading -------------------------------------------------------------------------------

    def fetch(self) -> list[dict[str, Any]]:
        """The documents matching :attr:`query`, holding only :attr:`field`, in ``_id`` order.

        Connects first when needed.

        :raises RegistryError: the server is unreachable or rejected the query.
        """
        from bson.errors import BSONError
        from pymongo.errors import PyMongoError

        failure = None
        try:
            cursor = self._collection().find(
                self.query, {self.field: 1, "_id": 0}, sort=[("_id", 1)]
            )
            docs = [dict(doc) for doc in cursor]
        except PyMongoError as exc:
            failure = _describe(exc)
        except BSONError as exc:  # a query that cannot be encoded
            failure = f"invalid query ({type(exc).__name__})"
        if failure is not None:
            raise RegistryError(f"cannot read camera ids from {self._where()}: {failure}")
        return docs

    def ret_cam_ids(self) -> list[str]:
        """Distinct camera ids, in the order their first document was registered (``_id`` order).

        Documents whose field is missing, not a str, or empty are skipped; how many is left in
        :attr:`skipped` (and logged as a warning).

        :raises RegistryError: as :meth:`fetch`.
        """
        ids: dict[str, None] = {}
        skipped = 0
        for doc in self.fetch():
            value = _lookup(doc, self.field)
            if isinstance(value, str) and value:
                ids.setdefault(value, None)
            else:
                skipped += 1
        previous, self.skipped = self.skipped, skipped
        if skipped:
            # a warning when the number changes, not at every poll of a sync thread
            log.log(
                logging.WARNING if skipped != previous else logging.DEBUG,
                "%s: skipped %d document(s) without a usable %r (missing, not a str, or empty)",
                self._where(),
                skipped,
                self.field,
            )
        return list(ids)


_MISSING = object()


def _lookup(doc: Mapping[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


# -- keeping a Comux in step --------------------------------------------------------------------


class _Target(Protocol):  # what sync_cameras uses of a Comux
    cam_ids: list[str]

    def connect(self, cam_id: str) -> None: ...
    def kill(self, cam_id: str) -> None: ...


def _safe_error(exc: BaseException) -> str:
    """Text for a log line: comux's own messages, otherwise the exception's class name only."""
    if isinstance(exc, ComuxError):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__


class CameraSync(threading.Thread):
    """The thread :func:`sync_cameras` starts; its counters tell how the syncing goes.

    ``rounds`` (finished polls), ``errors`` (failed fetches, connects and kills), ``added`` and
    ``removed`` (cameras), ``last_error`` (a message without secrets, or None).
    """

    def __init__(
        self, comux: _Target, registry: MongoConnect, interval: float, stop: threading.Event
    ) -> None:
        super().__init__(name="comux-registry-sync", daemon=True)
        self.comux = comux
        self.registry = registry
        self.interval = interval
        self.stop_event = stop
        self.rounds = 0
        self.errors = 0
        self.added = 0
        self.removed = 0
        self.last_error: str | None = None
        self._cond = threading.Condition()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.sync_once()
            except Exception as exc:
                self._failed("sync round", exc)
            with self._cond:
                self.rounds += 1
                self._cond.notify_all()
            self.stop_event.wait(self.interval)

    def sync_once(self) -> None:
        """One poll: connect the cameras new in the registry, kill the ones gone from it."""
        try:
            wanted = self.registry.ret_cam_ids()
        except Exception as exc:
            self._failed(f"fetching camera ids from {getattr(self.registry, 'hosts', '?')}", exc)
            return
        current = list(self.comux.cam_ids)
        have = set(current)
        keep = set(wanted)
        for cam_id in wanted:
            if cam_id in have or self.stop_event.is_set():
                continue
            try:
                self.comux.connect(cam_id)
            except Exception as exc:
                self._failed(f"connecting camera {cam_id!r}", exc)
            else:
                self.added += 1
                log.info("registry: camera %r added", cam_id)
        for cam_id in current:
            if cam_id in keep or self.stop_event.is_set():
                continue
            try:
                self.comux.kill(cam_id)
            except Exception as exc:
                self._failed(f"removing camera {cam_id!r}", exc)
            else:
                self.removed += 1
                log.info("registry: camera %r removed", cam_id)

    def _failed(self, what: str, exc: BaseException) -> None:
        message = f"{what} failed: {_safe_error(exc)}"
        with self._cond:
            self.errors += 1
            self.last_error = message
        log.error("registry sync: %s (errors so far: %d)", message, self.errors)

    def wait_rounds(self, rounds: int, timeout: float) -> bool:
        """Wait until at least ``rounds`` polls have finished; False when ``timeout`` ran out."""
        with self._cond:
            return self._cond.wait_for(lambda: self.rounds >= rounds, timeout)


def sync_cameras(
    comux: _Target, registry: MongoConnect, interval: float, *, stop: threading.Event
) -> CameraSync:
    """Start a daemon thread that keeps ``comux``'s cameras equal to the registry's.

    Every ``interval`` seconds (first at once) it reads :meth:`MongoConnect.ret_cam_ids`,
    calls ``comux.connect(cam_id)`` for each id the registry has and ``comux.cam_ids`` lacks,
    and ``comux.kill(cam_id)`` for each id of ``comux.cam_ids`` the registry no longer has:
    the registry is the source of truth for every camera of that Comux. Failures are logged
    (without secrets) and counted on the returned :class:`CameraSync`; the thread goes on
    until ``stop`` is set.
    """
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0:
        raise ConfigError(f"interval must be a number of seconds > 0, got {interval!r}")
    if not callable(getattr(registry, "ret_cam_ids", None)):
        raise ConfigError(f"registry must be a MongoConnect, got {type(registry).__name__}")
    if not isinstance(stop, threading.Event):
        raise ConfigError("stop must be a threading.Event")
    thread = CameraSync(comux, registry, float(interval), stop)
    thread.start()
    return thread
